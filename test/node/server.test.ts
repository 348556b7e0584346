import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LoadPipelineOptions } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { type ListeningServer, listen } from '../../tools/server/node.ts';
import { writeTinyArtifact, type WrittenArtifact } from '../support/node-onnx.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';

let originDir: string;
let storeRoot: string;
let artifact: WrittenArtifact;
let origin: CountingOrigin;
let server: ListeningServer;
let runtime: ReturnType<typeof createNodeRuntime>;
const logs: string[] = [];

beforeAll(async () => {
  originDir = await mkdtemp(join(tmpdir(), 'fuseload-serve-origin-'));
  storeRoot = await mkdtemp(join(tmpdir(), 'fuseload-serve-store-'));
  artifact = await writeTinyArtifact(originDir, { name: 'tiny' });
  origin = await startCountingOrigin(originDir);
  runtime = createNodeRuntime({ storeRoot, warn: (m) => logs.push(m) });
  server = await listen({ origin: origin.url, loadPipeline: runtime.loadPipeline, providers: ['cpu'], port: 0, log: (l) => logs.push(l) });
});

afterAll(async () => {
  await server.close();
  await runtime.flush();
  await origin.close();
  await rm(originDir, { recursive: true, force: true });
  await rm(storeRoot, { recursive: true, force: true });
});

const post = (body: unknown, url = server.url) =>
  fetch(`${url}/v1/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });

async function expectError(res: Response, status: number, message: RegExp) {
  expect(res.status).toBe(status);
  const json = (await res.json()) as { error: string; message: string };
  expect(json.message).toMatch(message);
  expect(json.message).not.toContain('\n');
  return json;
}

describe('fuseload serve', () => {
  it('POST /v1/generate returns a PNG of the requested size, and reuses the pipeline', async () => {
    const res = await post({ model: 'tiny', tag: 'latest', seed: 3, width: 48, height: 32 });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    expect(res.headers.get('x-fuseload-provider')).toBe('cpu');
    expect(res.headers.get('x-fuseload-fingerprint')).toBe(artifact.fingerprint);
    expect(res.headers.get('x-fuseload-pipeline-cache')).toBe('miss');
    const png = decode(new Uint8Array(await res.arrayBuffer()));
    expect([png.width, png.height, png.channels]).toEqual([48, 32, 4]);
    const reds = new Set<number>();
    for (let i = 0; i < png.data.length; i += 4) reds.add(png.data[i]);
    expect(reds.size).toBeGreaterThan(8); // an image, not a blank

    origin.reset();
    const again = await post({ model: 'tiny', fingerprint: artifact.fingerprint, seed: 4, width: 16, height: 16 });
    expect(again.status).toBe(200);
    expect(again.headers.get('x-fuseload-pipeline-cache')).toBe('hit');
    expect(origin.total()).toBe(0);
  });

  it('GET /healthz reports providers and the pipelines it holds', async () => {
    const res = await fetch(`${server.url}/healthz`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { ok: boolean; providers: string[]; pipelines: { model: string; fingerprint: string; provider: string; generations: number }[] };
    expect(body.ok).toBe(true);
    expect(body.providers).toEqual(['cpu']);
    expect(body.pipelines).toEqual([{ model: 'tiny', fingerprint: artifact.fingerprint, provider: 'cpu', generations: 2 }]);
  });

  it.each([
    [{ tag: 'latest' }, /^model: /],
    [{ model: 'tiny', tag: 'latest', width: 513 }, /^width: .*512/],
    [{ model: 'tiny', tag: 'latest', height: 60 }, /^height: must be a multiple of 8/],
    [{ model: 'tiny', tag: 'latest', seed: -1 }, /^seed: /],
    [{ model: 'tiny', tag: 'latest', fingerprint: 'a'.repeat(64) }, /^tag: give exactly one of tag or fingerprint/],
    [{ model: 'tiny', fingerprint: 'sha256:xyz' }, /^fingerprint: must be sha256/],
    [{ model: '../etc', tag: 'latest' }, /^model: must be a name/],
    [{ model: 'tiny', tag: 'latest', loras: [{ scale: 1 }] }, /^loras\.0: give exactly one of digest or url/],
    [{ model: 'tiny', tag: 'latest', loras: [{ url: 'file:///etc/passwd', scale: 1 }] }, /^loras\.0\.url: /],
    [{ model: 'tiny', tag: 'latest', steps: 50 }, /steps/],
  ])('400 for %j', async (body, message) => {
    const json = await expectError(await post(body), 400, message);
    expect(json.error).toBe('bad-input');
  });

  it('400 for a body that is not JSON', async () => {
    await expectError(await post('{"model":'), 400, /^request body: not valid JSON/);
  });

  it('413 for a body over the limit, before it is parsed', async () => {
    await expectError(await post({ model: 'tiny', tag: 'latest', pad: 'x'.repeat(20_000) }), 413, /larger than 16384 bytes/);
  });

  it('404 for a model or a load-time LoRA the origin does not have', async () => {
    await expectError(await post({ model: 'nope', tag: 'latest' }), 404, /tags\/nope\/latest\.json: HTTP 404/);
    const json = await expectError(await post({ model: 'tiny', tag: 'latest', loras: [{ digest: 'a'.repeat(64), scale: 0.5 }] }), 404, new RegExp(`/blobs/sha256/${'a'.repeat(64)}: HTTP 404`));
    expect(json.error).toBe('not-found');
  });

  it('404 JSON for unknown endpoints', async () => {
    await expectError(await fetch(`${server.url}/v2/anything`), 404, /no such endpoint/);
  });
});

describe('fuseload serve: the generation queue', () => {
  it('runs `concurrency` at once, queues `queue` more, and refuses the next with 503 + Retry-After', async () => {
    const root = await mkdtemp(join(tmpdir(), 'fuseload-serve-queue-'));
    const runtime = createNodeRuntime({ storeRoot: root, warn: () => {} });
    // The real runtime behind a gate, so the queue stays full while we probe it.
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let started = 0;
    const gated = async (o: LoadPipelineOptions) => {
      started++;
      await gate;
      return runtime.loadPipeline(o);
    };
    const busy = await listen({ origin: origin.url, loadPipeline: gated, providers: ['cpu'], port: 0, limits: { concurrency: 1, queue: 1 } });
    try {
      const request = { model: 'tiny', tag: 'latest', width: 16, height: 16 };
      const first = post(request, busy.url);
      const second = post(request, busy.url);
      await expect.poll(() => started).toBe(1);
      await new Promise((r) => setTimeout(r, 50)); // the second is in the queue by now
      const third = await post(request, busy.url);
      expect(third.status).toBe(503);
      expect(third.headers.get('retry-after')).toBe('1');
      expect(((await third.json()) as { error: string }).error).toBe('busy');
      const health = (await (await fetch(`${busy.url}/healthz`)).json()) as { queue: { running: number; waiting: number } };
      expect(health.queue).toEqual({ running: 1, waiting: 1 });
      open();
      expect((await first).status).toBe(200);
      expect((await second).status).toBe(200);
      expect(started).toBe(2);
    } finally {
      await busy.close();
      await runtime.flush();
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('fuseload serve holds a bounded number of pipelines', () => {
  it('keeps the `maxPipelines` most recently used and disposes the rest, so their sessions are released', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fuseload-serve-lru-'));
    const models = ['m1', 'm2', 'm3'];
    for (const [i, name] of models.entries()) await writeTinyArtifact(dir, { name, seed: i + 1 });
    const lruOrigin = await startCountingOrigin(dir);
    const rt = createNodeRuntime({ storeRoot: join(dir, 'store') });
    const disposed: string[] = [];
    const loadPipeline = async (o: LoadPipelineOptions) => {
      const p = await rt.loadPipeline(o);
      return { ...p, info: p.info, dispose: async () => { disposed.push(o.model); await p.dispose(); } };
    };
    const lru = await listen({ origin: lruOrigin.url, loadPipeline, providers: ['cpu'], port: 0, limits: { maxPipelines: 2 } });
    try {
      const generate = async (model: string) => {
        const res = await post({ model, tag: 'latest', width: 8, height: 8 }, lru.url);
        expect(res.status).toBe(200);
        return res.headers.get('x-fuseload-pipeline-cache');
      };
      expect(await generate('m1')).toBe('miss');
      expect(await generate('m1')).toBe('hit');
      expect(disposed).toEqual(['m1']); // the second request's extra handle, not the held one
      expect(await generate('m2')).toBe('miss');
      expect(await generate('m3')).toBe('miss');
      expect(disposed).toEqual(['m1', 'm1']); // m1 was least recently used: its held handle went
      const health = (await (await fetch(`${lru.url}/healthz`)).json()) as { pipelines: { model: string }[] };
      expect(health.pipelines.map((p) => p.model)).toEqual(['m2', 'm3']);
      // Its session was released with its last handle: m1 is built again.
      expect(await generate('m1')).toBe('miss');
    } finally {
      await lru.close();
      await rt.flush();
      await lruOrigin.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
