/**
 * The three object key shapes of the artifact layout (DESIGN.md), shared by the bucket,
 * the edge worker and every local store. Anything else is not ours to read.
 */
import { type Digest, digestHex } from './digest.ts';

/** Model and tag names: a letter or digit first, then letters, digits, `.`, `_`, `-`. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export type ObjectKey =
  | { kind: 'blob'; digest: Digest }
  | { kind: 'manifest'; digest: Digest }
  | { kind: 'tag'; model: string; tag: string };

export const blobKey = (digest: Digest) => `blobs/sha256/${digestHex(digest)}`;
export const manifestKey = (fingerprint: Digest) => `manifests/sha256/${digestHex(fingerprint)}.json`;
export const tagKey = (model: string, tag: string) => `tags/${model}/${tag}.json`;
/** The lock a download of `digest` is made under, across tabs and processes (common/loader/blobs.ts). */
export const blobLockName = (digest: Digest) => `fuseload:blob:${digestHex(digest)}`;

export function isName(value: string): boolean {
  return NAME_RE.test(value) && !value.includes('..');
}

const BLOB_RE = /^blobs\/sha256\/([0-9a-f]{64})$/;
const MANIFEST_RE = /^manifests\/sha256\/([0-9a-f]{64})\.json$/;
const TAG_RE = /^tags\/([^/]+)\/([^/]+)\.json$/;

/** Parses a key exactly; returns null for anything that is not one of the three shapes. */
export function parseObjectKey(key: string): ObjectKey | null {
  let m = BLOB_RE.exec(key);
  if (m) return { kind: 'blob', digest: `sha256:${m[1]}` };
  m = MANIFEST_RE.exec(key);
  if (m) return { kind: 'manifest', digest: `sha256:${m[1]}` };
  m = TAG_RE.exec(key);
  if (m && isName(m[1]) && isName(m[2])) return { kind: 'tag', model: m[1], tag: m[2] };
  return null;
}
