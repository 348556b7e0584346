/**
 * What the edge needs to know about an object to answer headers, conditionals and
 * ranges — the same whether it came from R2 or from a cached response, so HEAD,
 * a cache hit and a cache miss all produce identical headers.
 */
import { digestHex } from '../common/digest.ts';
import type { ObjectKey } from '../common/keys.ts';

export interface ObjectMeta {
  size: number;
  /** Quoted strong entity-tag, e.g. `"<hex>"`. */
  etag: string;
  /** Upload time, whole seconds (HTTP dates carry no more). */
  lastModified: Date;
}

/** Blobs and manifests: the digest is the identity. Tags: R2's own entity-tag. */
export function metaFromR2(object: ObjectKey, r2: R2Object): ObjectMeta {
  const etag = object.kind === 'tag' ? r2.httpEtag : `"${digestHex(object.digest)}"`;
  return { size: r2.size, etag, lastModified: toSeconds(r2.uploaded) };
}

/** Reads back the meta this worker wrote into a cached full response; null if unusable. */
export function metaFromCached(headers: Headers): ObjectMeta | null {
  const size = Number(headers.get('Content-Length'));
  const etag = headers.get('ETag');
  const lastModified = new Date(headers.get('Last-Modified') ?? '');
  if (!Number.isSafeInteger(size) || size < 0 || !etag || Number.isNaN(lastModified.getTime())) return null;
  return { size, etag, lastModified };
}

function toSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}
