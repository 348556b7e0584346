import { env } from 'cloudflare:workers';
import { beforeAll, describe, expect, it } from 'vitest';
import { send, seedBlob, patternBytes, type SeededBlob } from './helpers.ts';

let blob: SeededBlob;
beforeAll(async () => {
  blob = await seedBlob(patternBytes(64));
  // Objects under keys that are not one of the three shapes: the worker must never read them.
  await env.ARTIFACTS.put(`blobs/sha256/${blob.hex.toUpperCase()}`, 'upper-case twin');
  await env.ARTIFACTS.put('secret/credentials.json', '{"key":"do-not-serve"}');
  await env.ARTIFACTS.put('tags/m/../../secret/credentials.json', 'traversal target');
});

describe('routing: only the three key shapes', () => {
  it('serves an existing blob', async () => {
    const { res, body } = await send(blob.path);
    expect(res.status).toBe(200);
    expect(body).toEqual(blob.bytes);
  });

  const odd: [string, () => string][] = [
    ['the root', () => '/'],
    ['a key outside the layout that exists in the bucket', () => '/secret/credentials.json'],
    ['upper-case hex (present in the bucket)', () => `/blobs/sha256/${blob.hex.toUpperCase()}`],
    ['short hex', () => `/blobs/sha256/${blob.hex.slice(0, 63)}`],
    ['long hex', () => `/blobs/sha256/${blob.hex}0`],
    ['an extra segment', () => `/blobs/sha256/${blob.hex}/x`],
    ['a doubled slash inside', () => `/blobs//sha256/${blob.hex}`],
    ['a leading doubled slash', () => `//blobs/sha256/${blob.hex}`],
    ['a trailing slash', () => `/blobs/sha256/${blob.hex}/`],
    ['another algorithm', () => `/blobs/sha512/${blob.hex}`],
    ['a manifest without .json', () => `/manifests/sha256/${blob.hex}`],
    ['a tag without .json', () => '/tags/m/latest'],
    ['a tag with an extra segment', () => '/tags/m/x/latest.json'],
    ['a tag name starting with a dot', () => '/tags/m/.latest.json'],
    ['encoded traversal in a tag', () => '/tags/m/%2e%2e%2f%2e%2e%2fsecret%2fcredentials.json'],
    ['encoded slashes making a traversal', () => '/tags/m%2F..%2F..%2Fsecret/credentials.json'],
    ['double-encoded dots', () => '/tags/%252e%252e/latest.json'],
    ['malformed percent-encoding', () => '/tags/m/%zz.json'],
    ['an encoded NUL', () => `/blobs/sha256/${blob.hex}%00`],
    ['an encoded backslash', () => `/blobs%5Csha256%5C${blob.hex}`],
  ];
  for (const [what, path] of odd) {
    it(`404 for ${what}`, async () => {
      const { res, body } = await send(path());
      expect(res.status).toBe(404);
      expect(new TextDecoder().decode(body)).not.toContain('do-not-serve');
    });
  }

  it('a raw ../ traversal is normalised by the URL parser and then is not a key shape', async () => {
    const { res } = await send(`/blobs/sha256/../../secret/credentials.json`);
    expect(res.status).toBe(404);
  });

  it('404 for a well-formed key that is not in the bucket', async () => {
    const { res } = await send(`/blobs/sha256/${'0'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(res.headers.get('Cache-Control')).toBe('no-store');
  });

  it('404 for HEAD of a missing object too', async () => {
    const { res } = await send(`/manifests/sha256/${'1'.repeat(64)}.json`, { method: 'HEAD' });
    expect(res.status).toBe(404);
  });
});

describe('methods', () => {
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    it(`${method} is 405 with Allow`, async () => {
      const { res } = await send(blob.path, { method, body: method === 'DELETE' ? undefined : 'x' });
      expect(res.status).toBe(405);
      expect(res.headers.get('Allow')).toBe('GET, HEAD, OPTIONS');
    });
  }

  it('a PUT leaves the object as it was', async () => {
    await send(blob.path, { method: 'PUT', body: 'overwritten' });
    const { body } = await send(blob.path);
    expect(body).toEqual(blob.bytes);
  });
});

describe('CORS', () => {
  it('answers a preflight with 204 and what a range loader needs', async () => {
    const { res } = await send(blob.path, {
      method: 'OPTIONS',
      headers: {
        Origin: 'https://app.example',
        'Access-Control-Request-Method': 'GET',
        'Access-Control-Request-Headers': 'range, if-none-match',
      },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get('Access-Control-Allow-Origin')).toBe('*');
    expect(res.headers.get('Access-Control-Allow-Methods')).toBe('GET,HEAD,OPTIONS');
    const allowed = res.headers.get('Access-Control-Allow-Headers')!.split(',');
    expect(allowed).toEqual(['Range', 'If-None-Match', 'If-Match', 'If-Range', 'If-Modified-Since', 'Authorization']);
    expect(res.headers.get('Access-Control-Max-Age')).toBe('86400');
  });

  it('exposes the range and validator headers on GET', async () => {
    const { res } = await send(blob.path, { headers: { Origin: 'https://app.example', Range: 'bytes=0-3' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('Access-Control-Allow-Origin')).toBe('*');
    expect(res.headers.get('Access-Control-Expose-Headers')!.split(',')).toEqual([
      'Content-Range',
      'Content-Length',
      'ETag',
      'Accept-Ranges',
    ]);
  });

  it('a 404 is readable cross-origin too', async () => {
    const { res } = await send('/nope', { headers: { Origin: 'https://app.example' } });
    expect(res.status).toBe(404);
    expect(res.headers.get('Access-Control-Allow-Origin')).toBe('*');
  });
});
