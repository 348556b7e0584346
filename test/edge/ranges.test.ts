import { beforeAll, describe, expect, it } from 'vitest';
import { headerMap, patternBytes, seedBlob, seedManifest, seedTag, send, type SeededBlob } from './helpers.ts';

const SIZE = 1000;
let blob: SeededBlob;
beforeAll(async () => {
  blob = await seedBlob(patternBytes(SIZE, 3));
});

async function ranged(range: string) {
  return send(blob.path, { headers: { Range: range } });
}

describe('single byte ranges (RFC 9110 §14)', () => {
  const cases: [string, number, number][] = [
    ['bytes=0-99', 0, 99],
    ['bytes=900-', 900, 999],
    ['bytes=-100', 900, 999],
    ['bytes=-5000', 0, 999], // a suffix longer than the object selects all of it
    ['bytes=990-2000', 990, 999], // last-pos clamped to the end
    ['bytes=999-999', 999, 999],
    ['bytes=0-0', 0, 0],
    ['BYTES=10-19', 10, 19], // the unit is case-insensitive
    ['bytes= 10-19 ', 10, 19],
    ['bytes=10-19,', 10, 19], // empty list elements are skipped
  ];
  for (const [range, start, end] of cases) {
    it(`${range} → 206 bytes ${start}-${end}`, async () => {
      const { res, body } = await ranged(range);
      expect(res.status).toBe(206);
      expect(res.headers.get('Content-Range')).toBe(`bytes ${start}-${end}/${SIZE}`);
      expect(res.headers.get('Content-Length')).toBe(String(end - start + 1));
      expect(res.headers.get('ETag')).toBe(blob.etag);
      expect(res.headers.get('Accept-Ranges')).toBe('bytes');
      expect(body).toEqual(blob.bytes.slice(start, end + 1));
    });
  }

  for (const range of ['bytes=1000-', 'bytes=1000-1001', 'bytes=5000-6000', 'bytes=-0']) {
    it(`${range} → 416 with Content-Range: bytes */${SIZE}`, async () => {
      const { res, body } = await ranged(range);
      expect(res.status).toBe(416);
      expect(res.headers.get('Content-Range')).toBe(`bytes */${SIZE}`);
      expect(body.length).toBe(0);
    });
  }

  it('an empty object has no satisfiable range', async () => {
    const empty = await seedBlob(new Uint8Array(0));
    const { res } = await send(empty.path, { headers: { Range: 'bytes=0-' } });
    expect(res.status).toBe(416);
    expect(res.headers.get('Content-Range')).toBe('bytes */0');
    const whole = await send(empty.path);
    expect(whole.res.status).toBe(200);
    expect(whole.res.headers.get('Content-Length')).toBe('0');
  });
});

describe('Range headers answered with the whole body (200)', () => {
  const whole = [
    'bytes=0-1,5-6', // several ranges: our documented choice
    'bytes=0-1, 1000-2000',
    'bytes=5-2', // last-pos < first-pos: an invalid spec voids the header
    'bytes=abc',
    'bytes=',
    'bytes=-',
    'bytes=0-1-2',
    'bytes=--1',
    'bytes=0x10-20',
    'bytes=1.5-2',
    'items=0-1',
    'bytes 0-1',
    '0-1',
    `bytes=${'9'.repeat(400)}-`,
  ];
  for (const range of whole) {
    it(`${JSON.stringify(range.slice(0, 40))} → 200 whole`, async () => {
      const { res, body } = await ranged(range);
      expect(res.status).toBe(200);
      expect(res.headers.get('Content-Range')).toBeNull();
      expect(res.headers.get('Content-Length')).toBe(String(SIZE));
      expect(body).toEqual(blob.bytes);
    });
  }
});

describe('headers by key shape', () => {
  it('blobs: octet-stream, immutable, strong ETag = digest', async () => {
    const { res } = await send(blob.path);
    expect(res.headers.get('Content-Type')).toBe('application/octet-stream');
    expect(res.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
    expect(res.headers.get('ETag')).toBe(`"${blob.hex}"`);
    expect(res.headers.get('Content-Length')).toBe(String(SIZE));
  });

  it('manifests: JSON, immutable, ETag = fingerprint', async () => {
    const manifest = await seedManifest('{"name":"m","schema":"fuseload.artifact/1"}');
    const { res, body } = await send(manifest.path);
    expect(res.status).toBe(200);
    expect(res.headers.get('Content-Type')).toBe('application/json');
    expect(res.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
    expect(res.headers.get('ETag')).toBe(manifest.etag);
    expect(body).toEqual(manifest.bytes);
  });

  it('tags: JSON, short TTL with stale-while-revalidate, R2 entity-tag, ranges too', async () => {
    const tag = await seedTag('sd-mini', 'latest', blob.hex);
    const { res, body } = await send(tag.path);
    expect(res.status).toBe(200);
    expect(res.headers.get('Content-Type')).toBe('application/json');
    expect(res.headers.get('Cache-Control')).toBe('public, max-age=60, stale-while-revalidate=600');
    expect(res.headers.get('ETag')).toBe(tag.httpEtag);
    expect(JSON.parse(new TextDecoder().decode(body))).toEqual({ manifest: `sha256:${blob.hex}` });
    const part = await send(tag.path, { headers: { Range: 'bytes=0-0' } });
    expect(part.res.status).toBe(206);
    expect(new TextDecoder().decode(part.body)).toBe('{');
  });
});

describe('HEAD is GET minus the body', () => {
  it('for a blob, a manifest and a tag', async () => {
    const manifest = await seedManifest('{"head":true}');
    const tag = await seedTag('m', 'head', manifest.hex);
    for (const path of [blob.path, manifest.path, tag.path]) {
      const get = await send(path);
      const head = await send(path, { method: 'HEAD' });
      expect(head.res.status).toBe(200);
      expect(head.body.length).toBe(0);
      expect(headerMap(head.res)).toEqual(headerMap(get.res));
      expect(head.res.headers.get('Content-Length')).toBe(String(get.body.length));
    }
  });

  it('for a 304', async () => {
    const init = { headers: { 'If-None-Match': blob.etag } };
    const get = await send(blob.path, init);
    const head = await send(blob.path, { ...init, method: 'HEAD' });
    expect(get.res.status).toBe(304);
    expect(head.res.status).toBe(304);
    expect(headerMap(head.res)).toEqual(headerMap(get.res));
  });

  it('ignores Range, which is defined for GET only', async () => {
    const { res, body } = await send(blob.path, { method: 'HEAD', headers: { Range: 'bytes=0-9' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('Content-Length')).toBe(String(SIZE));
    expect(body.length).toBe(0);
  });
});
