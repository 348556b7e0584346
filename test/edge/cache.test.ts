import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { ORIGIN, patternBytes, seedBlob, seedManifest, seedTag, send } from './helpers.ts';

describe('edge cache', () => {
  it('a full GET of a blob is cached; later ranges, full GETs and 304s come from the cache', async () => {
    const blob = await seedBlob(patternBytes(4096, 9));
    const first = await send(blob.path);
    expect(first.res.status).toBe(200);

    const stored = await caches.default.match(`${ORIGIN}${blob.path}`);
    expect(stored?.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
    await stored?.body?.cancel();

    // With the object gone from R2, only the cache can answer.
    await env.ARTIFACTS.delete(blob.key);
    const part = await send(blob.path, { headers: { Range: 'bytes=1000-1999' } });
    expect(part.res.status).toBe(206);
    expect(part.res.headers.get('Content-Range')).toBe('bytes 1000-1999/4096');
    expect(part.res.headers.get('Content-Length')).toBe('1000');
    expect(part.body).toEqual(blob.bytes.slice(1000, 2000));

    const suffix = await send(blob.path, { headers: { Range: 'bytes=-10' } });
    expect(suffix.res.status).toBe(206);
    expect(suffix.body).toEqual(blob.bytes.slice(4086));

    const whole = await send(blob.path);
    expect(whole.res.status).toBe(200);
    expect(whole.res.headers.get('ETag')).toBe(blob.etag);
    expect(whole.body).toEqual(blob.bytes);

    const unsatisfiable = await send(blob.path, { headers: { Range: 'bytes=4096-' } });
    expect(unsatisfiable.res.status).toBe(416);
    expect(unsatisfiable.res.headers.get('Content-Range')).toBe('bytes */4096');

    expect((await send(blob.path, { headers: { 'If-None-Match': blob.etag } })).res.status).toBe(304);
    expect((await send(blob.path, { headers: { 'If-Range': '"other"', Range: 'bytes=0-0' } })).body).toEqual(blob.bytes);

    // HEAD answers from R2 alone, so it sees the deletion.
    expect((await send(blob.path, { method: 'HEAD' })).res.status).toBe(404);
  });

  it('cached and uncached answers carry the same headers', async () => {
    const manifest = await seedManifest('{"cache":"same-headers"}');
    const miss = await send(manifest.path);
    const hit = await send(manifest.path);
    expect(Object.fromEntries(hit.res.headers)).toEqual(Object.fromEntries(miss.res.headers));
  });

  it('a ranged read does not fill the cache (only full 200s do)', async () => {
    const blob = await seedBlob(patternBytes(256, 11));
    expect((await send(blob.path, { headers: { Range: 'bytes=0-9' } })).res.status).toBe(206);
    expect(await caches.default.match(`${ORIGIN}${blob.path}`)).toBeUndefined();
    await env.ARTIFACTS.delete(blob.key);
    expect((await send(blob.path, { headers: { Range: 'bytes=0-9' } })).res.status).toBe(404);
  });

  it('tags are never put in the long-lived cache', async () => {
    const tag = await seedTag('m', 'mutable', 'a'.repeat(64));
    expect((await send(tag.path)).res.status).toBe(200);
    expect(await caches.default.match(`${ORIGIN}${tag.path}`)).toBeUndefined();
    await env.ARTIFACTS.put(tag.key, JSON.stringify({ manifest: `sha256:${'b'.repeat(64)}` }));
    const { body } = await send(tag.path);
    expect(JSON.parse(new TextDecoder().decode(body)).manifest).toBe(`sha256:${'b'.repeat(64)}`);
  });
});
