import type { ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { sha256 } from '../../common/digest.ts';
import { isFuseloadError } from '../../common/errors.ts';
import { fetchWithDeadline, READ_LIMITS, readBounded, streamChunks } from '../../common/loader/bounded-read.ts';
import { BYOB_STALL_MS, downloadAsBlob, downloadBlob, memoryBlobSink } from '../../common/loader/download.ts';
import { startHttpOrigin, startStalledOrigin, type TestServer } from '../support/stalled-origin.ts';

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
const track = <T extends TestServer>(s: T) => (servers.push(s), s);

async function failure(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await promise;
  } catch (e) {
    if (!isFuseloadError(e)) throw e;
    expect(e.message).not.toContain('\n');
    return { code: e.code, message: e.message };
  }
  throw new Error('expected a failure');
}

/**
 * An origin serving `bytes` with a strong ETag: the first request (no Range) gets a 200 that
 * `firstBody` writes and leaves unfinished; a Range request gets the rest as a 206. `ranges` records
 * each request's Range header.
 */
async function resumableOrigin(bytes: Uint8Array, digest: string, firstBody: (res: ServerResponse) => void) {
  const ranges: (string | undefined)[] = [];
  const origin = track(
    await startHttpOrigin((req, res) => {
      ranges.push(req.headers.range);
      if (!req.headers.range) {
        res.writeHead(200, { 'Content-Length': bytes.length, ETag: `"${digest}"` });
        return firstBody(res);
      }
      const start = Number(/bytes=(\d+)-/.exec(req.headers.range)![1]);
      res.writeHead(206, { 'Content-Length': bytes.length - start, 'Content-Range': `bytes ${start}-${bytes.length - 1}/${bytes.length}` });
      res.end(bytes.subarray(start));
    }),
  );
  return { origin, ranges };
}

/** A body that counts what it produced: `chunk` bytes per pull, `total` at most (Infinity: endless). */
function countingBody(chunk: number, total = Number.POSITIVE_INFINITY) {
  const state = { produced: 0 };
  const body = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (state.produced >= total) return controller.close();
        const n = Math.min(chunk, total - state.produced);
        state.produced += n;
        controller.enqueue(new Uint8Array(n).fill(7));
      },
    },
    { highWaterMark: 0 },
  );
  return { body, state };
}

describe('origin deadlines', () => {
  it('a stalled origin (accepts, never answers) is given up after the headers deadline, in one line; the next request succeeds', async () => {
    const stalled = track(await startStalledOrigin());
    const err = await failure(fetchWithDeadline(fetch, `${stalled.url}/tags/m/latest.json`, {}, { headersMs: 300 }));
    expect(err.code).toBe('network');
    expect(err.message).toBe(`${stalled.url}/tags/m/latest.json: no response within 300 ms — is the origin up? (check --origin / FUSELOAD_ORIGIN)`);

    const healthy = track(await startHttpOrigin((_, res) => res.end('{"manifest":"x"}')));
    const res = await fetchWithDeadline(fetch, `${healthy.url}/tags/m/latest.json`, {}, { headersMs: 300 });
    expect(await res.text()).toBe('{"manifest":"x"}');
  });

  it('downloadBlob does not retry a stalled origin five times: the headers deadline is final', async () => {
    const stalled = track(await startStalledOrigin());
    const bytes = new Uint8Array(100).fill(1);
    const err = await failure(
      downloadBlob({ url: `${stalled.url}/blobs/sha256/${'ab'.repeat(32)}`, digest: await sha256(bytes), size: 100, fetch, headersTimeoutMs: 300, backoffMs: 10 }),
    );
    expect(err.code).toBe('network');
    expect(err.message).toMatch(/\/blobs\/sha256\/(ab)+: no response within 300 ms — is the origin up\?/);
    expect(stalled.connections).toBe(1);
  });

  it('a body that goes silent mid-way is resumed with a Range request after the idle deadline', async () => {
    const bytes = new Uint8Array(64 * 1024).map((_, i) => i & 0xff);
    const digest = await sha256(bytes);
    // The first response goes silent after 1000 bytes, its connection open.
    const { origin, ranges } = await resumableOrigin(bytes, digest, (res) => void res.write(bytes.subarray(0, 1000)));
    const result = await downloadBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, idleTimeoutMs: 200, backoffMs: 10 });
    expect(result.bytes).toEqual(bytes);
    expect(result.rangeRequests).toBe(1);
    expect(ranges).toEqual([undefined, 'bytes=1000-']);
  });

  it('a BYOB read that brings nothing is given up after BYOB_STALL_MS, long before the idle deadline, and the download resumes from its bytes', async () => {
    // Node's fetch bodies are byte streams, as Chromium's are: downloadBlob reads them BYOB.
    expect(() => new Response('x').body!.getReader({ mode: 'byob' })).not.toThrow();
    const bytes = new Uint8Array(64 * 1024).map((_, i) => (i * 7) & 0xff);
    const digest = await sha256(bytes);
    const { origin, ranges } = await resumableOrigin(bytes, digest, (res) => void res.write(bytes.subarray(0, 1000)));
    // With a minute of idle deadline, only the stall (3 s) gets this done inside the test's 20 s.
    const result = await downloadBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, idleTimeoutMs: 60_000, backoffMs: 10 });
    expect(BYOB_STALL_MS).toBeLessThan(20_000);
    expect(result.bytes).toEqual(bytes);
    expect(result.rangeRequests).toBe(1);
    expect(ranges).toEqual([undefined, 'bytes=1000-']);
  }, 20_000);

  it('the caller’s abort stops a silent body at once', async () => {
    const origin = track(await startHttpOrigin((_, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).flushHeaders()));
    const ctrl = new AbortController();
    const res = await fetchWithDeadline(fetch, `${origin.url}/tags/m/t.json`, {}, { signal: ctrl.signal });
    setTimeout(() => ctrl.abort(), 50);
    const err = await failure(readBounded(res, 1024, 'tags/m/t.json', { signal: ctrl.signal }));
    expect(err.code).toBe('aborted');
  });

  it('never shows credentials or a signature from the URL', async () => {
    const stalled = track(await startStalledOrigin());
    const url = `http://user:hunter2@127.0.0.1:${stalled.port}/tags/m/latest.json?sig=s3cr3t`;
    const err = await failure(fetchWithDeadline(fetch, url, {}, { headersMs: 100 }).catch((e) => Promise.reject(e)));
    expect(err.message).not.toMatch(/hunter2|user:|s3cr3t/);
  });
});

describe('size caps: one line, bounded memory', () => {
  it('an oversized tag is refused from its Content-Length, before the body is read', async () => {
    const { body, state } = countingBody(1024, 1024 * 1024);
    const res = new Response(body, { headers: { 'Content-Length': String(1024 * 1024) } });
    const err = await failure(readBounded(res, READ_LIMITS.tagBytes, 'https://origin/tags/m/latest.json'));
    expect(err).toEqual({ code: 'too-large', message: 'https://origin/tags/m/latest.json: 1048576 bytes (Content-Length), over the 4 KiB cap for this file' });
    expect(state.produced).toBe(0);
  });

  it('an endless manifest without Content-Length is cut off just past the cap', async () => {
    const { body, state } = countingBody(64 * 1024);
    const err = await failure(readBounded(new Response(body), READ_LIMITS.manifestBytes, 'manifests/sha256/ab.json'));
    expect(err.message).toBe(`manifests/sha256/ab.json: more than ${READ_LIMITS.manifestBytes} bytes, over the 16 MiB cap for this file`);
    expect(state.produced).toBeLessThanOrEqual(READ_LIMITS.manifestBytes + 2 * 64 * 1024);
  });

  it('a LoRA body over a configured cap is refused; one under it is returned whole', async () => {
    const over = countingBody(4096, 10_000);
    const err = await failure(readBounded(new Response(over.body), 8192, 'blobs/sha256/lora'));
    expect(err.message).toBe('blobs/sha256/lora: more than 8192 bytes, over the 8 KiB cap for this file');
    const under = countingBody(4096, 8192);
    const bytes = await readBounded(new Response(under.body, { headers: { 'Content-Length': '8192' } }), 8192, 'blobs/sha256/lora');
    expect(bytes.byteLength).toBe(8192);
    expect(bytes.every((b) => b === 7)).toBe(true);
  });

  it('a Content-Length that lies low costs no more than the cap', async () => {
    const { body } = countingBody(1000, 5000);
    const bytes = await readBounded(new Response(body, { headers: { 'Content-Length': '10' } }), 6000, 'x');
    expect(bytes.byteLength).toBe(5000);
  });

  it('a shard larger than the per-blob cap is refused before anything is fetched or allocated', async () => {
    let fetched = 0;
    const counting: typeof fetch = async (...args) => (fetched++, fetch(...args));
    const err = await failure(
      downloadBlob({ url: 'https://origin/blobs/sha256/ab', digest: `sha256:${'ab'.repeat(32)}`, size: 3 * 1024 ** 3, fetch: counting }),
    );
    expect(err).toEqual({ code: 'too-large', message: 'https://origin/blobs/sha256/ab: the manifest names 3221225472 bytes, over the 2 GiB per-blob cap' });
    expect(fetched).toBe(0);
    const small = await failure(downloadBlob({ url: 'https://origin/b', digest: `sha256:${'ab'.repeat(32)}`, size: 2048, fetch: counting, maxBlobBytes: 1024 }));
    expect(small.message).toMatch(/over the 1 KiB per-blob cap/);
  });

  it('a shard whose Content-Length disagrees with the manifest is refused before its body is read', async () => {
    const { body, state } = countingBody(1024, 1024 * 1024);
    const fake: typeof fetch = async () => new Response(body, { headers: { 'Content-Length': String(1024 * 1024) } });
    const err = await failure(downloadBlob({ url: 'https://origin/blobs/sha256/ab', digest: `sha256:${'ab'.repeat(32)}`, size: 100, fetch: fake }));
    expect(err).toEqual({ code: 'digest-mismatch', message: 'https://origin/blobs/sha256/ab: Content-Length 1048576, but the manifest names 100 bytes' });
    expect(state.produced).toBe(0);
  });

  it('a shard body longer than the manifest says stops right after its size', async () => {
    const { body, state } = countingBody(1000);
    const fake: typeof fetch = async () => new Response(body);
    const err = await failure(downloadBlob({ url: 'https://origin/b', digest: `sha256:${'ab'.repeat(32)}`, size: 5000, fetch: fake }));
    expect(err.message).toBe('https://origin/b: more than the 5000 bytes the manifest names');
    expect(state.produced).toBeLessThanOrEqual(7000);
  });

  it('streamChunks releases the connection when the consumer stops early', async () => {
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      pull: (c) => c.enqueue(new Uint8Array(10)),
      cancel: () => void (cancelled = true),
    });
    for await (const _ of streamChunks(body, 'x')) break;
    expect(cancelled).toBe(true);
  });
});

describe('Content-Length of an encoded body', () => {
  it('is not held against the decoded size (fetch decodes gzip and br)', async () => {
    const bytes = new Uint8Array(5000).fill(3);
    const fake: typeof fetch = async () => new Response(bytes, { headers: { 'Content-Length': '40', 'Content-Encoding': 'gzip' } });
    const result = await downloadBlob({ url: 'https://origin/b', digest: await sha256(bytes), size: 5000, fetch: fake });
    expect(result.bytes).toEqual(bytes);
  });
});

describe('downloadAsBlob (shards for an engine that reads Blobs)', () => {
  // Over the 4 MiB staging buffer, and not a multiple of it.
  const bytes = new Uint8Array(9 * 1024 * 1024 + 12345);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;

  it('gathers a body resumed mid-staging into a Blob of exactly its bytes', async () => {
    const digest = await sha256(bytes);
    const cut = 5 * 1024 * 1024 + 777;
    // The first response is dropped mid-body.
    const { origin, ranges } = await resumableOrigin(bytes, digest, (res) => void res.write(bytes.subarray(0, cut), () => res.destroy()));
    const result = await downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, backoffMs: 10 });
    expect(ranges[0]).toBeUndefined();
    expect(ranges[1]).toMatch(/^bytes=\d+-$/);
    expect(result.rangeRequests).toBe(1);
    expect(result.blob.size).toBe(bytes.length);
    expect(Buffer.from(await result.blob.arrayBuffer()).equals(bytes)).toBe(true);
  });

  it('a body that hashes wrong starts over from zero once; a deferred check rejects instead', async () => {
    const digest = await sha256(bytes);
    const bad = bytes.slice();
    bad[bytes.length - 1] ^= 0xff;
    let served = 0;
    const origin = track(
      await startHttpOrigin((_req, res) => {
        res.writeHead(200, { 'Content-Length': bytes.length });
        res.end(served++ === 0 ? bad : bytes);
      }),
    );
    const hashed: number[] = [];
    const hashBlob = async (blob: Blob) => (hashed.push(blob.size), sha256(new Uint8Array(await blob.arrayBuffer())));
    const result = await downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, backoffMs: 10, hashBlob });
    expect(served).toBe(2);
    expect(hashed).toEqual([bytes.length, bytes.length]);
    expect(Buffer.from(await result.blob.arrayBuffer()).equals(bytes)).toBe(true);

    served = 0;
    const deferred = await downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, backoffMs: 10, deferVerify: true });
    const err = await failure(deferred.verified);
    expect(err.code).toBe('digest-mismatch');
    expect(served).toBe(1);
  });

  it('sends the request while its sink is made; a sink that cannot be made fails the download, and the sink is released', async () => {
    const digest = await sha256(bytes);
    const order: string[] = [];
    const origin = track(
      await startHttpOrigin((_req, res) => {
        order.push('request');
        res.writeHead(200, { 'Content-Length': bytes.length });
        res.end(bytes);
      }),
    );
    let made!: () => void;
    const gate = new Promise<void>((resolve) => (made = resolve));
    const sink = async (size: number) => {
      await gate;
      order.push('sink');
      return memoryBlobSink(size);
    };
    const running = downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, backoffMs: 10, sink });
    await expect.poll(() => order).toEqual(['request']);
    made();
    const result = await running;
    expect(order).toEqual(['request', 'sink']);
    expect(Buffer.from(await result.blob.arrayBuffer()).equals(bytes)).toBe(true);

    let released = 0;
    const broken = async () => {
      throw new Error('no room for a file');
    };
    const err = await failure(downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, retries: 0, sink: broken }));
    expect(err.message).toContain('no room for a file');
    const releasing = async (size: number) => ({ ...memoryBlobSink(size), release: async () => void released++, write: () => Promise.reject(new Error('disk gone')) });
    const gone = await failure(downloadAsBlob({ url: `${origin.url}/blobs/x`, digest, size: bytes.length, fetch, retries: 0, sink: releasing }));
    expect(gone.message).toContain('disk gone');
    expect(released).toBe(1);
  });
});
