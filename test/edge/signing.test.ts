import { describe, expect, it } from 'vitest';
import { signPath, signUrl, verifySignature } from '../../common/signed-url.ts';
import { ORIGIN, patternBytes, seedBlob, send, type SeededBlob } from './helpers.ts';

const SECRET = 'test-signing-secret';
const TOKEN = 'test-access-token';
const PRIVATE = { SIGNING_SECRET: SECRET, ACCESS_TOKEN: TOKEN };

async function signedPath(blob: SeededBlob, ttlSeconds: number, now?: number): Promise<string> {
  const url = new URL(await signUrl({ origin: ORIGIN, key: blob.key, ttlSeconds, secret: SECRET, now }));
  return url.pathname + url.search;
}

describe('signed URLs and bearer tokens (SIGNING_SECRET set)', () => {
  it('a valid signed URL → 200, marked private for shared caches', async () => {
    const blob = await seedBlob(patternBytes(100, 21));
    const { res, body } = await send(await signedPath(blob, 300), {}, PRIVATE);
    expect(res.status).toBe(200);
    expect(res.headers.get('Cache-Control')).toBe('private, max-age=31536000, immutable');
    expect(body).toEqual(blob.bytes);
    const part = await send(await signedPath(blob, 300), { headers: { Range: 'bytes=5-9' } }, PRIVATE);
    expect(part.res.status).toBe(206);
    expect(part.body).toEqual(blob.bytes.slice(5, 10));
  });

  it('no credentials → 401 with WWW-Authenticate', async () => {
    const blob = await seedBlob(patternBytes(10, 22));
    const { res, body } = await send(blob.path, {}, PRIVATE);
    expect(res.status).toBe(401);
    expect(res.headers.get('WWW-Authenticate')).toBe('Bearer');
    expect(body).not.toEqual(blob.bytes);
  });

  it('an expired signature → 403', async () => {
    const blob = await seedBlob(patternBytes(10, 23));
    const path = await signedPath(blob, 60, Date.now() - 3600_000);
    expect((await send(path, {}, PRIVATE)).res.status).toBe(403);
  });

  it('tampered signatures, expiries and paths → 403', async () => {
    const blob = await seedBlob(patternBytes(10, 24));
    const other = await seedBlob(patternBytes(10, 25));
    const url = new URL(await signedPath(blob, 300), ORIGIN);
    const sig = url.searchParams.get('sig')!;
    const exp = url.searchParams.get('exp')!;
    const flipped = (sig[0] === '0' ? '1' : '0') + sig.slice(1);
    const tampered = [
      `${blob.path}?exp=${exp}&sig=${flipped}`,
      `${blob.path}?exp=${Number(exp) + 3600}&sig=${sig}`,
      `${other.path}?exp=${exp}&sig=${sig}`, // a signature for one key opens no other
      `${blob.path}?exp=${exp}&sig=${sig.slice(0, 62)}`,
      `${blob.path}?exp=${exp}&sig=${sig.toUpperCase()}zz`,
      `${blob.path}?exp=${exp}`,
      `${blob.path}?sig=${sig}`,
      `${blob.path}?exp=-1&sig=${sig}`,
      `${blob.path}?exp=1e99&sig=${sig}`,
    ];
    for (const path of tampered) {
      const { res } = await send(path, {}, PRIVATE);
      expect(res.status, path).toBe(403);
    }
  });

  it('the right bearer token → 200; a wrong or malformed one → 403', async () => {
    const blob = await seedBlob(patternBytes(10, 26));
    expect((await send(blob.path, { headers: { Authorization: `Bearer ${TOKEN}` } }, PRIVATE)).res.status).toBe(200);
    for (const authorization of [`Bearer ${TOKEN}x`, 'Bearer ', `Basic ${btoa(`u:${TOKEN}`)}`, TOKEN]) {
      expect((await send(blob.path, { headers: { Authorization: authorization } }, PRIVATE)).res.status).toBe(403);
    }
  });

  it('bearer tokens are refused when no ACCESS_TOKEN is configured', async () => {
    const blob = await seedBlob(patternBytes(10, 27));
    const onlySecret = { SIGNING_SECRET: SECRET, ACCESS_TOKEN: undefined };
    expect((await send(blob.path, { headers: { Authorization: 'Bearer ' } }, onlySecret)).res.status).toBe(403);
    expect((await send(blob.path, { headers: { Authorization: 'Bearer undefined' } }, onlySecret)).res.status).toBe(403);
  });

  it('CORS preflight needs no credentials (browsers send none)', async () => {
    const blob = await seedBlob(patternBytes(10, 28));
    const { res } = await send(blob.path, { method: 'OPTIONS', headers: { Origin: 'https://a.example', 'Access-Control-Request-Method': 'GET' } }, PRIVATE);
    expect(res.status).toBe(204);
  });

  it('without SIGNING_SECRET everything is public', async () => {
    const blob = await seedBlob(patternBytes(10, 29));
    const { res } = await send(blob.path, {}, { SIGNING_SECRET: undefined });
    expect(res.status).toBe(200);
    expect(res.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
  });
});

describe('common/signed-url', () => {
  it('signs path and expiry as lower-case hex HMAC-SHA256', async () => {
    const sig = await signPath('/blobs/sha256/x', 1700000000, 'k');
    expect(sig).toMatch(/^[0-9a-f]{64}$/);
    expect(await signPath('/blobs/sha256/x', 1700000001, 'k')).not.toBe(sig);
    expect(await signPath('/blobs/sha256/y', 1700000000, 'k')).not.toBe(sig);
    expect(await signPath('/blobs/sha256/x', 1700000000, 'k2')).not.toBe(sig);
  });

  it('verifies what it signed until the expiry, then reports expired', async () => {
    const exp = 2_000_000_000;
    const sig = await signPath('/p', exp, 'k');
    expect(await verifySignature('/p', String(exp), sig, 'k', exp * 1000)).toBe('valid');
    expect(await verifySignature('/p', String(exp), sig, 'k', exp * 1000 + 1)).toBe('expired');
    expect(await verifySignature('/p', String(exp), sig, 'wrong', 0)).toBe('invalid');
    expect(await verifySignature('/p', null, null, 'k', 0)).toBe('missing');
  });
});
