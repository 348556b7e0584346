import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../common/canonical-json.ts';
import { sha256, toDigest } from '../../common/digest.ts';
import { parseObjectKey } from '../../common/keys.ts';

describe('canonical JSON', () => {
  it('sorts keys at every depth and drops whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, 'x'], c: null } })).toBe('{"a":{"c":null,"d":[1,"x"]},"b":1}');
  });
  it('refuses values JSON cannot carry', () => {
    expect(() => canonicalJson({ scale: Number.NaN })).toThrow(/\$\.scale is NaN/);
  });
});

describe('digests', () => {
  it('hashes with SHA-256 (FIPS 180-2 "abc" vector)', async () => {
    expect(await sha256(new TextEncoder().encode('abc'))).toBe(
      'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
  });
  it('accepts bare hex and rejects anything else by name', () => {
    expect(toDigest('a'.repeat(64))).toBe(`sha256:${'a'.repeat(64)}`);
    expect(() => toDigest('sha256:ABC', '--fingerprint')).toThrow(/^--fingerprint: "sha256:ABC" is not a sha256 digest/);
  });
});

describe('object keys', () => {
  const hex = '0123456789abcdef'.repeat(4);
  it('parses exactly the three shapes', () => {
    expect(parseObjectKey(`blobs/sha256/${hex}`)).toEqual({ kind: 'blob', digest: `sha256:${hex}` });
    expect(parseObjectKey(`manifests/sha256/${hex}.json`)).toEqual({ kind: 'manifest', digest: `sha256:${hex}` });
    expect(parseObjectKey('tags/sample/latest.json')).toEqual({ kind: 'tag', model: 'sample', tag: 'latest' });
  });
  it.each([
    `blobs/sha256/${hex.toUpperCase()}`,
    `blobs/sha256/${hex.slice(1)}`,
    `blobs/sha256/${hex}/x`,
    'tags/../latest.json',
    'tags/a/b/c.json',
    'tags/..a/latest.json',
    `manifests/sha256/${hex}`,
  ])('rejects %s', (key) => {
    expect(parseObjectKey(key)).toBeNull();
  });
});
