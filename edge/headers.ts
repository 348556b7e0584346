/** Response headers for an object, by key shape (DESIGN.md, "Edge contract"). */
import type { ObjectKey } from '../common/keys.ts';
import type { ObjectMeta } from './object-meta.ts';

export const IMMUTABLE_CACHE_CONTROL = 'public, max-age=31536000, immutable';
export const TAG_CACHE_CONTROL = 'public, max-age=60, stale-while-revalidate=600';

export interface ObjectHeaderOptions {
  /**
   * Private (signed) deployments say `private` instead of `public`, so shared caches
   * downstream never hand a bearer-authorised response to someone else. Default false.
   */
  private?: boolean;
}

export function cacheControlFor(object: ObjectKey, options: ObjectHeaderOptions = {}): string {
  const value = object.kind === 'tag' ? TAG_CACHE_CONTROL : IMMUTABLE_CACHE_CONTROL;
  return options.private ? value.replace('public', 'private') : value;
}

export function contentTypeFor(object: ObjectKey): string {
  return object.kind === 'blob' ? 'application/octet-stream' : 'application/json';
}

/** Validators and caching headers, shared by 200, 206, 304 and HEAD. */
export function validatorHeaders(object: ObjectKey, meta: ObjectMeta, options: ObjectHeaderOptions = {}): Headers {
  return new Headers({
    ETag: meta.etag,
    'Last-Modified': meta.lastModified.toUTCString(),
    'Cache-Control': cacheControlFor(object, options),
    'Accept-Ranges': 'bytes',
  });
}

/** Headers of a 200 with the whole body. */
export function fullHeaders(object: ObjectKey, meta: ObjectMeta, options: ObjectHeaderOptions = {}): Headers {
  const headers = validatorHeaders(object, meta, options);
  headers.set('Content-Type', contentTypeFor(object));
  headers.set('Content-Length', String(meta.size));
  return headers;
}

/** Headers of a 206 for bytes start..end (inclusive). */
export function partialHeaders(
  object: ObjectKey,
  meta: ObjectMeta,
  start: number,
  end: number,
  options: ObjectHeaderOptions = {},
): Headers {
  const headers = validatorHeaders(object, meta, options);
  headers.set('Content-Type', contentTypeFor(object));
  headers.set('Content-Length', String(end - start + 1));
  headers.set('Content-Range', `bytes ${start}-${end}/${meta.size}`);
  return headers;
}
