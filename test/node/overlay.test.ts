/**
 * Load-time LoRA overlays in Node: real onnxruntime-node, a real disk store, a real HTTP origin
 * that counts requests. The reference for every case is the artifact `fuseload build` merged
 * with the same LoRAs and scales, run by onnxruntime-node straight from its files.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { isFuseloadError } from '../../common/errors.ts';
import { createLoader, type Loader } from '../../common/loader/index.ts';
import type { Engine, ExternalDataFile, LoadPipelineOptions, LoraOverlay, ProgressEvent } from '../../common/pipeline.ts';
import { sampleFeeds } from '../../common/sample-input.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { CASES, maxAbsDiff, type OverlayArtifacts, overlayArtifacts } from '../support/overlay-artifacts.ts';
import { type Origin, startOrigin } from '../support/origin.ts';

const RUN = { seed: 5, width: 32, height: 32 };
let fx: OverlayArtifacts;
let origin: Origin;
const roots: string[] = [];

beforeAll(async () => {
  fx = await overlayArtifacts();
  origin = await startOrigin({ root: fx.dir });
}, 120_000);
afterAll(async () => {
  await origin?.close();
  for (const r of roots) await rm(r, { recursive: true, force: true });
  await fx?.remove();
});

/** onnxruntime-node on an artifact's graph file, as any ONNX tool would run it. */
async function reference(graphFile: string): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(graphFile);
  const { latent } = sampleFeeds(RUN);
  const out = await session.run({ latent: new ort.Tensor('float32', latent.data as Float32Array, latent.dims) });
  await session.release();
  return out.image.data as Float32Array;
}

interface Rig {
  loader: Loader;
  store: DiskStore;
  /** The external data each engine.create got, in order. */
  created: ExternalDataFile[][];
  /** Sessions made for the overlay merge graph (no external data). */
  mergeSessions: string[];
  /** Digests the loader asked the disk store for. */
  storeGets: Digest[];
  warnings: string[];
}

/** The Node runtime's parts (disk store, onnxruntime-node), with a window on the engine and the store. */
async function rig(options: { ortMinElements?: number } = {}): Promise<Rig> {
  const root = await mkdtemp(join(tmpdir(), 'fuseload-overlay-store-'));
  roots.push(root);
  const store = new DiskStore(root, {});
  const storeGets: Digest[] = [];
  const get = store.get.bind(store);
  store.get = (digest) => {
    storeGets.push(digest);
    return get(digest);
  };
  const ortEngine = new OrtNodeEngine({ fileOf: (b) => store.fileOf(b) });
  const created: ExternalDataFile[][] = [];
  const mergeSessions: string[] = [];
  const engine: Engine = {
    providers: (d) => ortEngine.providers(d),
    async create(graph, files, provider) {
      const session = await ortEngine.create(graph, files, provider);
      if (files.length) created.push(files);
      else mergeSessions.push(provider);
      return session;
    },
  };
  const warnings: string[] = [];
  const loader = createLoader({ engine, store, warn: (m) => warnings.push(m), overlayOrtMinElements: options.ortMinElements });
  return { loader, store, created, mergeSessions, storeGets, warnings };
}

const opts = (loras?: LoraOverlay[], extra: Partial<LoadPipelineOptions> = {}): LoadPipelineOptions => ({
  origin: origin.url,
  model: 'sample',
  fingerprint: fx.base.fingerprint,
  device: 'cpu',
  loras,
  ...extra,
});

async function image(loader: Loader, loras?: LoraOverlay[]) {
  const p = await loader.loadPipeline(opts(loras));
  const out = await p.run(sampleFeeds(RUN));
  return { info: p.info, data: out.image.data as Float32Array, pipeline: p };
}

describe('load-time overlays give the numbers of `fuseload build`', () => {
  let js: Rig;
  let viaOrt: Rig;
  beforeAll(async () => {
    js = await rig();
    // Every targeted weight through the onnxruntime merge graph, not only the large ones.
    viaOrt = await rig({ ortMinElements: 0 });
  });

  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const merged = fx.merged.get(c.name)!;
    const want = await reference(merged.graphFile);
    const base = await reference(fx.base.graphFile);
    expect(maxAbsDiff(want, base)).toBeGreaterThan(1e-3); // the LoRA does change the image

    const a = await image(js.loader, fx.overlays(c));
    expect(maxAbsDiff(a.data, want)).toBeLessThan(1e-5);
    // The same keys matched as in the build, per LoRA.
    const byDigest = new Map(merged.manifest.loras.map((l) => [`${l.digest}*${l.scale}`, l.matched]));
    expect(a.info.overlays).toHaveLength(c.loras.length);
    for (const o of a.info.overlays) expect(o.matched).toBe(byDigest.get(`${o.digest}*${o.scale}`));

    const b = await image(viaOrt.loader, fx.overlays(c));
    expect(maxAbsDiff(b.data, want)).toBeLessThan(1e-4);
    expect(viaOrt.mergeSessions).toEqual(['cpu']); // one fp32 merge session, made once, on the pipeline's provider
    expect(viaOrt.warnings).toEqual([]);
    expect(js.mergeSessions).toEqual([]); // the sample's weights are all below the default threshold
  });

  it('PEFT without its alpha is a different model (alpha reaches the math)', async () => {
    const c = CASES.find((x) => x.loras[0].file === 'cool')!;
    const want = await reference(fx.merged.get(c.name)!.graphFile);
    const { data } = await image(js.loader, [{ digest: fx.loras.cool.digest, scale: 1 }]);
    expect(maxAbsDiff(data, want)).toBeGreaterThan(1e-3);
  });

  it('the order LoRAs are given in does not matter (applied in (digest, scale) order, as the build does)', async () => {
    const two = CASES[3];
    const forward = await image(js.loader, fx.overlays(two));
    const reversed = await image(js.loader, [...fx.overlays(two)].reverse());
    expect(reversed.info.fromPipelineCache).toBe(true);
    expect(Array.from(reversed.data)).toEqual(Array.from(forward.data));
  });

  it('scale 0 gives the base exactly, from the very same shard buffers', async () => {
    const r = await rig();
    const base = await image(r.loader, []);
    const zero = await image(r.loader, [{ digest: fx.loras.warm.digest, scale: 0 }]);
    expect(Array.from(zero.data)).toEqual(Array.from(base.data));
    expect(zero.info.overlays).toEqual([{ digest: fx.loras.warm.digest, scale: 0, matched: expect.any(Number), components: { model: expect.any(Number) } }]);
    const last = r.created.at(-1)!;
    for (const f of last) expect(f.data).toBe(await r.loader.memory.get(`sha256:${f.path}`));
  });
});

describe('switching overlays with the base in memory', () => {
  it('fetches only LoRA files not yet cached, never re-reads the base, copies only the shards it changes', async () => {
    const r = await rig();
    const events: ProgressEvent[] = [];
    const warm = fx.overlays(CASES[0]);
    const first = await r.loader.loadPipeline({ ...opts(warm), onProgress: (e) => events.push(e) });
    expect(first.info.sources[fx.loras.warm.digest]).toBe('network');
    expect(events.some((e) => e.phase === 'overlay')).toBe(true);
    await r.loader.flush();

    // Switch to another LoRA: one request, for its file, and nothing read from disk.
    origin.reset();
    r.storeGets.length = 0;
    const detail: LoraOverlay[] = [{ digest: fx.loras.detail.digest, scale: 0.5 }];
    const second = await r.loader.loadPipeline(opts(detail));
    expect(origin.requests.map((q) => q.path)).toEqual([`/blobs/sha256/${digestHex(fx.loras.detail.digest)}`]);
    expect(second.info.bytesFetched).toBe(fx.loras.detail.size);
    expect(origin.bytesServed()).toBe(fx.loras.detail.size);
    expect(r.storeGets).toEqual([fx.loras.detail.digest]); // the LoRA's own store miss, no base blob
    for (const s of fx.base.manifest.shards) expect(second.info.sources[s.digest]).toBe('memory');

    // Only shards that hold a targeted tensor are copies; the others are the memory tier's own arrays.
    const files = r.created.at(-1)!;
    const touched = new Set(
      fx.base.manifest.tensors
        .filter((t) => t.module && /ff_net_2|ff\.net\.2|attn1\.to_k|^conv_in$/.test(t.module))
        .map((t) => digestHex(fx.base.manifest.shards[t.shard].digest)),
    );
    expect(touched.size).toBeGreaterThan(0);
    expect(touched.size).toBeLessThan(files.length);
    for (const f of files) {
      const stored = (await r.loader.memory.get(`sha256:${f.path}`))!;
      if (touched.has(f.path)) expect(f.data).not.toBe(stored);
      else expect(f.data).toBe(stored);
      // The base blobs themselves are untouched.
      expect(await sha256(stored)).toBe(`sha256:${f.path}`);
    }

    // New scales, and back to the first set: no request at all, nothing read from disk.
    origin.reset();
    r.storeGets.length = 0;
    await r.loader.loadPipeline(opts([{ digest: fx.loras.detail.digest, scale: -1 }, ...warm]));
    await r.loader.loadPipeline(opts(warm));
    expect(origin.requests).toEqual([]);
    expect(r.storeGets).toEqual([]);
  });

  it('a LoRA by URL is hashed once; its digest names it in the cache', async () => {
    const r = await rig();
    const url = `${origin.url}/blobs/sha256/${digestHex(fx.loras.warm.digest)}?sig=secret`;
    origin.reset();
    const p = await r.loader.loadPipeline(opts([{ url, scale: 0.8 }]));
    expect(p.info.overlays).toEqual([{ digest: fx.loras.warm.digest, scale: 0.8, matched: expect.any(Number), components: { model: expect.any(Number) } }]);
    // The same LoRA by digest is the same pipeline.
    const q = await r.loader.loadPipeline(opts([{ digest: fx.loras.warm.digest, scale: 0.8 }]));
    expect(q.info.fromPipelineCache).toBe(true);
    await r.loader.loadPipeline(opts([{ url, scale: 0.3 }]));
    expect(origin.gets(`/blobs/sha256/${digestHex(fx.loras.warm.digest)}`)).toBe(1);
  });
});

describe('overlays that cannot apply', () => {
  it('a LoRA that does not fit the base is a one-line shape-mismatch naming the key and both shapes; the base still loads', async () => {
    const r = await rig();
    const error = await r.loader.loadPipeline(opts([{ digest: fx.loras.misfit.digest, scale: 1 }])).catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('shape-mismatch');
    expect(error.message).not.toContain('\n');
    expect(error.message).toContain('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight');
    expect(error.message).toMatch(/up \[33,4\] · down \[4,32\] does not fit weight "[^"]+" \[32,32\]/);

    const base = await image(r.loader, []);
    expect(maxAbsDiff(base.data, await reference(fx.base.graphFile))).toBeLessThan(1e-6);
    const warm = await image(r.loader, fx.overlays(CASES[0]));
    expect(maxAbsDiff(warm.data, await reference(fx.merged.get(CASES[0].name)!.graphFile))).toBeLessThan(1e-5);
    // The failed overlay left no pipeline behind: asking again fails again, rather than a cache hit.
    await expect(r.loader.loadPipeline(opts([{ digest: fx.loras.misfit.digest, scale: 1 }]))).rejects.toMatchObject({ code: 'shape-mismatch' });
  });

  it('bad overlay requests fail before any request, naming the field', async () => {
    const r = await rig();
    origin.reset();
    const cases: [LoraOverlay[], RegExp][] = [
      [[{ scale: 1 }], /^loras\[0\]: give exactly one of digest or url$/],
      [[{ digest: 'abc', scale: 1 }], /^loras\[0\]\.digest: "abc" is not a sha256 digest/],
      [[{ digest: fx.loras.warm.digest, scale: Number.NaN }], /^loras\[0\]\.scale: NaN is not a finite number$/],
      [[{ digest: fx.loras.warm.digest, scale: 1, alpha: -2 }], /^loras\[0\]\.alpha: -2 is not a positive finite number$/],
      [[{ url: 'nope', scale: 1 }], /^loras\[0\]\.url: "nope" is not an absolute URL$/],
    ];
    for (const [loras, message] of cases) await expect(r.loader.loadPipeline(opts(loras))).rejects.toThrow(message);
    expect(origin.requests).toEqual([]);
  });

  it('a LoRA digest the origin does not have is not-found; bytes that hash otherwise are digest-mismatch', async () => {
    const r = await rig();
    await expect(r.loader.loadPipeline(opts([{ digest: `sha256:${'0'.repeat(64)}`, scale: 1 }]))).rejects.toMatchObject({ code: 'not-found' });
    // The warm file served under detail's digest.
    const url = `${origin.url}/blobs/sha256/${digestHex(fx.loras.warm.digest)}`;
    const fetchSwap: typeof fetch = (input, init) => fetch(String(input).includes(digestHex(fx.loras.detail.digest)) ? url : input, init);
    const l = createLoader({ engine: new OrtNodeEngine(), store: r.store, fetch: fetchSwap, warn: () => {} });
    await expect(l.loadPipeline(opts([{ digest: fx.loras.detail.digest, scale: 1 }]))).rejects.toMatchObject({ code: 'digest-mismatch' });
  });
});
