import { beforeAll, describe, expect, it } from 'vitest';
import { patternBytes, seedBlob, seedTag, send, type SeededBlob } from './helpers.ts';

let blob: SeededBlob;
let lastModified: string;
const PAST = 'Sat, 01 Jan 2000 00:00:00 GMT';
const FUTURE = 'Fri, 01 Jan 2100 00:00:00 GMT';

beforeAll(async () => {
  blob = await seedBlob(patternBytes(500, 5));
  lastModified = (await send(blob.path, { method: 'HEAD' })).res.headers.get('Last-Modified')!;
});

function get(headers: Record<string, string>) {
  return send(blob.path, { headers });
}

describe('If-None-Match (weak comparison)', () => {
  for (const [what, value] of [
    ['the current ETag', () => blob.etag],
    ['its weak form', () => `W/${blob.etag}`],
    ['a list holding it', () => `"other", ${blob.etag}`],
    ['*', () => '*'],
  ] as const) {
    it(`${what} → 304 keeping ETag and Cache-Control`, async () => {
      const { res, body } = await get({ 'If-None-Match': value() });
      expect(res.status).toBe(304);
      expect(body.length).toBe(0);
      expect(res.headers.get('ETag')).toBe(blob.etag);
      expect(res.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
    });
  }

  for (const value of ['"other"', 'W/"other"', 'garbage', '"unterminated', '']) {
    it(`${JSON.stringify(value)} → 200`, async () => {
      const { res, body } = await get({ 'If-None-Match': value });
      expect(res.status).toBe(200);
      expect(body).toEqual(blob.bytes);
    });
  }

  it('wins over Range', async () => {
    const { res } = await get({ 'If-None-Match': blob.etag, Range: 'bytes=0-9' });
    expect(res.status).toBe(304);
  });

  it('on a tag compares with R2’s entity-tag', async () => {
    const tag = await seedTag('m', 'inm', blob.hex);
    expect((await send(tag.path, { headers: { 'If-None-Match': tag.httpEtag } })).res.status).toBe(304);
    expect((await send(tag.path, { headers: { 'If-None-Match': blob.etag } })).res.status).toBe(200);
  });
});

describe('If-Match (strong comparison)', () => {
  it('the current ETag or * → 200', async () => {
    expect((await get({ 'If-Match': blob.etag })).res.status).toBe(200);
    expect((await get({ 'If-Match': `"x", ${blob.etag}` })).res.status).toBe(200);
    expect((await get({ 'If-Match': '*' })).res.status).toBe(200);
  });

  for (const value of ['"other"', 'W/"x"', 'garbage', '']) {
    it(`${JSON.stringify(value)} → 412`, async () => {
      const { res, body } = await get({ 'If-Match': value });
      expect(res.status).toBe(412);
      expect(body.length).toBe(0);
    });
  }

  it('a weak copy of the current ETag fails strong comparison → 412', async () => {
    expect((await get({ 'If-Match': `W/${blob.etag}` })).res.status).toBe(412);
  });

  it('is checked before Range', async () => {
    expect((await get({ 'If-Match': '"other"', Range: 'bytes=0-1' })).res.status).toBe(412);
  });
});

describe('If-Modified-Since and If-Unmodified-Since', () => {
  it('not modified since a later date → 304; since an earlier one → 200', async () => {
    expect((await get({ 'If-Modified-Since': FUTURE })).res.status).toBe(304);
    expect((await get({ 'If-Modified-Since': lastModified })).res.status).toBe(304);
    expect((await get({ 'If-Modified-Since': PAST })).res.status).toBe(200);
  });

  it('is ignored when If-None-Match is present', async () => {
    expect((await get({ 'If-None-Match': '"other"', 'If-Modified-Since': FUTURE })).res.status).toBe(200);
  });

  for (const value of ['garbage', '1', 'Mon, 99 Foo 2000 99:99:99 GMT', '2100-01-01']) {
    it(`an invalid date ${JSON.stringify(value)} is ignored → 200`, async () => {
      expect((await get({ 'If-Modified-Since': value })).res.status).toBe(200);
      expect((await get({ 'If-Unmodified-Since': value })).res.status).toBe(200);
    });
  }

  it('If-Unmodified-Since an earlier date → 412, a later one → 200', async () => {
    expect((await get({ 'If-Unmodified-Since': PAST })).res.status).toBe(412);
    expect((await get({ 'If-Unmodified-Since': FUTURE })).res.status).toBe(200);
  });
});

describe('If-Range (strong)', () => {
  it('the current ETag → the range applies (206)', async () => {
    const { res, body } = await get({ 'If-Range': blob.etag, Range: 'bytes=10-19' });
    expect(res.status).toBe(206);
    expect(body).toEqual(blob.bytes.slice(10, 20));
  });

  it('the exact Last-Modified date → 206', async () => {
    expect((await get({ 'If-Range': lastModified, Range: 'bytes=10-19' })).res.status).toBe(206);
  });

  for (const [what, value] of [
    ['another ETag', () => '"other"'],
    ['a weak ETag, even the current one', () => `W/${blob.etag}`],
    ['another date', () => PAST],
    ['garbage', () => 'garbage'],
  ] as const) {
    it(`${what} → 200 with the whole body`, async () => {
      const { res, body } = await get({ 'If-Range': value(), Range: 'bytes=10-19' });
      expect(res.status).toBe(200);
      expect(res.headers.get('Content-Range')).toBeNull();
      expect(body).toEqual(blob.bytes);
    });
  }

  it('a mismatch also voids an unsatisfiable range (200, not 416)', async () => {
    expect((await get({ 'If-Range': '"other"', Range: 'bytes=9000-' })).res.status).toBe(200);
  });
});

describe('garbage in request headers never yields a 5xx', () => {
  const garbage = [
    '',
    ' ',
    ',,,',
    '*, *',
    'W/',
    'W/"',
    '"\u0001"',
    'bytes=0-1',
    'Thu, 31 Feb 2022 25:61:61 GMT',
    'Sun Nov  6 08:49:37 1994',
    'Sunday, 06-Nov-94 08:49:37 GMT',
    '-1',
    'NaN',
    '9'.repeat(300),
    '"a", W/"b", garbage, *',
    'bytes=-',
    'bytes=0-0,-1,5-',
  ];
  const names = ['Range', 'If-Range', 'If-Match', 'If-None-Match', 'If-Modified-Since', 'If-Unmodified-Since'];
  it(`${garbage.length} values × ${names.length} headers, alone and with a Range`, async () => {
    for (const name of names) {
      for (const value of garbage) {
        for (const extra of [{}, { Range: 'bytes=1-2' }] as Record<string, string>[]) {
          const { res } = await get({ ...extra, [name]: value });
          expect([200, 206, 304, 412, 416], `${name}: ${JSON.stringify(value)}`).toContain(res.status);
        }
      }
    }
  });
});
