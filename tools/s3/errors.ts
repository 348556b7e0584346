/**
 * Turns SDK and socket failures into one line a user can act on. Built only from the
 * bucket, the endpoint, the object key and the server's error code: never from the SDK's
 * message, which can quote request headers (and so the key id or a signature).
 */
import { FuseloadError, isFuseloadError } from '../../common/errors.ts';
import { describeTarget } from './config.ts';

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH']);
const AUTH_NAMES = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied', 'InvalidToken', 'ExpiredToken', 'Forbidden']);

interface SdkLikeError {
  name?: string;
  code?: string;
  errno?: string;
  $metadata?: { httpStatusCode?: number };
  cause?: unknown;
}

function networkCode(e: unknown, depth = 0): string | undefined {
  if (!e || typeof e !== 'object' || depth > 4) return undefined;
  const err = e as SdkLikeError;
  if (err.code && NETWORK_CODES.has(err.code)) return err.code;
  if (err.errno && NETWORK_CODES.has(err.errno)) return err.errno;
  if (err.name === 'TimeoutError' || err.name === 'RequestTimeout') return 'timeout';
  return networkCode(err.cause, depth + 1);
}

/** `what` names the operation and object, e.g. `upload blobs/sha256/ab…`. */
export function s3Failure(e: unknown, target: { bucket: string; endpoint?: string }, what: string): FuseloadError {
  if (isFuseloadError(e)) return e;
  const where = describeTarget(target);
  const net = networkCode(e);
  if (net) return new FuseloadError('network', `${what}: cannot reach ${where} (${net})`);
  const err = (e ?? {}) as SdkLikeError;
  const status = err.$metadata?.httpStatusCode;
  const name = err.name && /^[A-Za-z]+$/.test(err.name) && err.name !== 'Unknown' && err.name !== 'Error' ? err.name : undefined;
  const tag = [status, name].filter(Boolean).join(' ');
  if (name === 'AbortError') return new FuseloadError('aborted', `${what}: aborted`);
  if ((name && AUTH_NAMES.has(name)) || status === 401 || status === 403) {
    return new FuseloadError('auth', `${what}: credentials rejected by ${where} (${tag}); check B2_KEY_ID and B2_SECRET_KEY`);
  }
  if (name === 'NoSuchBucket') return new FuseloadError('not-found', `${what}: ${where} does not exist`);
  if (status && status >= 500) return new FuseloadError('network', `${what}: ${where} failed (${tag}) after retries`);
  return new FuseloadError('network', `${what}: ${where} answered ${tag || 'an unexpected error'}`);
}
