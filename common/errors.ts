/**
 * Errors a user can act on: one line, naming the input and what is wrong with it.
 * `code` is stable for programs; `message` is for people and never carries a secret.
 */
export class FuseloadError extends Error {
  override readonly name = 'FuseloadError';
  constructor(
    /** Stable machine-readable reason, e.g. `bad-input`, `digest-mismatch`, `not-found`. */
    readonly code: FuseloadErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message.replace(/\s*\n\s*/g, ' '), options);
  }
}

export type FuseloadErrorCode =
  | 'bad-input'
  | 'not-found'
  | 'digest-mismatch'
  | 'unsupported'
  | 'shape-mismatch'
  | 'network'
  | 'aborted'
  | 'quota'
  | 'engine'
  | 'auth'
  /** A body or a blob over a size cap (an origin's answer, a request, a manifest's size). */
  | 'too-large';

export function badInput(input: string, what: string): FuseloadError {
  return new FuseloadError('bad-input', `${input}: ${what}`);
}

export function isFuseloadError(e: unknown): e is FuseloadError {
  return e instanceof Error && e.name === 'FuseloadError' && 'code' in e;
}

/** Node's errno codes a user can act on, as the words after "<path>: ". */
const SYSTEM_ERRORS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EISDIR: 'is a directory, not a file',
  ENOTDIR: 'a part of this path is a file, not a directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EEXIST: 'already exists',
  ENOTEMPTY: 'directory not empty',
  ELOOP: 'too many symbolic links (or a symlink where a file was expected)',
  ENAMETOOLONG: 'name too long',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only file system',
  EMFILE: 'too many open files',
  EBUSY: 'resource busy',
  EXDEV: 'cannot rename across file systems',
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'timed out',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed (temporary)',
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available',
};

interface SystemErrorLike {
  code?: unknown;
  path?: unknown;
  dest?: unknown;
  address?: unknown;
  port?: unknown;
  hostname?: unknown;
}

/**
 * A Node system error (`ENOENT`, `EISDIR`, `EACCES`, …) as `{code, message: "<path>: <what>"}`,
 * or null when `e` is not one. Also unwraps fetch's `TypeError: fetch failed` to its socket
 * error. Runtime-neutral: it only reads properties.
 */
export function systemError(e: unknown): { code: string; message: string } | null {
  if (!(e instanceof Error)) return null;
  let err = e as Error & SystemErrorLike;
  if (typeof err.code !== 'string' && err.cause instanceof Error) err = err.cause as Error & SystemErrorLike;
  const code = typeof err.code === 'string' && /^E[A-Z_0-9]+$/.test(err.code) ? err.code : null;
  if (!code) return null;
  const what = SYSTEM_ERRORS[code];
  const subject =
    typeof err.path === 'string'
      ? err.path
      : typeof err.hostname === 'string'
        ? err.hostname
        : typeof err.address === 'string'
          ? `${err.address}${typeof err.port === 'number' ? `:${err.port}` : ''}`
          : null; // e.g. readFile on a directory: Node names no path, and the syscall means nothing to a user
  const detail = what ? `${what} (${code})` : code;
  return { code, message: subject ? `${subject}: ${detail}` : detail };
}

/**
 * What a user should see for `e`: `{code, message}` (one line) for a FuseloadError or a system
 * error, null for anything else (a bug: the caller reports it as an internal error).
 */
export function userFacingError(e: unknown): { code: string; message: string } | null {
  if (isFuseloadError(e)) return { code: e.code, message: e.message };
  return systemError(e);
}
