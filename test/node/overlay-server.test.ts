/**
 * Load-time LoRAs end to end in Node: `POST /v1/generate` with `loras` and
 * `fuseload generate --lora`, each against the image of the artifact `fuseload build` merged
 * with the same LoRA and scale (pixels within one 8-bit step).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { type ListeningServer, listen } from '../../tools/server/node.ts';
import { fuseload } from '../support/artifact.ts';
import { CASES, type OverlayArtifacts, overlayArtifacts } from '../support/overlay-artifacts.ts';
import { type Origin, startOrigin } from '../support/origin.ts';

const WARM = CASES[0];
const COOL = CASES[1];
const SIZE = { seed: 9, width: 32, height: 32 };

let fx: OverlayArtifacts;
let baseOrigin: Origin;
const mergedOrigins = new Map<string, Origin>();
let server: ListeningServer;
let runtime: ReturnType<typeof createNodeRuntime>;
const roots: string[] = [];
const logs: string[] = [];

beforeAll(async () => {
  fx = await overlayArtifacts([WARM, COOL]);
  baseOrigin = await startOrigin({ root: fx.dir });
  for (const c of [WARM, COOL]) mergedOrigins.set(c.name, await startOrigin({ root: fx.merged.get(c.name)!.dir }));
  const storeRoot = await mkdtemp(join(tmpdir(), 'fuseload-overlay-serve-'));
  roots.push(storeRoot);
  runtime = createNodeRuntime({ storeRoot, warn: (m) => logs.push(m) });
  server = await listen({ origin: baseOrigin.url, loadPipeline: runtime.loadPipeline, providers: ['cpu'], device: 'cpu', port: 0, log: (l) => logs.push(l) });
}, 120_000);

afterAll(async () => {
  await server?.close();
  await runtime?.flush();
  await baseOrigin?.close();
  for (const o of mergedOrigins.values()) await o.close();
  for (const r of roots) await rm(r, { recursive: true, force: true });
  await fx?.remove();
});

const post = (body: unknown) => fetch(`${server.url}/v1/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

function pixels(png: Uint8Array) {
  const image = decode(png);
  return image.data as Uint8Array;
}
function maxPixelDiff(a: Uint8Array, b: Uint8Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** The merged artifact's image, through the same runtime and renderer (its own server). */
async function mergedImage(c: (typeof CASES)[number]): Promise<Uint8Array> {
  const storeRoot = await mkdtemp(join(tmpdir(), 'fuseload-overlay-serve-'));
  roots.push(storeRoot);
  const rt = createNodeRuntime({ storeRoot, warn: () => {} });
  const s = await listen({ origin: mergedOrigins.get(c.name)!.url, loadPipeline: rt.loadPipeline, providers: ['cpu'], device: 'cpu', port: 0 });
  try {
    const res = await fetch(`${s.url}/v1/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ model: 'sample', tag: 'latest', ...SIZE }) });
    expect(res.status).toBe(200);
    return new Uint8Array(await res.arrayBuffer());
  } finally {
    await s.close();
    await rt.flush();
  }
}

describe('POST /v1/generate with loras', () => {
  it('kohya by digest and PEFT with alpha give the merged artifacts\' images; the base is fetched once', async () => {
    const baseRes = await post({ model: 'sample', fingerprint: fx.base.fingerprint, ...SIZE });
    expect(baseRes.status).toBe(200);
    const base = pixels(new Uint8Array(await baseRes.arrayBuffer()));
    baseOrigin.reset();
    for (const c of [WARM, COOL]) {
      const res = await post({ model: 'sample', fingerprint: fx.base.fingerprint, loras: fx.overlays(c), ...SIZE });
      expect(res.status).toBe(200);
      const got = pixels(new Uint8Array(await res.arrayBuffer()));
      expect(maxPixelDiff(got, pixels(await mergedImage(c)))).toBeLessThanOrEqual(1);
      expect(maxPixelDiff(got, base)).toBeGreaterThan(8);
    }
    // Only the two LoRA files crossed the network after the base load.
    expect(baseOrigin.requests.map((r) => r.path).sort()).toEqual([fx.loras.warm.digest, fx.loras.cool.digest].map((d) => `/blobs/sha256/${d.slice(7)}`).sort());
  });

  it('422 shape-mismatch in one line for a LoRA that does not fit; the base still generates', async () => {
    const res = await post({ model: 'sample', fingerprint: fx.base.fingerprint, loras: [{ digest: fx.loras.misfit.digest, scale: 1 }], ...SIZE });
    expect(res.status).toBe(422);
    const json = (await res.json()) as { error: string; message: string };
    expect(json.error).toBe('shape-mismatch');
    expect(json.message).toMatch(/lora_up\.weight".*up \[33,4\] · down \[4,32\] does not fit weight "[^"]+" \[32,32\]/);
    expect((await post({ model: 'sample', fingerprint: fx.base.fingerprint, ...SIZE })).status).toBe(200);
  });

  it('400 for a LoRA by URL: the server fetches only from its origin', async () => {
    baseOrigin.reset();
    const res = await post({ model: 'sample', fingerprint: fx.base.fingerprint, loras: [{ url: `${baseOrigin.url}/blobs/sha256/${fx.loras.warm.digest.slice(7)}`, scale: 1 }] });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toBe('loras.0.url: this server loads LoRAs by digest from its origin only');
    expect(baseOrigin.requests).toEqual([]);
  });

  it('400 for a bad alpha', async () => {
    const res = await post({ model: 'sample', fingerprint: fx.base.fingerprint, loras: [{ digest: fx.loras.cool.digest, scale: 1, alpha: -1 }] });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toMatch(/^loras\.0\.alpha: /);
  });
});

describe('fuseload generate --lora', () => {
  it('a file path (PEFT: alpha from the adapter_config.json beside it) and a digest with :scale give the merged images', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fuseload-overlay-generate-'));
    roots.push(dir);
    const env = { PIPELINE_STORE: join(dir, 'store') };
    const common = ['generate', '--origin', baseOrigin.url, '--model', 'sample', '--fingerprint', fx.base.fingerprint, '--device', 'cpu', '--seed', String(SIZE.seed), '--width', '32', '--height', '32'];
    const cool = join(dir, 'cool.png');
    await fuseload([...common, '--lora', fx.loras.cool.file, '--out', cool], env);
    const warm = join(dir, 'warm.png');
    await fuseload([...common, '--lora', `${fx.loras.warm.digest}:0.8`, '--out', warm], env);
    expect(maxPixelDiff(pixels(new Uint8Array(await readFile(cool))), pixels(await mergedImage(COOL)))).toBeLessThanOrEqual(1);
    expect(maxPixelDiff(pixels(new Uint8Array(await readFile(warm))), pixels(await mergedImage(WARM)))).toBeLessThanOrEqual(1);
  });
});
