/**
 * One blob over HTTP: streamed into a buffer of the manifest's size, resumed with a
 * Range request after a dropped connection, retried with backoff, and verified by
 * SHA-256 before anyone sees the bytes. Runtime-neutral: fetch, crypto and AbortSignal only.
 */
import { type Digest, sha256 } from '../digest.ts';
import { FuseloadError, isFuseloadError } from '../errors.ts';

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
  const buffer = new Uint8Array(size);
  let received = 0;
  let etag: string | null = null;
  let bytesFetched = 0;
  let rangeRequests = 0;
  let mismatches = 0;
  let lastError: unknown;

  for (let attempt = 0; attempt <= retries; attempt++) {
    throwIfAborted(signal, url);
    if (attempt > 0) await sleep(backoffMs * 2 ** (attempt - 1), signal, url);
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
      const response = await options.fetch(url, { headers, signal, cache: 'no-store' });
      if (response.status === 206 && resuming) {
        const range = parseContentRange(response.headers.get('Content-Range'));
        if (!range || range.start !== received || (range.length !== null && range.length !== size)) {
          await response.body?.cancel();
          const message = `${url}: Content-Range ${response.headers.get('Content-Range')} does not continue at byte ${received}`;
          received = 0;
          throw new RetryableError(message);
        }
      } else if (response.status === 200) {
        received = 0; // a full body, whatever we asked for
        etag = response.headers.get('ETag');
      } else {
        await response.body?.cancel();
        const message = `${url}: HTTP ${response.status}`;
        if (response.status === 404) throw new FuseloadError('not-found', `${message} (blob ${digest} is not at this origin)`);
        if (response.status >= 500 || response.status === 408 || response.status === 429) throw new RetryableError(message);
        throw new FuseloadError('network', message);
      }
      if (!response.body) throw new RetryableError(`${url}: response has no body`);
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (received + value.byteLength > size) {
          await reader.cancel();
          throw new FuseloadError('digest-mismatch', `${url}: more than the ${size} bytes the manifest names`);
        }
        buffer.set(value, received);
        received += value.byteLength;
        bytesFetched += value.byteLength;
        options.onBytes?.(received);
      }
      if (received !== size) throw new RetryableError(`${url}: body ended at byte ${received} of ${size}`);
      options.onVerify?.();
      const actual = await sha256(buffer);
      if (actual !== digest) {
        const message = `${url}: bytes hash to ${actual}, expected ${digest}`;
        // Corrupt in transit: start over once, from zero. Twice means the origin holds bad bytes.
        if (++mismatches > 1) throw new FuseloadError('digest-mismatch', message);
        received = 0;
        etag = null;
        throw new RetryableError(message);
      }
      return { bytes: buffer, bytesFetched, rangeRequests };
    } catch (e) {
      if (signal?.aborted) throw abortError(url, signal);
      if (isFuseloadError(e)) throw e;
      lastError = e;
      // A TypeError from fetch or a stream read error is a dropped connection: resume.
    }
  }
  const reason = lastError instanceof Error ? lastError.message : String(lastError);
  throw new FuseloadError('network', `${url}: gave up after ${retries + 1} attempts: ${reason}`, { cause: lastError });
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
