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

/** Network failures worth another attempt; everything else is final. */
class RetryableError extends Error {}

export async function downloadBlob(options: DownloadOptions): Promise<DownloadResult> {
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
  // Allocated when the first byte arrives: an origin that never answers costs no memory.
  let buffer: Uint8Array | null = null;
  let received = 0;
  let etag: string | null = null;
  let bytesFetched = 0;
  let rangeRequests = 0;
  let mismatches = 0;
  let lastError: unknown;

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
      await readBody(response.body, shown, options.idleTimeoutMs ?? DEFAULT_IDLE_MS, signal, (value) => {
        if (received + value.byteLength > size) {
          throw new FuseloadError('digest-mismatch', `${shown}: more than the ${size} bytes the manifest names`);
        }
        buffer ??= new Uint8Array(size);
        buffer.set(value, received);
        received += value.byteLength;
        bytesFetched += value.byteLength;
        options.onBytes?.(received);
        // Last: the hasher may take the chunk's buffer. It holds the download back when it is behind.
        return hashing?.update(value);
      });
      if (received !== size) throw new RetryableError(`${shown}: body ended at byte ${received} of ${size}`);
      buffer ??= new Uint8Array(size); // an empty blob
      options.onVerify?.();
      if (options.deferVerify) {
        const bytes = buffer;
        const stream = hashing;
        hashing = null;
        const verified = (stream ? stream.digest() : sha256(bytes)).then((actual) => {
          if (actual !== digest) throw new FuseloadError('digest-mismatch', `${shown}: bytes hash to ${actual}, expected ${digest}`);
        });
        verified.catch(() => {}); // observed by the caller; never an unhandled rejection here
        return { bytes, bytesFetched, rangeRequests, verified };
      }
      const stream = hashing;
      hashing = null;
      const actual = await (stream ? stream.digest() : sha256(buffer));
      if (actual !== digest) {
        const message = `${shown}: bytes hash to ${actual}, expected ${digest}`;
        // Corrupt in transit: start over once, from zero. Twice means the origin holds bad bytes.
        if (++mismatches > 1) throw new FuseloadError('digest-mismatch', message);
        received = 0;
        etag = null;
        throw new RetryableError(message);
      }
      return { bytes: buffer, bytesFetched, rangeRequests, verified: Promise.resolve() };
    } catch (e) {
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

/**
 * A body, chunk by chunk, into `onChunk` (awaited when it returns a promise), with the same
 * deadlines as bounded-read.ts's streamChunks — silent for `idleMs`, the read is dropped and the
 * download resumes; an abort stops it — but one watchdog and one abort listener for the whole body
 * instead of a timer, a listener and a race per chunk: a 64 MiB shard is a thousand chunks, and
 * that bookkeeping cost a cold load a quarter of a bare fetch (test/bench/browser-load.ts).
 */
async function readBody(
  body: ReadableStream<Uint8Array>,
  shown: string,
  idleMs: number,
  signal: AbortSignal | undefined,
  onChunk: (chunk: Uint8Array) => Promise<void> | void,
): Promise<void> {
  const reader = body.getReader();
  let failure: Error | null = null;
  let done = false;
  let last = Date.now();
  const stop = (e: Error) => {
    failure ??= e;
    reader.cancel().catch(() => {}); // a pending read() ends (done), and the connection is dropped
  };
  const silent = () => new RetryableError(`${shown}: no data for ${idleMs >= 1000 ? `${Math.round(idleMs / 100) / 10} s` : `${idleMs} ms`} in the middle of the body — is the origin up? (check --origin / FUSELOAD_ORIGIN)`);
  const watchdog = setInterval(() => void (Date.now() - last >= idleMs && stop(silent())), Math.max(10, Math.min(1000, idleMs / 4)));
  const onAbort = () => stop(abortError(shown, signal!));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      if (signal?.aborted) throw abortError(shown, signal);
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
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
    reader.releaseLock();
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
