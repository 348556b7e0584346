import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LoadPipelineOptions, Pipeline } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { Admission } from '../../tools/server/admission.ts';
import { checkOrigin, createServerApp, type TextToImageRequest } from '../../tools/server/app.ts';
import { type ListeningServer, listen } from '../../tools/server/node.ts';
import { writeTinyArtifact } from '../support/node-onnx.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';
import { startStalledOrigin, type TestServer } from '../support/stalled-origin.ts';

let work: string;
let origin: CountingOrigin;
/** Forwards to `origin`, except requests for model `stalled`: accepted, never answered. */
let stalling: TestServer;
let runtime: ReturnType<typeof createNodeRuntime>;
const logs: string[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-harden-serve-'));
  await writeTinyArtifact(join(work, 'origin'), { name: 'tiny' });
  origin = await startCountingOrigin(join(work, 'origin'));
  stalling = await startStalledOrigin({ forwardPort: Number(new URL(origin.url).port), passThrough: (head) => !head.includes('/stalled/') });
  runtime = createNodeRuntime({ storeRoot: join(work, 'store'), warn: (m) => logs.push(m) });
});

afterAll(async () => {
  await runtime.flush();
  await stalling.close();
  await origin.close();
  await rm(work, { recursive: true, force: true });
});

async function withServer(options: Partial<Parameters<typeof listen>[0]>, test: (server: ListeningServer) => Promise<void>) {
  const server = await listen({ origin: stalling.url, loadPipeline: runtime.loadPipeline, providers: ['cpu'], port: 0, log: (l) => logs.push(l), ...options });
  try {
    await test(server);
  } finally {
    await server.close();
  }
}

const post = (url: string, body: unknown, headers: Record<string, string> = { 'Content-Type': 'application/json' }, signal?: AbortSignal) =>
  fetch(`${url}/v1/generate`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body), signal });

async function errorOf(res: Response) {
  const json = (await res.json()) as { error: string; message: string };
  expect(json.message).not.toContain('\n');
  return json;
}

describe('fuseload serve: HTTP hygiene', () => {
  it('415 unless the body is declared application/json (charset allowed)', async () => {
    await withServer({}, async (server) => {
      const plain = await post(server.url, { model: 'tiny' }, { 'Content-Type': 'text/plain' });
      expect(plain.status).toBe(415);
      expect(await errorOf(plain)).toEqual({ error: 'unsupported-media-type', message: 'request body: Content-Type must be application/json (got "text/plain")' });
      const none = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: new Uint8Array([123, 125]) });
      expect(none.status).toBe(415);
      const charset = await post(server.url, { model: 'tiny', width: 8, height: 8 }, { 'Content-Type': 'application/json; charset=utf-8' });
      expect(charset.status).toBe(200);
    });
  });

  it.each([
    ['GET', '/v1/generate', 'POST'],
    ['PUT', '/v1/generate', 'POST'],
    ['DELETE', '/v1/generate', 'POST'],
    ['POST', '/healthz', 'GET, HEAD'],
    ['DELETE', '/healthz', 'GET, HEAD'],
  ])('405 with Allow for %s %s', async (method, path, allow) => {
    await withServer({}, async (server) => {
      const res = await fetch(`${server.url}${path}`, { method });
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe(allow);
      expect((await errorOf(res)).error).toBe('method-not-allowed');
    });
  });

  it('HEAD /healthz answers like GET, without a body', async () => {
    await withServer({}, async (server) => {
      const res = await fetch(`${server.url}/healthz`, { method: 'HEAD' });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('');
    });
  });

  it('tag defaults to latest', async () => {
    await withServer({}, async (server) => {
      const res = await post(server.url, { model: 'tiny', width: 16, height: 8 });
      expect(res.status).toBe(200);
      expect([decode(new Uint8Array(await res.arrayBuffer())).width]).toEqual([16]);
    });
  });

  it('error bodies never carry the origin URL; the server log does', async () => {
    await withServer({}, async (server) => {
      logs.length = 0;
      const res = await post(server.url, { model: 'nope' });
      expect(res.status).toBe(404);
      const { message } = await errorOf(res);
      expect(message).toBe('<origin>/tags/nope/latest.json: HTTP 404');
      expect(message).not.toContain(stalling.url);
      expect(message).not.toContain('127.0.0.1');
      expect(logs.join('\n')).toContain(`${stalling.url}/tags/nope/latest.json: HTTP 404`);
    });
  });

  it('refuses an origin with credentials (or a query) before serving', () => {
    expect(() => checkOrigin('https://alice:s3cret@models.example.com')).toThrow(/^--origin: must not carry credentials/);
    expect(() => checkOrigin('https://alice:s3cret@models.example.com')).not.toThrow(/s3cret/);
    expect(() => checkOrigin('https://models.example.com/?token=x')).toThrow(/without \?query/);
    expect(() => createServerApp({ origin: 'http://u:p@127.0.0.1:1', loadPipeline: runtime.loadPipeline, providers: [] })).toThrow(/credentials/);
    expect(checkOrigin('https://models.example.com/base/')).toBe('https://models.example.com/base');
  });
});

describe('fuseload serve: deadlines and gone clients free the slot', () => {
  it('a stalled origin: the request times out with 504, the slot is freed, the next request succeeds', async () => {
    await withServer({ limits: { concurrency: 1, queue: 1, generationTimeoutMs: 600 } }, async (server) => {
      const stuck = await post(server.url, { model: 'stalled', width: 8, height: 8 });
      expect(stuck.status).toBe(504);
      expect(await errorOf(stuck)).toEqual({ error: 'timeout', message: 'generation: not finished within 0.6 s (serve --timeout); stopped' });
      await expect.poll(async () => ((await (await fetch(`${server.url}/healthz`)).json()) as { queue: unknown }).queue).toEqual({ running: 0, waiting: 0 });
      const next = await post(server.url, { model: 'tiny', width: 8, height: 8 });
      expect(next.status).toBe(200);
    });
  });

  it('a client that leaves mid-load frees its slot (its signal reaches the loader)', async () => {
    const seen: AbortSignal[] = [];
    const loadPipeline = (o: LoadPipelineOptions) => (seen.push(o.signal!), runtime.loadPipeline(o));
    await withServer({ loadPipeline, limits: { concurrency: 1, queue: 0 } }, async (server) => {
      logs.length = 0;
      const leaving = new AbortController();
      const gone = post(server.url, { model: 'stalled', width: 8, height: 8 }, undefined, leaving.signal);
      await expect.poll(() => seen.length).toBe(1);
      leaving.abort();
      await expect(gone).rejects.toThrow();
      await expect.poll(() => seen[0].aborted).toBe(true);
      await expect.poll(() => logs.some((l) => l.includes('client went away'))).toBe(true);
      const next = await post(server.url, { model: 'tiny', width: 8, height: 8 });
      expect(next.status).toBe(200);
    });
  });
});

describe('fuseload serve: the memory budget (pixels at once)', () => {
  it('a request larger than the whole budget is refused with 413 before anything loads', async () => {
    let loads = 0;
    const loadPipeline = (o: LoadPipelineOptions) => (loads++, runtime.loadPipeline(o));
    await withServer({ loadPipeline, limits: { pixelBudget: 32 * 32 } }, async (server) => {
      const big = await post(server.url, { model: 'tiny', width: 64, height: 32 });
      expect(big.status).toBe(413);
      expect((await errorOf(big)).message).toBe("width × height: 2048 pixels is more than this server's budget of 1024 pixels at once (serve --pixel-budget)");
      expect(loads).toBe(0);
      expect((await post(server.url, { model: 'tiny', width: 32, height: 32 })).status).toBe(200);
      const health = (await (await fetch(`${server.url}/healthz`)).json()) as { pixels: unknown };
      expect(health.pixels).toEqual({ inFlight: 0, budget: 1024 });
    });
  });

  it('the default budget is max-side² × concurrency', async () => {
    await withServer({ limits: { maxSide: 256, concurrency: 3 } }, async (server) => {
      const health = (await (await fetch(`${server.url}/healthz`)).json()) as { pixels: { budget: number } };
      expect(health.pixels.budget).toBe(256 * 256 * 3);
    });
  });

  it('generations whose areas do not fit together wait their turn, in order', async () => {
    const admission = new Admission({ concurrency: 4, queue: 4, pixelBudget: 100 });
    const order: string[] = [];
    const a = await admission.enter(60);
    const b = admission.enter(60).then((release) => (order.push('b'), release));
    const c = admission.enter(30).then((release) => (order.push('c'), release)); // fits now, but b is first
    await new Promise((r) => setTimeout(r, 10));
    expect([admission.running, admission.waiting, admission.pixelsInFlight]).toEqual([1, 2, 60]);
    a();
    (await b)();
    (await c)();
    expect(order).toEqual(['b', 'c']);
    const gone = new AbortController();
    const hold = await admission.enter(100);
    const waiting = admission.enter(10, gone.signal);
    gone.abort(new Error('client left'));
    await expect(waiting).rejects.toThrow('client left');
    expect(admission.waiting).toBe(0);
    hold();
  });
});

describe('fuseload serve: text-to-image pipelines', () => {
  /** A fake text-to-image pipeline: the interface DESIGN.md describes; a solid colour per seed. */
  function fakeTextToImage(onGenerate: (r: TextToImageRequest) => Promise<void> = async () => {}, imageSize?: number) {
    const calls: TextToImageRequest[] = [];
    const pipeline = {
      info: { kind: 'text-to-image', fingerprint: `sha256:${'c'.repeat(64)}`, manifest: { name: 'sd' }, provider: 'cpu', fallbacks: [], sources: {}, bytesFetched: 0, overlays: [], fromPipelineCache: false, ...(imageSize ? { imageSize } : {}) },
      sessions: {},
      run: async () => ({}),
      generate: async (r: TextToImageRequest) => {
        calls.push(r);
        await onGenerate(r);
        const data = new Uint8ClampedArray(r.width * r.height * 4);
        for (let i = 0; i < data.length; i += 4) data.set([r.seed & 0xff, 100, 200, 255], i);
        return { image: { width: r.width, height: r.height, data } };
      },
      dispose: async () => {},
    } as unknown as Pipeline;
    return { loadPipeline: async () => pipeline, calls };
  }

  it('calls p.generate with the request and answers image/png', async () => {
    const fake = fakeTextToImage();
    await withServer({ loadPipeline: fake.loadPipeline }, async (server) => {
      const res = await post(server.url, { model: 'sd', prompt: 'a red fox', negativePrompt: 'blurry', steps: 20, guidanceScale: 7.5, scheduler: 'euler', seed: 42, width: 64, height: 32 });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('image/png');
      const png = decode(new Uint8Array(await res.arrayBuffer()));
      expect([png.width, png.height, png.channels, [...png.data.slice(0, 4)]]).toEqual([64, 32, 4, [42, 100, 200, 255]]);
      const { signal, ...call } = fake.calls[0];
      expect(call).toEqual({ prompt: 'a red fox', negativePrompt: 'blurry', steps: 20, guidanceScale: 7.5, scheduler: 'euler', seed: 42, width: 64, height: 32 });
      expect(signal).toBeInstanceOf(AbortSignal);
    });
  });

  it("sides default to the pipeline's native size (512 where it does not say), at most --max-side; a prompt is required", async () => {
    for (const [imageSize, side] of [
      [96, 96],
      [1024, 128],
      [undefined, 128],
    ] as const) {
      const fake = fakeTextToImage(undefined, imageSize);
      await withServer({ loadPipeline: fake.loadPipeline, limits: { maxSide: 128 } }, async (server) => {
        const png = decode(new Uint8Array(await (await post(server.url, { model: 'sd', prompt: 'x' })).arrayBuffer()));
        expect([png.width, png.height], `native ${imageSize}`).toEqual([side, side]);
      });
    }
    const fake = fakeTextToImage();
    await withServer({ loadPipeline: fake.loadPipeline, limits: { maxSide: 128 } }, async (server) => {
      const none = await post(server.url, { model: 'sd' });
      expect(none.status).toBe(400);
      expect((await errorOf(none)).message).toBe('prompt: required by sd, a text-to-image pipeline');
    });
  });

  it.each([
    [{ prompt: 'x'.repeat(1001) }, /^prompt: /],
    [{ prompt: 'x', negativePrompt: 'x'.repeat(1001) }, /^negativePrompt: /],
    [{ prompt: 'x', steps: 0 }, /^steps: /],
    [{ prompt: 'x', steps: 101 }, /^steps: /],
    [{ prompt: 'x', steps: 2.5 }, /^steps: /],
    [{ prompt: 'x', guidanceScale: 30.5 }, /^guidanceScale: /],
    [{ prompt: 'x', guidanceScale: -1 }, /^guidanceScale: /],
    [{ prompt: 'x', seed: 2 ** 53 }, /^seed: /],
    [{ prompt: 'x', width: 100 }, /^width: must be a multiple of 8/],
    [{ prompt: 'x', height: 1024 }, /^height: /],
    [{ prompt: 'x', scheduler: '../../etc' }, /^scheduler: /],
  ])('400 for %j, before loading', async (fields, message) => {
    let loads = 0;
    const fake = fakeTextToImage();
    await withServer({ loadPipeline: async (o) => (loads++, fake.loadPipeline()) }, async (server) => {
      const res = await post(server.url, { model: 'sd', ...fields });
      expect(res.status).toBe(400);
      expect((await errorOf(res)).message).toMatch(message);
      expect(loads).toBe(0);
    });
  });

  it('text-to-image fields on a graph artifact are a 400 naming the field', async () => {
    await withServer({}, async (server) => {
      const res = await post(server.url, { model: 'tiny', prompt: 'a fox', width: 8, height: 8 });
      expect(res.status).toBe(400);
      expect((await errorOf(res)).message).toMatch(/^prompt: tiny is a graph pipeline; .* apply to text-to-image pipelines only$/);
    });
  });

  it('the deadline reaches p.generate: it is aborted, 504, the slot freed', async () => {
    const fake = fakeTextToImage((r) => new Promise((_, reject) => r.signal!.addEventListener('abort', () => reject(r.signal!.reason))));
    await withServer({ loadPipeline: fake.loadPipeline, limits: { concurrency: 1, generationTimeoutMs: 300 } }, async (server) => {
      const res = await post(server.url, { model: 'sd', prompt: 'x', width: 8, height: 8 });
      expect(res.status).toBe(504);
      expect(fake.calls[0].signal!.aborted).toBe(true);
      const health = (await (await fetch(`${server.url}/healthz`)).json()) as { queue: unknown };
      expect(health.queue).toEqual({ running: 0, waiting: 0 });
    });
  });
});
