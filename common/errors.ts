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
  | 'auth';

export function badInput(input: string, what: string): FuseloadError {
  return new FuseloadError('bad-input', `${input}: ${what}`);
}

export function isFuseloadError(e: unknown): e is FuseloadError {
  return e instanceof Error && e.name === 'FuseloadError' && 'code' in e;
}
