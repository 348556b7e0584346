/**
 * One blob over HTTP: streamed into a buffer of the manifest's size, resumed with a
 * Range request after a dropped connection, retried with backoff, and verified by
 * SHA-256 before anyone sees the bytes. Runtime-neutral: fetch, crypto and AbortSignal only.
 *
 * Bounded: the headers must come within `headersTimeoutMs` (an origin that accepts and never
 * answers is given up, not retried), the body may not go silent for `idleTimeoutMs` (resumed
 * like a dropped connection), a blob over `maxBlobBytes` is refused before anything is
 * allocated, and the buffer is allocated only once the first byte arrives.
 */
import { type Digest, sha256 } from '../digest.ts';
import { FuseloadError, isFuseloadError } from '../errors.ts';
import { contentLength, fetchWithDeadline, formatCap, isTransient, shownUrl, streamChunks } from './bounded-read.ts';

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
}

export interface DownloadResult {
  bytes: Uint8Array;
  /** Bytes that crossed the network, including any discarded by a restart. */
  bytesFetched: number;
  /** How many requests carried a Range header (resumes). */
  rangeRequests: number;
}

/** Network failures worth another attempt; everything else is final. */
class RetryableError extends Error {}

export async function downloadBlob(options: DownloadOptions): Promise<DownloadResult> {
  const { url, digest, size, signal } = options;
  const retries = options.retries ?? 4;
  const backoffMs = options.backoffMs ?? 250;
  const maxBlobBytes = options.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
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
      for await (const value of streamChunks(response.body, shown, { idleMs: options.idleTimeoutMs, signal })) {
        if (received + value.byteLength > size) {
          throw new FuseloadError('digest-mismatch', `${shown}: more than the ${size} bytes the manifest names`);
        }
        buffer ??= new Uint8Array(size);
        buffer.set(value, received);
        received += value.byteLength;
        bytesFetched += value.byteLength;
        options.onBytes?.(received);
      }
      if (received !== size) throw new RetryableError(`${shown}: body ended at byte ${received} of ${size}`);
      buffer ??= new Uint8Array(size); // an empty blob
      options.onVerify?.();
      const actual = await sha256(buffer);
      if (actual !== digest) {
        const message = `${shown}: bytes hash to ${actual}, expected ${digest}`;
        // Corrupt in transit: start over once, from zero. Twice means the origin holds bad bytes.
        if (++mismatches > 1) throw new FuseloadError('digest-mismatch', message);
        received = 0;
        etag = null;
        throw new RetryableError(message);
      }
      return { bytes: buffer, bytesFetched, rangeRequests };
    } catch (e) {
      if (signal?.aborted) throw abortError(shown, signal);
      // A dropped connection or a silent body is resumed; a timeout to headers, a cap or a 4xx is final.
      if (isFuseloadError(e) && !isTransient(e)) throw e;
      lastError = e;
    }
  }
  const text = lastError instanceof Error ? lastError.message : String(lastError);
  const reason = text.startsWith(`${shown}: `) ? text.slice(shown.length + 2) : text;
  throw new FuseloadError('network', `${shown}: gave up after ${retries + 1} attempts: ${reason}`, { cause: lastError });
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
