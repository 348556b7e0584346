/**
 * One blob over HTTP: streamed into a buffer of the manifest's size, resumed with a
 * Range request after a dropped connection, retried with backoff, and verified by
 * SHA-256 before anyone sees the bytes — or, with `deferVerify`, handed back as soon as they are
 * in with a `verified` promise that hashes them (the caller then owns the check: nothing built
 * from them may produce output, and nothing may be stored, before it resolves). Runtime-neutral:
 * fetch, crypto and AbortSignal only.
 *
 * Bounded: the headers must come within `headersTimeoutMs` (an origin that accepts and never
 * answers is given up, not retried), the body may not go silent for `idleTimeoutMs` (resumed
 * like a dropped connection), a blob over `maxBlobBytes` is refused before anything is
 * allocated, and the buffer is allocated only once the first byte arrives.
 */
import { type Digest, sha256 } from '../digest.ts';
import type { StreamHash } from './blobs.ts';
import { FuseloadError, isFuseloadError } from '../errors.ts';
import { contentLength, DEFAULT_IDLE_MS, fetchWithDeadline, formatCap, isTransient, scrubUrls, shownUrl } from './bounded-read.ts';

/** Largest blob a download accepts (graph or shard; the build's shards are ≤ 64 MiB). */
export const DEFAULT_MAX_BLOB_BYTES = 2 * 1024 ** 3;

export interface DownloadOptions {
  url: string;
  digest: Digest;
  size: number;
  fetch: typeof fetch;
  signal?: AbortSignal;
  /** Attempts after the first, each after a backoff (default 4). */
  retries?: number;
  /** First backoff in ms, doubled per attempt (default 250). */
  backoffMs?: number;
  /** Bytes received so far for this blob (monotonic, never more than `size`). */
  onBytes?: (received: number) => void;
  /** Called once the bytes are in, before hashing. */
  onVerify?: () => void;
  /** Milliseconds to each response's headers (default 30 s). */
  headersTimeoutMs?: number;
  /** Longest silence inside a body, in ms, before the request is resumed (default 30 s). */
  idleTimeoutMs?: number;
  /** Refuse a blob larger than this many bytes, before allocating (default 2 GiB). */
  maxBlobBytes?: number;
  /**
   * Return once the bytes are in, unverified, with `verified` hashing them (rejects with
   * `digest-mismatch`). No restart on a mismatch here: the caller fetches again (default false).
   */
  deferVerify?: boolean;
  /**
   * An incremental SHA-256 fed while the body streams (the browser's runs in a worker), so the
   * digest is ready with the last byte; each chunk is handed over once copied (the hasher may
   * take its buffer). Default: WebCrypto over the whole buffer once it is in, on this thread.
   */
  stream?: (size: number) => StreamHash | null;
  /**
   * In place of `stream` and the inline hash: the digest of the whole buffer once it is in (the
   * browser's loader moves it to a hashing worker once the engine has copied it: blobs.ts).
   */
  hashBytes?: (bytes: Uint8Array) => Promise<Digest>;
}

export interface DownloadResult {
  bytes: Uint8Array;
  /** Bytes that crossed the network, including any discarded by a restart. */
  bytesFetched: number;
  /** How many requests carried a Range header (resumes). */
  rangeRequests: number;
  /** Resolved when verified before returning; with `deferVerify`, the check of the bytes returned. */
  verified: Promise<void>;
}

/** `downloadAsBlob`'s result: the bytes in a Blob, never whole in a buffer here. */
export interface BlobDownloadResult extends Omit<DownloadResult, 'bytes'> {
  blob: Blob;
  /** Frees what holds the Blob's bytes (a spooled file): call once nothing reads the Blob any more. */
  release(): Promise<void>;
}

export interface BlobDownloadOptions extends Omit<DownloadOptions, 'stream'> {
  /** SHA-256 of the finished Blob (the browser's hasher reads it in a worker); default WebCrypto over its bytes, here. */
  hashBlob?: (blob: Blob) => Promise<Digest>;
  /** Where the bytes go (the browser's: a file on disk, web/spool.ts); default Blob parts in memory. */
  sink?: (size: number) => Promise<DownloadSink<Blob>>;
}

/** Network failures worth another attempt; everything else is final. */
class RetryableError extends Error {}

/**
 * Where a download's bytes go as they arrive (`at`: the offset of `chunk`; 0 starts over). A write
 * may return a promise to wait on (a sink on disk). `release` frees what it holds: called here when
 * the download fails for good, by the caller once it is done with what `finish` made.
 */
export interface DownloadSink<T> {
  write(chunk: Uint8Array, at: number): void | Promise<void>;
  finish(): T | Promise<T>;
  release?(): Promise<void>;
}

/** One buffer of the blob's size, allocated with the first byte. */
function bufferSink(size: number): DownloadSink<Uint8Array> {
  let buffer: Uint8Array | null = null;
  return {
    write(chunk, at) {
      buffer ??= new Uint8Array(size);
      buffer.set(chunk, at);
    },
    finish: () => buffer ?? new Uint8Array(size),
  };
}

/** Bytes are passed on in pieces of this size (a Blob part, a file write), not a chunk at a time. */
const STAGING_BYTES = 4 << 20;
/**
 * Staging buffers of finished downloads, reused by the next ones: a fresh one per download would leave
 * one dead buffer per shard for the garbage collector, which a worker busy in WASM may not run for the
 * whole load (a 2 GiB pipeline is 30 shards: test/bench/browser-large.ts). A few are kept.
 */
const spareStaging: Uint8Array[] = [];
const SPARE_STAGING = 4;

/**
 * A download's chunks, gathered in one small staging buffer and passed on (`out`) each time it
 * fills, at their offset: no shard-sized buffer is ever made. A write at 0 after others starts over
 * (`restart`); a resume continues at the end, and a write anywhere else is a bug.
 */
export class StagedWrites {
  #done = false;
  #staging: Uint8Array | null = null;
  #staged = 0;
  #written = 0;

  constructor(
    readonly size: number,
    readonly out: (bytes: Uint8Array, at: number) => void | Promise<unknown>,
    readonly restart: () => void | Promise<unknown>,
  ) {}

  write(chunk: Uint8Array, at: number): void | Promise<void> {
    if (at === this.#written && !this.#done) return this.#copy(chunk, 0);
    // After the end, only a download that starts over (its bytes hashed wrong) writes again.
    if (at !== 0) throw new Error(`download: a write at byte ${at} of a blob written to ${this.#written}`);
    this.#staged = this.#written = 0;
    this.#done = false;
    return Promise.resolve(this.restart()).then(() => this.#copy(chunk, 0));
  }

  #copy(chunk: Uint8Array, from: number): void | Promise<void> {
    this.#staging ??= (this.size >= STAGING_BYTES && spareStaging.pop()) || new Uint8Array(Math.max(1, Math.min(STAGING_BYTES, this.size)));
    while (from < chunk.byteLength) {
      const n = Math.min(chunk.byteLength - from, this.#staging.byteLength - this.#staged);
      this.#staging.set(chunk.subarray(from, from + n), this.#staged);
      this.#staged += n;
      this.#written += n;
      from += n;
      if (this.#staged === this.#staging.byteLength) {
        // The staging buffer is reused: an asynchronous `out` is waited for before the next copy.
        const pending = this.flush();
        if (pending) return pending.then(() => this.#copy(chunk, from));
      }
    }
  }

  /** Passes on what is staged. */
  flush(): void | Promise<void> {
    if (this.#staged === 0) return;
    const bytes = this.#staging!.subarray(0, this.#staged);
    const at = this.#written - this.#staged;
    this.#staged = 0;
    const pending = this.out(bytes, at);
    return pending ? pending.then(() => {}) : undefined;
  }

  /** The last bytes are passed on: the staging buffer goes back for the next download. */
  async end(): Promise<void> {
    await this.flush();
    this.#done = true;
    if (this.#staging?.byteLength === STAGING_BYTES && spareStaging.length < SPARE_STAGING) spareStaging.push(this.#staging);
    this.#staging = null;
  }
}

/** A Blob in memory, of parts copied from the staging buffer (where the runtime has no spool on disk). */
export function memoryBlobSink(size: number): DownloadSink<Blob> {
  let parts: Blob[] = [];
  const staged = new StagedWrites(
    size,
    (bytes) => void parts.push(new Blob([bytes as Uint8Array<ArrayBuffer>])), // copied: the staging buffer is reused
    () => void (parts = []),
  );
  return {
    write: (chunk, at) => staged.write(chunk, at),
    async finish() {
      await staged.end();
      return new Blob(parts);
    },
  };
}

export async function downloadBlob(options: DownloadOptions): Promise<DownloadResult> {
  const { data, ...rest } = await download(options, bufferSink(options.size), (bytes, stream) => (stream ? stream.digest() : (options.hashBytes ?? sha256)(bytes)));
  return { bytes: data, ...rest };
}

/**
 * `downloadBlob`, with the bytes gathered into a Blob instead of one buffer (for an engine that reads
 * external data from Blobs: a large pipeline's shards are then never whole in this thread's memory),
 * and hashed once it is in (`hashBlob`), not as it streams: a streaming hasher keeps a whole copy of
 * its own, which is what this avoids (it also measured slower: test/bench/browser-load.ts).
 * An incremental WASM SHA-256 that holds nothing (hash-wasm, 100–300 MB/s a worker in Chromium on
 * the bench machine) was measured too: over a 1 Gbit/s link the load resolved 5% sooner (1.20 →
 * 1.14 of a bare fetch), on loopback, where the download keeps the cores busy, 10–20% later, and its
 * own speed gave no signal to choose by (it was as slow on the link). Not worth a second path.
 */
export async function downloadAsBlob(options: BlobDownloadOptions): Promise<BlobDownloadResult> {
  const hash = options.hashBlob ?? (async (blob: Blob) => sha256(new Uint8Array(await blob.arrayBuffer())));
  // The sink (a file: a quota check and a file to create, each a round trip to the browser) is made
  // while the request goes out; the first chunk waits for it.
  const made = (options.sink ?? (async (size: number) => memoryBlobSink(size)))(options.size);
  made.catch(() => {});
  let ready: DownloadSink<Blob> | null = null;
  const release = () => made.then((s) => s.release?.(), () => {});
  const sink: DownloadSink<Blob> = {
    write: (chunk, at) => (ready ? ready.write(chunk, at) : made.then((s) => (ready = s).write(chunk, at))),
    finish: () => made.then((s) => s.finish()),
    release,
  };
  const { data, ...rest } = await download({ ...options, stream: undefined }, sink, (blob) => hash(blob)).catch(async (e: unknown) => {
    await release();
    throw e;
  });
  return { blob: data, ...rest, release };
}

async function download<T>(
  options: DownloadOptions,
  sink: DownloadSink<T>,
  hash: (data: T, stream: StreamHash | null) => Promise<Digest>,
): Promise<Omit<DownloadResult, 'bytes'> & { data: T }> {
  const { url, digest, size, signal } = options;
  const retries = options.retries ?? 4;
  const backoffMs = options.backoffMs ?? 250;
  const maxBlobBytes = options.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
  // Fed while the body streams, when given; restarted whenever the download starts over from zero.
  let hashing = null as StreamHash | null;
  const restartHash = () => {
    hashing?.abandon();
    hashing = options.stream?.(size) ?? null;
  };
  const shown = shownUrl(url);
  if (!Number.isSafeInteger(size) || size < 0) throw new FuseloadError('bad-input', `${shown}: blob size ${size} is not a byte count`);
  if (size > maxBlobBytes) {
    throw new FuseloadError('too-large', `${shown}: the manifest names ${size} bytes, over the ${formatCap(maxBlobBytes)} per-blob cap`);
  }
  let received = 0;
  let etag: string | null = null;
  let bytesFetched = 0;
  let rangeRequests = 0;
  let mismatches = 0;
  let lastError: unknown;
  let byobStalled = false;

  for (let attempt = 0; attempt <= retries; attempt++) {
    throwIfAborted(signal, shown);
    if (attempt > 0) await sleep(backoffMs * 2 ** (attempt - 1), signal, shown);
    const headers: Record<string, string> = {};
    // Resume only when the origin gave a strong validator: If-Range makes it send the
    // whole blob again (200) if the bytes behind the URL changed.
    const resuming = received > 0 && etag !== null && !etag.startsWith('W/');
    if (resuming) {
      headers.Range = `bytes=${received}-`;
      headers['If-Range'] = etag!;
      rangeRequests++;
    } else {
      received = 0;
      restartHash();
    }
    try {
      // no-store: the verified bytes go to our own store; the HTTP cache would hold a second copy.
      const response = await fetchWithDeadline(options.fetch, url, { headers, cache: 'no-store' }, { headersMs: options.headersTimeoutMs, signal });
      const announced = contentLength(response);
      if (response.status === 206 && resuming) {
        const range = parseContentRange(response.headers.get('Content-Range'));
        if (!range || range.start !== received || (range.length !== null && range.length !== size)) {
          await response.body?.cancel();
          const message = `${shown}: Content-Range ${response.headers.get('Content-Range')} does not continue at byte ${received}`;
          received = 0;
          throw new RetryableError(message);
        }
        if (announced !== null && announced > size - received) {
          await response.body?.cancel();
          throw new FuseloadError('digest-mismatch', `${shown}: Content-Length ${announced} is more than the ${size - received} bytes left of the ${size} the manifest names`);
        }
      } else if (response.status === 200) {
        if (received > 0) restartHash();
        received = 0; // a full body, whatever we asked for
        etag = response.headers.get('ETag');
        if (announced !== null && announced !== size) {
          await response.body?.cancel();
          throw new FuseloadError('digest-mismatch', `${shown}: Content-Length ${announced}, but the manifest names ${size} bytes`);
        }
      } else {
        await response.body?.cancel();
        const message = `${shown}: HTTP ${response.status}`;
        if (response.status === 404) throw new FuseloadError('not-found', `${message} (blob ${digest} is not at this origin)`);
        if (response.status >= 500 || response.status === 408 || response.status === 429) throw new RetryableError(message);
        throw new FuseloadError('network', message);
      }
      if (!response.body) throw new RetryableError(`${shown}: response has no body`);
      // A streaming hasher takes each chunk's buffer; without one, every chunk is copied out before the next read.
      await readBody(response.body, shown, options.idleTimeoutMs ?? DEFAULT_IDLE_MS, signal, !hashing && !byobStalled, (value) => {
        if (received + value.byteLength > size) {
          throw new FuseloadError('digest-mismatch', `${shown}: more than the ${size} bytes the manifest names`);
        }
        const at = received;
        received += value.byteLength;
        bytesFetched += value.byteLength;
        options.onBytes?.(received);
        const written = sink.write(value, at);
        // Last: the hasher may take the chunk's buffer. It holds the download back when it is behind.
        if (!written) return hashing?.update(value);
        return written.then(() => hashing?.update(value));
      });
      if (received !== size) throw new RetryableError(`${shown}: body ended at byte ${received} of ${size}`);
      const data = await sink.finish();
      options.onVerify?.();
      if (options.deferVerify) {
        const stream = hashing;
        hashing = null;
        const verified = hash(data, stream).then((actual) => {
          if (actual !== digest) throw new FuseloadError('digest-mismatch', `${shown}: bytes hash to ${actual}, expected ${digest}`);
        });
        verified.catch(() => {}); // observed by the caller; never an unhandled rejection here
        return { data, bytesFetched, rangeRequests, verified };
      }
      const stream = hashing;
      hashing = null;
      const actual = await hash(data, stream);
      if (actual !== digest) {
        const message = `${shown}: bytes hash to ${actual}, expected ${digest}`;
        // Corrupt in transit: start over once, from zero. Twice means the origin holds bad bytes.
        if (++mismatches > 1) throw new FuseloadError('digest-mismatch', message);
        received = 0;
        etag = null;
        throw new RetryableError(message);
      }
      return { data, bytesFetched, rangeRequests, verified: Promise.resolve() };
    } catch (e) {
      if (e instanceof ByobStall) byobStalled = true;
      const final = signal?.aborted || (isFuseloadError(e) && !isTransient(e));
      if (final) hashing?.abandon();
      if (signal?.aborted) throw abortError(shown, signal);
      // A dropped connection or a silent body is resumed; a timeout to headers, a cap or a 4xx is final.
      if (isFuseloadError(e) && !isTransient(e)) throw e;
      lastError = e;
    }
  }
  hashing?.abandon();
  const text = lastError instanceof Error ? lastError.message : String(lastError);
  const reason = text.startsWith(`${shown}: `) ? text.slice(shown.length + 2) : text;
  throw new FuseloadError('network', `${shown}: gave up after ${retries + 1} attempts: ${reason}`, { cause: lastError });
}

/** A BYOB read asks for at most this many bytes at a time, into one buffer reused for the whole body. */
const READ_BYTES = 1 << 20;
/** A BYOB read that brings nothing for this long is given up; the download resumes with a default reader. */
export const BYOB_STALL_MS = 3000;

/** A BYOB read that brought nothing for BYOB_STALL_MS: resumed (transient), and not read BYOB again. */
class ByobStall extends RetryableError {}

/**
 * A body, chunk by chunk, into `onChunk` (awaited when it returns a promise), with the same
 * deadlines as bounded-read.ts's streamChunks — silent for `idleMs`, the read is dropped and the
 * download resumes; an abort stops it — but one watchdog and one abort listener for the whole body
 * instead of a timer, a listener and a race per chunk: a 64 MiB shard is a thousand chunks, and
 * that bookkeeping cost a cold load a quarter of a bare fetch (test/bench/browser-load.ts).
 *
 * With `reuse` (the caller is done with each chunk once `onChunk` has settled) and a body that
 * allows it, the reads are BYOB reads into one buffer, reused: each chunk is a view of it. A fresh
 * buffer per chunk costs more than the copy out of it (fresh memory fills at about 650 MB/s on the
 * bench machine): on loopback, 6 bodies read this way into their buffers took 0.8 of `arrayBuffer()`,
 * read with the default reader 1.0. Only that buffer can go with a read that fails (a BYOB read
 * gives its buffer to the stream); what was copied out stays, so the download still resumes.
 * Chromium's BYOB reads now and then never settle (web/blob-reads.ts, for Blob streams): a BYOB read
 * that brings nothing for BYOB_STALL_MS is given up (`ByobStall`), and the download resumes from
 * the bytes it has with a default reader.
 */
async function readBody(
  body: ReadableStream<Uint8Array>,
  shown: string,
  idleMs: number,
  signal: AbortSignal | undefined,
  reuse: boolean,
  onChunk: (chunk: Uint8Array) => Promise<void> | void,
): Promise<void> {
  let byob: ReadableStreamBYOBReader | null = null;
  if (reuse) {
    try {
      byob = body.getReader({ mode: 'byob' });
    } catch {
      byob = null; // not a byte stream
    }
  }
  let space = new ArrayBuffer(byob ? READ_BYTES : 0);
  const reader = byob ?? body.getReader();
  let failure: Error | null = null;
  let done = false;
  let last = Date.now();
  // A hung BYOB read settles on nothing, not even a cancel: it is raced against this, one promise per body.
  let wake!: () => void;
  const stopped = new Promise<null>((resolve) => (wake = () => resolve(null)));
  const stop = (e: Error) => {
    failure ??= e;
    wake();
    reader.cancel().catch(() => {}); // a pending read() ends (done), and the connection is dropped
  };
  const silent = () => new RetryableError(`${shown}: no data for ${idleMs >= 1000 ? `${Math.round(idleMs / 100) / 10} s` : `${idleMs} ms`} in the middle of the body — is the origin up? (check --origin / FUSELOAD_ORIGIN)`);
  const stallMs = byob ? Math.min(idleMs, BYOB_STALL_MS) : idleMs;
  const watchdog = setInterval(() => {
    if (Date.now() - last < stallMs) return;
    stop(byob && stallMs < idleMs ? new ByobStall(`${shown}: a read brought nothing for ${stallMs} ms`) : silent());
  }, Math.max(10, Math.min(1000, stallMs / 4)));
  const onAbort = () => stop(abortError(shown, signal!));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      if (signal?.aborted) throw abortError(shown, signal);
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        if (byob) {
          const read = await Promise.race([byob.read(new Uint8Array(space)), stopped]);
          if (!read) throw failure;
          result = read;
          // The buffer comes back with the bytes (moved: its old handle is detached), and with `done`.
          if (result.value) space = result.value.buffer as ArrayBuffer;
        } else {
          result = await (reader as ReadableStreamDefaultReader<Uint8Array>).read();
        }
      } catch (e) {
        if (failure) throw failure;
        const cause = (e as { cause?: { code?: unknown } })?.cause;
        throw new RetryableError(`${shown}: connection dropped in the middle of the body (${typeof cause?.code === 'string' ? cause.code : scrubUrls(e instanceof Error ? e.message : String(e))})`);
      }
      if (failure) throw failure;
      if (result.done) {
        done = true;
        return;
      }
      const wait = onChunk(result.value);
      if (wait) {
        last = Number.POSITIVE_INFINITY; // waiting on the hasher is not the origin's silence
        await wait;
      }
      last = Date.now();
    }
  } finally {
    clearInterval(watchdog);
    signal?.removeEventListener('abort', onAbort);
    if (!done) reader.cancel().catch(() => {});
    try {
      reader.releaseLock();
    } catch {
      // a read still pending (a BYOB read that hung): the stream is cancelled, nothing more to free
    }
  }
}

function parseContentRange(value: string | null): { start: number; end: number; length: number | null } | null {
  const m = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null;
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), length: m[3] === '*' ? null : Number(m[3]) };
}

export function abortError(what: string, signal: AbortSignal): FuseloadError {
  return new FuseloadError('aborted', `${what}: aborted`, { cause: signal.reason });
}

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw abortError(what, signal);
}

function sleep(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(what, signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
