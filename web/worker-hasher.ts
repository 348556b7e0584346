/**
 * SHA-256 off the loader's thread (LoaderRuntime `hasher`): WebCrypto hashes on the thread that
 * calls it, start to end, so a 280 MiB warm load would hold the loader for about a second of
 * hashing (test/bench/browser-load.ts). A few Web Workers (worker-sha256.ts) do it instead, and
 * the bytes are never copied over — a copy costs the calling thread about as much as the hash:
 *
 * - `blob(handle)`: a stored Blob record; the worker reads it itself (the Blob is immutable: the
 *   same bytes the loader read) and hashes it with WebCrypto.
 * - `take(bytes)`: bytes the loader read itself and the engine is done with (its sessions are
 *   built), moved to the worker, hashed there and moved back with the digest: a load that fits in
 *   memory hands the engine its records as soon as they are read, and pays neither a second read
 *   nor a copy for the check.
 * - `stream(size)`: a download's chunks, handed over as they arrive (moved, not copied, in
 *   batches) and gathered there, then hashed with WebCrypto when the last one is in; `update`
 *   returns a promise when the worker is behind by more than a few MiB, or holds more than 256 MiB
 *   of downloads it has not hashed yet, so a slow worker holds the downloads back instead of
 *   keeping a second copy of all of them. (An incremental WASM SHA-256, hash-wasm, hashed at a
 *   third of WebCrypto's speed here and held every download to it: test/bench/browser-load.ts.)
 *
 * Where Workers are missing (Node, a test runner) there is no hasher and the loader hashes inline;
 * where one cannot start (a bundle that did not emit worker-sha256.ts), blobs are hashed inline and
 * downloads whole, and a stream it had lost fails its check, so the loader fetches that blob again.
 */
import { type Digest, sha256 } from '../common/digest.ts';
import { FuseloadError } from '../common/errors.ts';
import type { OffThreadHasher, StreamHash } from '../common/loader/blobs.ts';

export type ToHasher =
  | { op: 'blob'; id: number; blob: Blob }
  | { op: 'take'; id: number; bytes: Uint8Array<ArrayBuffer> }
  | { op: 'start'; id: number; size: number }
  | { op: 'chunks'; id: number; chunks: Uint8Array<ArrayBuffer>[] }
  | { op: 'end'; id: number }
  | { op: 'drop'; id: number };

export type FromHasher = { id: number; hex?: string; bytes?: Uint8Array<ArrayBuffer>; acked?: number; error?: string };

export interface HasherOptions {
  /** Hashing workers (default: one per core, at most 4; they hash while the loader's thread builds sessions, then alone). */
  workers?: number;
}

/** Chunks are sent in batches of about this many bytes (one message each). */
const BATCH_BYTES = 1 << 20;
/** A stream waits (backpressure) once the worker is this far behind copying its chunks… */
const MAX_BEHIND_BYTES = 8 << 20;
/** …or once the downloads the worker holds and has not hashed yet pass this many bytes (its copies of them). */
const MAX_HELD_BYTES = 256 << 20;

interface Slot {
  worker: Worker;
  /** Jobs (streams and blobs) on this worker. */
  jobs: number;
  /** Bytes of stream chunks sent to it whose hash has not come back: what it holds for us. */
  held: number;
  /** Streams waiting for `held` to drop. */
  waiting: (() => void)[];
  /** Streams still being sent, oldest first: the oldest never waits for `held`, so one always finishes. */
  sending: Set<number>;
}

interface Job {
  slot: Slot;
  resolve(digest: Digest): void;
  /** `take`: the bytes that came back with the digest. */
  bytes?: Uint8Array<ArrayBuffer>;
  reject(error: unknown): void;
  /** Streams: bytes sent and not acknowledged, and who waits for them to drop. */
  behind: number;
  drained?: () => void;
  /** Streams: bytes sent, counted in the slot's `held` until the hash is back. */
  sent: number;
}

export function createWorkerHasher(options: HasherOptions = {}): OffThreadHasher | undefined {
  if (typeof Worker === 'undefined') return undefined;
  const count = options.workers ?? Math.max(1, Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 2));
  const slots: Slot[] = [];
  const jobs = new Map<number, Job>();
  let nextId = 1;
  let broken: string | null = null;

  function slot(): Slot {
    if (slots.length < count) {
      const worker = new Worker(new URL('./worker-sha256.ts', import.meta.url), { type: 'module', name: 'fuseload-sha256' });
      const s: Slot = { worker, jobs: 0, held: 0, waiting: [], sending: new Set() };
      worker.addEventListener('message', (event: MessageEvent<FromHasher>) => {
        const { id, hex, bytes, acked, error } = event.data;
        const job = jobs.get(id);
        if (!job) return;
        if (acked !== undefined) {
          job.behind -= acked;
          if (job.behind <= MAX_BEHIND_BYTES / 2) job.drained?.();
          return;
        }
        finish(id, job);
        job.bytes = bytes;
        if (hex) job.resolve(`sha256:${hex}`);
        else job.reject(new FuseloadError('engine', `SHA-256 worker: ${error}`));
      });
      worker.addEventListener('error', (event: ErrorEvent) => {
        event.preventDefault();
        broken ??= event.message || 'it could not start';
        for (const [id, job] of jobs) {
          if (job.slot !== s) continue;
          finish(id, job);
          job.reject(new FuseloadError('engine', `SHA-256 worker: ${broken}`));
        }
      });
      slots.push(s);
      return s;
    }
    return slots.reduce((a, b) => (b.jobs < a.jobs ? b : a));
  }

  function finish(id: number, job: Job) {
    jobs.delete(id);
    job.slot.jobs--;
    job.slot.held -= job.sent;
    job.sent = 0;
    job.drained?.();
    job.slot.sending.delete(id);
    wake(job.slot);
  }

  function wake(s: Slot) {
    while (s.waiting.length) s.waiting.shift()!();
  }

  function job(): { id: number; job: Job; digest: Promise<Digest> } {
    const s = slot();
    s.jobs++;
    const id = nextId++;
    let j!: Job;
    const digest = new Promise<Digest>((resolve, reject) => {
      j = { slot: s, resolve, reject, behind: 0, sent: 0 };
    });
    jobs.set(id, j);
    return { id, job: j, digest };
  }

  /**
   * One job's message to a worker, and its digest (with the bytes it moved back, if any); `inline`
   * hashes here instead where the workers failed, before or during the job.
   */
  function hashed<T>(message: (id: number) => ToHasher, transfer: Transferable[], inline: () => Promise<T>, answer: (digest: Digest, bytes: Uint8Array<ArrayBuffer> | undefined) => T): Promise<T> {
    if (broken) return inline();
    const { id, job: j, digest } = job();
    j.slot.worker.postMessage(message(id), transfer);
    return digest.then(
      (d) => answer(d, j.bytes),
      (e: unknown) => (broken ? inline() : Promise.reject(e)),
    );
  }

  return {
    take(bytes: Uint8Array, reread: () => Promise<Uint8Array>): Promise<{ digest: Digest; bytes: Uint8Array }> {
      const here = async (b: Uint8Array) => ({ digest: await sha256(b), bytes: b });
      if (broken) return here(bytes);
      const whole = ownBuffer(bytes);
      // A worker that died holding them: the record is read again and hashed here.
      return hashed((id) => ({ op: 'take', id, bytes: whole }), [whole.buffer], async () => here(await reread()), (digest, back) => ({ digest, bytes: back! }));
    },
    blob(blob: Blob): Promise<Digest> {
      // A Blob can be read again: a worker that died on it costs the check nothing.
      return hashed((id) => ({ op: 'blob', id, blob }), [], async () => sha256(new Uint8Array(await blob.arrayBuffer())), (digest) => digest);
    },
    stream(size: number): StreamHash | null {
      if (broken) return null;
      const { id, job: j, digest } = job();
      const post = (m: ToHasher, transfer: Transferable[] = []) => j.slot.worker.postMessage(m, transfer);
      post({ op: 'start', id, size });
      j.slot.sending.add(id);
      let batch: Uint8Array[] = [];
      let batched = 0;
      const send = () => {
        if (!batch.length) return;
        // (Rare: fetch gives each chunk its own buffer.)
        const chunks = batch.map(ownBuffer);
        post({ op: 'chunks', id, chunks }, chunks.map((c) => c.buffer));
        j.behind += batched;
        j.sent += batched;
        j.slot.held += batched;
        batch = [];
        batched = 0;
      };
      digest.catch(() => {});
      return {
        update(chunk: Uint8Array): Promise<void> | void {
          batch.push(chunk);
          batched += chunk.byteLength;
          if (batched >= BATCH_BYTES) send();
          if (j.slot.held > MAX_HELD_BYTES && j.slot.sending.values().next().value !== id) return new Promise<void>((resolve) => j.slot.waiting.push(resolve));
          if (j.behind <= MAX_BEHIND_BYTES) return;
          return new Promise<void>((resolve) => (j.drained = () => ((j.drained = undefined), resolve())));
        },
        digest(): Promise<Digest> {
          send();
          post({ op: 'end', id });
          j.slot.sending.delete(id);
          wake(j.slot);
          return digest;
        },
        abandon() {
          post({ op: 'drop', id });
          if (jobs.has(id)) finish(id, j);
        },
      };
    },
  };
}

/** `bytes` as a view of a whole buffer of its own, to move: one that shares its buffer with anything else is copied. */
function ownBuffer(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : bytes.slice();
}
