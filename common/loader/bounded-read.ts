/**
 * Deadlines and size caps for everything read from an origin, so a stalled or hostile origin
 * costs a bounded wait and bounded memory:
 *
 * - `fetchWithDeadline`: the response headers must arrive within `headersMs` (default 30 s).
 * - `streamChunks`: each body chunk must arrive within `idleMs` of the last (default 30 s).
 * - `readBounded`: a whole body, refused as soon as it passes `maxBytes` (and before reading
 *   when Content-Length already says so) — for tags, manifests and LoRA files.
 *
 * Every failure is one line naming the input: `<url>: no response within 30 s — is the origin
 * up? (check --origin / FUSELOAD_ORIGIN)`. URLs are shown without userinfo or query (a signed
 * URL's signature stays out of messages). Runtime-neutral: fetch, streams and AbortSignal only.
 */
import { FuseloadError } from '../errors.ts';

/** Time to response headers before a request is given up. */
export const DEFAULT_HEADERS_MS = 30_000;
/** Longest silence inside a body before it is given up. */
export const DEFAULT_IDLE_MS = 30_000;

/** Caps for the small objects an origin serves (the loader reads these whole). */
export const READ_LIMITS = {
  /** `tags/<model>/<tag>.json` is `{"manifest":"sha256:<hex>"}`, about 80 bytes. */
  tagBytes: 4 * 1024,
  /** A manifest's tensor index grows with the model; SDXL's is a few MiB. */
  manifestBytes: 16 * 1024 * 1024,
  /** A LoRA file read whole for a load-time overlay. */
  loraBytes: 1024 * 1024 * 1024,
} as const;

const HINT = 'is the origin up? (check --origin / FUSELOAD_ORIGIN)';

/** A URL fit for a message: scheme, host and path; no userinfo, no query, no fragment. */
export function shownUrl(url: string): string {
  try {
    const u = new URL(url);
    return u.protocol === 'file:' ? u.pathname : `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return url.replace(/\/\/[^/@]*@/, '//').replace(/[?#].*$/, '');
  }
}

/** `30 s`, `250 ms`. */
function seconds(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 100) / 10} s` : `${ms} ms`;
}

/** `2 GiB`, `16 MiB`, `4 KiB`, `100 bytes`. */
export function formatCap(bytes: number): string {
  for (const [unit, size] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (bytes >= size && bytes % (size / 16) === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

/**
 * Failures worth another attempt (a dropped connection, a body that went silent): the
 * downloader retries and resumes these; everything else is final.
 */
const transient = new WeakSet<Error>();

export function isTransient(e: unknown): boolean {
  return e instanceof Error && transient.has(e);
}

function markTransient<E extends Error>(e: E): E {
  transient.add(e);
  return e;
}

function aborted(input: string, signal: AbortSignal): FuseloadError {
  return new FuseloadError('aborted', `${input}: aborted`, { cause: signal.reason });
}

/** Text fit for a message: any URL in it loses its userinfo and query. */
export function scrubUrls(text: string): string {
  return text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>]+/gi, (url) => shownUrl(url));
}

/** Connection-level failure text: the socket error's code where fetch wraps one. */
function failureText(e: unknown): string {
  const cause = (e as { cause?: { code?: unknown; message?: unknown } })?.cause;
  if (typeof cause?.code === 'string') return cause.code;
  if (typeof cause?.message === 'string') return scrubUrls(cause.message);
  return scrubUrls(e instanceof Error ? e.message : String(e));
}

export interface FetchDeadlineOptions {
  /** Milliseconds to the response headers (default 30 s). */
  headersMs?: number;
  /** What to tell the user to check, after the dash (default: the origin and --origin). */
  hint?: string;
  /** The caller's cancel; aborting it later also stops the body. */
  signal?: AbortSignal;
}

/**
 * `fetchFn(url, init)` with a deadline on the response headers. The returned response's body
 * still follows `signal` (and `init.signal`). Throws a FuseloadError: `network` when nothing
 * answered in time (final) or the connection failed (transient, see `isTransient`), `aborted`
 * when the caller cancelled.
 */
export async function fetchWithDeadline(
  fetchFn: typeof fetch,
  url: string,
  init: RequestInit = {},
  options: FetchDeadlineOptions = {},
): Promise<Response> {
  const headersMs = options.headersMs ?? DEFAULT_HEADERS_MS;
  const hint = options.hint ?? HINT;
  const shown = shownUrl(url);
  const callers = [options.signal, init.signal ?? undefined].filter((s): s is AbortSignal => s !== undefined);
  const caller = callers.length > 1 ? AbortSignal.any(callers) : callers[0];
  if (caller?.aborted) throw aborted(shown, caller);
  const deadline = new AbortController();
  const signal = caller ? AbortSignal.any([caller, deadline.signal]) : deadline.signal;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    deadline.abort(new Error(`no response within ${seconds(headersMs)}`));
  }, headersMs);
  try {
    return await fetchFn(url, { ...init, signal });
  } catch (e) {
    if (caller?.aborted) throw aborted(shown, caller);
    if (timedOut) throw new FuseloadError('network', `${shown}: no response within ${seconds(headersMs)} — ${hint}`, { cause: e });
    throw markTransient(new FuseloadError('network', `${shown}: could not reach the origin (${failureText(e)}) — ${hint}`, { cause: e }));
  } finally {
    clearTimeout(timer);
  }
}

export interface StreamOptions {
  /** Longest wait for the next chunk, in ms (default 30 s). */
  idleMs?: number;
  signal?: AbortSignal;
  /** What to tell the user to check when the body goes silent (default: the origin and --origin). */
  hint?: string;
}

/**
 * The body's chunks, each within `idleMs` of the previous one. Leaving the loop early (break,
 * throw) cancels the body, so the connection is released. Errors: `network` for silence
 * (transient) or a broken stream (transient), `aborted` for the caller's cancel.
 */
export async function* streamChunks(body: ReadableStream<Uint8Array>, input: string, options: StreamOptions = {}): AsyncGenerator<Uint8Array> {
  const idleMs = options.idleMs ?? DEFAULT_IDLE_MS;
  const { signal } = options;
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      if (signal?.aborted) throw aborted(input, signal);
      let timer: ReturnType<typeof setTimeout> | undefined;
      let onAbort: (() => void) | undefined;
      const stop = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(markTransient(new FuseloadError('network', `${input}: no data for ${seconds(idleMs)} in the middle of the body — ${options.hint ?? HINT}`))),
          idleMs,
        );
        if (signal) {
          onAbort = () => reject(aborted(input, signal));
          signal.addEventListener('abort', onAbort, { once: true });
        }
      });
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await Promise.race([reader.read(), stop]);
      } catch (e) {
        if (e instanceof FuseloadError) throw e;
        if (signal?.aborted) throw aborted(input, signal);
        throw markTransient(new FuseloadError('network', `${input}: connection dropped in the middle of the body (${failureText(e)})`, { cause: e }));
      } finally {
        clearTimeout(timer);
        if (onAbort) signal?.removeEventListener('abort', onAbort);
      }
      if (result.done) {
        done = true;
        return;
      }
      yield result.value;
    }
  } finally {
    // Early exit (cap passed, silence, abort, the consumer stopped): drop the connection.
    if (!done) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * The body's length from Content-Length, or null when absent, not a number, or counting an
 * encoded body (gzip, br: fetch hands over the decoded bytes, so the header does not apply).
 */
export function contentLength(response: Response): number | null {
  const encoding = response.headers.get('Content-Encoding');
  if (encoding && encoding.trim().toLowerCase() !== 'identity') return null;
  const raw = response.headers.get('Content-Length');
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  const n = Number(raw);
  return Number.isSafeInteger(n) ? n : null;
}

export interface ReadBoundedOptions extends StreamOptions {}

/**
 * The whole body of `response`, at most `maxBytes`. Refused with one line naming `input` and
 * the cap as soon as the body passes it — before reading anything when Content-Length already
 * says so — so an oversized answer costs at most `maxBytes` of memory. Memory is allocated as
 * bytes arrive (up to the announced length), never up front from a header alone.
 */
export async function readBounded(response: Response, maxBytes: number, input: string, opts: ReadBoundedOptions = {}): Promise<Uint8Array> {
  const announced = contentLength(response);
  const tooLarge = (what: string) =>
    new FuseloadError('too-large', `${input}: ${what}, over the ${formatCap(maxBytes)} cap for this file`);
  if (announced !== null && announced > maxBytes) {
    await response.body?.cancel().catch(() => {});
    throw tooLarge(`${announced} bytes (Content-Length)`);
  }
  if (!response.body) return new Uint8Array(0);
  let buffer: Uint8Array | null = null;
  let length = 0;
  for await (const chunk of streamChunks(response.body, input, opts)) {
    if (length + chunk.byteLength > maxBytes) throw tooLarge(`more than ${maxBytes} bytes`);
    if (!buffer || length + chunk.byteLength > buffer.byteLength) {
      // First chunk: the announced size (a lie costs at most the cap); then double, capped.
      const want = Math.max(length + chunk.byteLength, buffer ? buffer.byteLength * 2 : (announced ?? 64 * 1024));
      const grown = new Uint8Array(Math.min(maxBytes, want));
      if (buffer) grown.set(buffer.subarray(0, length));
      buffer = grown;
    }
    buffer.set(chunk, length);
    length += chunk.byteLength;
  }
  return buffer ? buffer.subarray(0, length) : new Uint8Array(0);
}
