/**
 * Request path → object key. Only the three shapes of common/keys.ts are served;
 * everything else is 404 before any bucket read.
 */
import { parseObjectKey, type ObjectKey } from '../common/keys.ts';

export interface ObjectRoute {
  /** The bucket key, exactly as parseObjectKey accepted it. */
  key: string;
  object: ObjectKey;
}

/** Characters a valid key can contain; anything else (`%`, `\`, controls) is refused. */
const KEY_CHARS = /^[A-Za-z0-9._\-/]+$/;

/**
 * Resolves a URL pathname (still percent-encoded) to an object route, or null.
 * The path is decoded exactly once; a decoded `%` (double encoding), `..`, `//`
 * or any character outside the key alphabet means the request is not for a key.
 */
export function resolveObjectRoute(pathname: string): ObjectRoute | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    return null; // malformed percent-encoding
  }
  if (!decoded.startsWith('/')) return null;
  const key = decoded.slice(1);
  if (!KEY_CHARS.test(key) || key.includes('..') || key.includes('//')) return null;
  const object = parseObjectKey(key);
  return object ? { key, object } : null;
}

/** Blobs and manifests are named by their digest, so they never change. */
export function isImmutable(object: ObjectKey): boolean {
  return object.kind !== 'tag';
}
