/**
 * The one byte path (DESIGN.md, "Caching, one rule everywhere"): a blob by digest from
 * memory → the persistent store (re-verified unless the store vouches for its reads) →
 * the network under a per-blob lock (resumed, retried, verified), stored behind the load.
 * Graph, shards, assets and LoRA files all come through here.
 */
import pLimit from 'p-limit';
import { type Digest, digestHex, sha256 } from '../digest.ts';
import { FuseloadError } from '../errors.ts';
import { blobKey } from '../keys.ts';
import type { BlobRef } from '../manifest.ts';
import type { CacheSource } from '../pipeline.ts';
import { type BlobStore, MemoryStore } from '../store.ts';
import { abortError, downloadBlob, throwIfAborted } from './download.ts';
import { fetchWithDeadline, readBounded, shownUrl } from './bounded-read.ts';
import type { Progress } from './progress.ts';

export interface BlobSourceOptions {
  store: BlobStore;
  fetch: typeof fetch;
  withLock: <T>(name: string, fn: () => Promise<T>, onContended?: () => void) => Promise<T>;
  deferStoreWrites: boolean;
  concurrency: number;
  memoryBudgetBytes?: number;
  warn: (message: string) => void;
}

export interface GotBlob {
  bytes: Uint8Array;
  source: CacheSource;
  bytesFetched: number;
}

/** Where a load's store writes wait (deferStoreWrites); `open` lets them go. */
export interface WriteGate {
  wait: Promise<void>;
  open(): void;
}

/** The longest a verified blob's store write is held back behind its load (deferStoreWrites). */
const DEFER_WRITES_MAX_MS = 5_000;

export function createBlobSource(o: BlobSourceOptions) {
  const memory = new MemoryStore(o.memoryBudgetBytes);
  const { store, warn } = o;
  const limit = pLimit(o.concurrency);
  /** Store writes still running after their load went on (store-behind). */
  const pendingWrites = new Set<Promise<unknown>>();
  /** Held-back writes of loads still running (deferStoreWrites), each a gate's opener. */
  const gates = new Set<() => void>();
  const openGates = () => {
    for (const open of gates) open();
  };

  /**
   * Opened when the load's blobs are all in memory, when any load of this loader has to wait
   * for a lock, or after DEFER_WRITES_MAX_MS at most.
   */
  function writeGate(): WriteGate {
    if (!o.deferStoreWrites) return { wait: Promise.resolve(), open: () => {} };
    let release!: () => void;
    const wait = new Promise<void>((resolve) => (release = resolve));
    const open = () => {
      gates.delete(open);
      clearTimeout(timer);
      release();
    };
    const timer = setTimeout(open, DEFER_WRITES_MAX_MS);
    gates.add(open);
    return { wait, open };
  }

  async function readStore(ref: BlobRef, progress: Progress): Promise<Uint8Array | null> {
    let bytes: Uint8Array | null;
    try {
      bytes = await store.get(ref.digest);
    } catch (e) {
      warn(`blob ${ref.digest}: ${store.kind} read failed (${errorText(e)}); fetching it`);
      return null;
    }
    if (!bytes) return null;
    progress.emit('verify', ref.digest, 0, ref.size);
    // A store that verifies its own reads (DiskStore's stamp check) is not hashed twice.
    if (bytes.byteLength !== ref.size || (!store.verifiesReads && (await sha256(bytes)) !== ref.digest)) {
      warn(`blob ${ref.digest} in ${store.kind} is corrupt; fetching it again`);
      await store.delete(ref.digest).catch(() => {});
      return null;
    }
    await memory.put(ref.digest, bytes);
    progress.blobDone(ref, 'store');
    return bytes;
  }

  /** One blob: memory → store (re-verified: a tampered record is dropped) → network under the lock. */
  async function getBlob(origin: string, ref: BlobRef, progress: Progress, signal: AbortSignal | undefined, writeAfter: Promise<void>): Promise<GotBlob> {
    const hit = await memory.get(ref.digest);
    if (hit) {
      progress.blobDone(ref, 'memory');
      return { bytes: hit, source: 'memory', bytesFetched: 0 };
    }
    const stored = await readStore(ref, progress);
    if (stored) return { bytes: stored, source: 'store', bytesFetched: 0 };

    // Store-behind: the load continues as soon as the bytes are verified, while the lock is
    // held until they are stored, so another tab waiting on it finds them in its store.
    // Downloads share the loader's concurrency limit; a slot is freed once the bytes are verified.
    return limit(
      () =>
        new Promise<GotBlob>((resolve, reject) => {
          throwIfAborted(signal, ref.digest);
          const task = o.withLock(
            `fuseload:blob:${digestHex(ref.digest)}`,
            async () => {
              // Another tab or process may have stored it while we waited for the lock.
              const late = (await memory.get(ref.digest)) ?? (await readStore(ref, progress));
              if (late) return resolve({ bytes: late, source: 'store', bytesFetched: 0 });
              const result = await downloadBlob({
                url: `${origin}/${blobKey(ref.digest)}`,
                digest: ref.digest,
                size: ref.size,
                fetch: o.fetch,
                signal,
                onBytes: (received) => progress.bytes('download', ref, received),
                onVerify: () => progress.emit('verify', ref.digest, 0, ref.size),
              });
              progress.emit('verify', ref.digest, ref.size, ref.size);
              await memory.put(ref.digest, result.bytes);
              progress.emit('store', ref.digest, 0, ref.size);
              // The write waits at most for this load's own blobs (writeAfter), and a tab that has to
              // wait for a lock first releases its held-back writes: no two tabs wait on each other.
              resolve({ bytes: result.bytes, source: 'network', bytesFetched: result.bytesFetched });
              await writeAfter;
              try {
                await store.put(ref.digest, result.bytes);
                progress.emit('store', ref.digest, ref.size, ref.size);
              } catch (e) {
                // Quota or a broken store: the load goes on from memory, never a crash.
                warn(`blob ${ref.digest} not cached in ${store.kind} (${errorText(e)}); running from memory`);
              }
            },
            openGates,
          );
          pendingWrites.add(task);
          task.then(
            () => pendingWrites.delete(task),
            (e) => {
              pendingWrites.delete(task);
              reject(e);
            },
          );
        }),
    );
  }

  /**
   * Many blobs at once, all or nothing: siblings stop as soon as one fails, and the load's
   * held-back store writes are let go once every blob is in memory (or the load failed).
   */
  async function getBlobs(origin: string, refs: BlobRef[], progress: Progress, signal: AbortSignal | undefined, label: string) {
    const blobs = new Map<Digest, Uint8Array>();
    const sources: Record<Digest, CacheSource> = {};
    let bytesFetched = 0;
    const stop = new AbortController();
    const forward = () => stop.abort(signal?.reason);
    signal?.addEventListener('abort', forward, { once: true });
    const gate = writeGate();
    try {
      await Promise.all(
        // Not under `limit`: memory and store reads all start at once (getBlob limits downloads).
        refs.map((ref) =>
          (async () => {
            throwIfAborted(stop.signal, label);
            const got = await getBlob(origin, ref, progress, stop.signal, gate.wait);
            sources[ref.digest] = got.source;
            bytesFetched += got.bytesFetched;
            blobs.set(ref.digest, got.bytes);
          })().catch((e) => {
            if (!stop.signal.aborted) stop.abort(e);
            throw e;
          }),
        ),
      );
    } catch (e) {
      if (signal?.aborted) throw abortError(label, signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', forward);
      gate.open();
    }
    return { blobs, sources, bytesFetched };
  }

  /**
   * A small object (tag, manifest) over HTTP, as bytes: a deadline to the headers, an idle
   * deadline in the body, and a cap enforced while it streams (bounded-read.ts).
   */
  async function fetchSmall(url: string, signal: AbortSignal | undefined, cache: RequestCache, maxBytes: number): Promise<Uint8Array> {
    const response = await fetchWithDeadline(o.fetch, url, { cache }, { signal });
    const shown = shownUrl(url);
    if (response.status === 404) throw new FuseloadError('not-found', `${shown}: HTTP 404`);
    if (!response.ok) throw new FuseloadError('network', `${shown}: HTTP ${response.status}`);
    return readBounded(response, maxBytes, shown, { signal });
  }

  return {
    memory,
    store,
    getBlob,
    getBlobs,
    fetchSmall,
    async flush() {
      while (pendingWrites.size) await Promise.allSettled([...pendingWrites]);
    },
  };
}

export type BlobSource = ReturnType<typeof createBlobSource>;

export function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name === 'Error' ? '' : `${e.name}: `}${e.message}` : String(e);
}
