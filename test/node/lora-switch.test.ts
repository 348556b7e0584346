/**
 * Switching load-time LoRAs without a new session, in Node (real onnxruntime-node on CPU, a real
 * disk store, a real HTTP origin). Every engine `create` / `createFromFiles` that makes a
 * component session is counted: a switch (`p.setLoras`, or `loadPipeline` with other loras on a
 * loaded base) must add none. The reference for every overlay is the artifact `fuseload build`
 * merged with the same LoRAs and scales (and, for the real-exporter pipeline, torch's numbers).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { createLoader, type FileEngine, type Loader } from '../../common/loader/index.ts';
import type { LoraSwitchMode } from '../../common/loader/switch.ts';
import { decodeManifest, schema1, type Role } from '../../common/manifest.ts';
import type { EngineSession, Feeds, LoraOverlay, Pipeline } from '../../common/pipeline.ts';
import { encodeSafetensors } from '../../common/safetensors.ts';
import { sampleFeeds } from '../../common/sample-input.ts';
import { build } from '../../tools/build/build.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { tinySdWithLora } from '../support/lora-switch-artifacts.ts';
import { startCountingOrigin } from '../support/node-origin.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { CASES, maxAbsDiff, type OverlayArtifacts, overlayArtifacts, SHARD_SIZE } from '../support/overlay-artifacts.ts';
import { expectOutputs, FIX, fixtures } from '../support/pipeline-fixtures.ts';
import { writeTag } from '../support/tag.ts';

const RUN = { seed: 5, width: 32, height: 32 };
let fx: OverlayArtifacts;
let origin: Origin;
const roots: string[] = [];
/** Output of each merged artifact (and the base), run by onnxruntime-node from its own files. */
const want = new Map<string, Float32Array>();

async function reference(graphFile: string): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(graphFile);
  const { latent } = sampleFeeds(RUN);
  const out = await session.run({ latent: new ort.Tensor('float32', latent.data as Float32Array, latent.dims) });
  await session.release();
  return out.image.data as Float32Array;
}

beforeAll(async () => {
  fx = await overlayArtifacts();
  origin = await startOrigin({ root: fx.dir });
  want.set('base', await reference(fx.base.graphFile));
  for (const c of CASES) want.set(c.name, await reference(fx.merged.get(c.name)!.graphFile));
}, 180_000);
afterAll(async () => {
  await origin?.close();
  for (const r of roots) await rm(r, { recursive: true, force: true });
  await fx?.remove();
});

/** onnxruntime-node behind a window: component sessions made (bytes or store files) and merge-graph sessions. */
class CountingEngine implements FileEngine {
  components = 0;
  merges = 0;
  constructor(readonly inner: OrtNodeEngine) {}
  providers = (d: Parameters<OrtNodeEngine['providers']>[0]) => this.inner.providers(d);
  weightFeeding = (p: Parameters<OrtNodeEngine['weightFeeding']>[0]) => this.inner.weightFeeding(p);
  async create(...args: Parameters<OrtNodeEngine['create']>) {
    const session = await this.inner.create(...args);
    if (args[1].length) this.components++;
    else this.merges++;
    return session;
  }
  async createFromFiles(...args: Parameters<OrtNodeEngine['createFromFiles']>) {
    const session = await this.inner.createFromFiles(...args);
    if (session) this.components++;
    return session;
  }
}

async function rig(options: { mode?: LoraSwitchMode; ortMinElements?: number } = {}) {
  const root = await mkdtemp(join(tmpdir(), 'fuseload-switch-store-'));
  roots.push(root);
  const store = new DiskStore(root, {});
  const engine = new CountingEngine(new OrtNodeEngine({ fileOf: (b) => store.fileOf(b) }));
  const warnings: string[] = [];
  const loader = createLoader({ engine, store, warn: (m) => warnings.push(m), loraSwitch: options.mode, overlayOrtMinElements: options.ortMinElements });
  return { loader, engine, warnings, store };
}

const load = (loader: Loader, loras?: LoraOverlay[]) => loader.loadPipeline({ origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'cpu', loras });
const image = async (p: Pipeline) => (await p.run(sampleFeeds(RUN))).image.data as Float32Array;

describe('p.setLoras switches on the same sessions', () => {
  it('every case equals `fuseload build`; no component session is created; [] is the base again, bit for bit', async () => {
    const r = await rig();
    const p = await load(r.loader);
    const base = await image(p);
    expect(maxAbsDiff(base, want.get('base')!)).toBeLessThan(1e-6);
    const sessions = r.engine.components;
    expect(sessions).toBe(1);
    expect(p.info.loraSwitch?.model).toEqual({ fed: 0, branched: 0 });
    for (const c of CASES) {
      await p.setLoras(fx.overlays(c));
      expect(maxAbsDiff(await image(p), want.get(c.name)!), c.name).toBeLessThan(1e-5);
      expect(p.info.overlays.map((o) => o.digest).sort()).toEqual(c.loras.map((l) => fx.loras[l.file].digest).sort());
      const counts = p.info.loraSwitch!.model!;
      expect(counts.fed + counts.branched).toBeGreaterThan(0);
    }
    expect(r.engine.components).toBe(sessions);
    await p.setLoras([]);
    expect(Array.from(await image(p))).toEqual(Array.from(base));
    expect(p.info.overlays).toEqual([]);
    expect(r.warnings).toEqual([]);
    await p.dispose();
  });

  it('on CPU every layer with a branch form switches on its branch: the stored weights stay as onnxruntime prepacked them', async () => {
    const r = await rig();
    const p = await load(r.loader);
    for (const c of CASES) {
      await p.setLoras(fx.overlays(c));
      const counts = p.info.loraSwitch!.model!;
      expect(counts.branched, c.name).toBeGreaterThan(0);
      expect(counts.fed, c.name).toBe(0);
    }
    expect(r.engine.merges).toBe(0); // nothing merged at all: a switch costs the LoRA's size
    await p.dispose();
  });

  it('scale 0 is the base exactly', async () => {
    const r = await rig();
    const p = await load(r.loader);
    const base = await image(p);
    await p.setLoras([{ digest: fx.loras.warm.digest, scale: 0 }]);
    expect(Array.from(await image(p))).toEqual(Array.from(base));
    expect(p.info.overlays).toEqual([{ digest: fx.loras.warm.digest, scale: 0, matched: expect.any(Number), components: { model: expect.any(Number) } }]);
    expect(p.info.loraSwitch?.model).toEqual({ fed: 0, branched: 0 });
    await p.dispose();
  });

  it('back and forth between two sets and two scales gives the same numbers every time', async () => {
    const r = await rig();
    const p = await load(r.loader);
    const sets = [fx.overlays(CASES[0]), fx.overlays(CASES[3]), [{ digest: fx.loras.warm.digest, scale: -0.3 }]];
    const first: Float32Array[] = [];
    for (const s of sets) {
      await p.setLoras(s);
      first.push(await image(p));
    }
    for (let round = 0; round < 2; round++) {
      for (const [i, s] of sets.entries()) {
        await p.setLoras(s);
        expect(Array.from(await image(p))).toEqual(Array.from(first[i]));
      }
    }
    expect(maxAbsDiff(first[0], want.get(CASES[0].name)!)).toBeLessThan(1e-5);
    expect(maxAbsDiff(first[1], want.get(CASES[3].name)!)).toBeLessThan(1e-5);
    expect(r.engine.components).toBe(1);
    await p.dispose();
  });

  it('a run in flight finishes on the old weights; the next one sees the new', async () => {
    const r = await rig();
    const p = await load(r.loader);
    const before = p.run(sampleFeeds(RUN));
    const switching = p.setLoras(fx.overlays(CASES[0]));
    const after = p.run(sampleFeeds(RUN));
    await switching;
    expect(maxAbsDiff((await before).image.data as Float32Array, want.get('base')!)).toBeLessThan(1e-6);
    expect(maxAbsDiff((await after).image.data as Float32Array, want.get(CASES[0].name)!)).toBeLessThan(1e-5);
    await p.dispose();
  });

  it('the switching inputs stay out of the sessions a caller sees', async () => {
    const r = await rig();
    const p = await load(r.loader, fx.overlays(CASES[0]));
    expect(p.sessions.model!.inputNames).toEqual(['latent']);
    expect(Object.keys(p.sessions.model!.inputTypes ?? {})).toEqual(['latent']);
    await p.dispose();
  });
});

describe('loadPipeline with other loras on a loaded base', () => {
  it('reuses the base sessions; handles with different overlays run side by side, each with its own', async () => {
    const r = await rig();
    const base = await load(r.loader);
    await r.loader.flush();
    const made = r.engine.components;
    origin.reset();
    const a = await load(r.loader, fx.overlays(CASES[0]));
    const b = await load(r.loader, fx.overlays(CASES[3]));
    expect(r.engine.components).toBe(made);
    expect(a.info.fromPipelineCache).toBe(true);
    // Only the LoRA files crossed the network.
    expect(origin.requests.map((q) => q.path).sort()).toEqual([fx.loras.warm.digest, fx.loras.detail.digest].map((d) => `/blobs/sha256/${digestHex(d)}`).sort());
    const [ia, ib, i0] = await Promise.all([image(a), image(b), image(base)]);
    expect(maxAbsDiff(ia, want.get(CASES[0].name)!)).toBeLessThan(1e-5);
    expect(maxAbsDiff(ib, want.get(CASES[3].name)!)).toBeLessThan(1e-5);
    expect(maxAbsDiff(i0, want.get('base')!)).toBeLessThan(1e-6);
    // A handle's switch leaves the others as they were.
    await a.setLoras([]);
    expect(maxAbsDiff(await image(b), want.get(CASES[3].name)!)).toBeLessThan(1e-5);
    for (const p of [a, b, base]) await p.dispose();
  });

  it('a fresh loader with loras builds the base sessions once, then switches (warm from the store files)', async () => {
    const r = await rig();
    const cold = await load(r.loader, fx.overlays(CASES[1]));
    expect(maxAbsDiff(await image(cold), want.get(CASES[1].name)!)).toBeLessThan(1e-5);
    await cold.dispose();
    await r.loader.flush();
    // A second loader on the same store: sessions straight from the store's files, edited graph in memory.
    const engine = new CountingEngine(new OrtNodeEngine({ fileOf: (b) => r.store.fileOf(b) }));
    const warm = createLoader({ engine, store: r.store, warn: () => {} });
    const p = await warm.loadPipeline({ origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'cpu', loras: fx.overlays(CASES[2]) });
    expect(engine.inner.lastSource).toBe('files');
    expect(maxAbsDiff(await image(p), want.get(CASES[2].name)!)).toBeLessThan(1e-5);
    expect(engine.components).toBe(1);
    await p.dispose();
  });
});

describe('each way of switching gives the build-time numbers', () => {
  it.each(['weights', 'branches'] as const)('%s', async (mode) => {
    const r = await rig({ mode, ortMinElements: 0 });
    const p = await load(r.loader);
    for (const c of [CASES[0], CASES[1], CASES[3]]) {
      await p.setLoras(fx.overlays(c));
      expect(maxAbsDiff(await image(p), want.get(c.name)!), `${mode}: ${c.name}`).toBeLessThan(1e-5);
      const counts = p.info.loraSwitch!.model!;
      if (mode === 'branches') expect(counts.branched).toBeGreaterThan(0);
      else expect(counts.branched).toBe(0);
    }
    expect(r.engine.components).toBe(1);
    if (mode === 'weights') expect(r.engine.merges).toBe(1); // one fp32 merge graph, kept
    await p.dispose();
  });
});

describe('what a session cannot take falls back to merging into shard copies', () => {
  let loha: { digest: Digest; merged: Float32Array };
  beforeAll(async () => {
    // A LoHa on ff.net.2, the weight behind a Transpose: on CPU it rides a branch, which takes plain LoRA only.
    const target = fx.base.manifest.tensors.find((t) => t.module?.endsWith('ff.net.2'))!;
    const [out, inDim] = target.layout === 'io' ? [target.shape[1], target.shape[0]] : [target.shape[0], target.shape[1]];
    const key = `lora_unet_${target.module!.replace(/\./g, '_')}`;
    const fill = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k) / 8);
    const bytes = encodeSafetensors({
      [`${key}.hada_w1_a`]: { dtype: 'F32', shape: [out, 2], data: fill(out * 2, 1.3) },
      [`${key}.hada_w1_b`]: { dtype: 'F32', shape: [2, inDim], data: fill(2 * inDim, 0.7) },
      [`${key}.hada_w2_a`]: { dtype: 'F32', shape: [out, 2], data: fill(out * 2, 2.1) },
      [`${key}.hada_w2_b`]: { dtype: 'F32', shape: [2, inDim], data: fill(2 * inDim, 0.3) },
      [`${key}.alpha`]: { dtype: 'F32', shape: [], data: Float32Array.of(2) },
    });
    const digest = await sha256(bytes);
    const file = join(fx.dir, 'blobs', 'sha256', digestHex(digest));
    await writeFile(file, bytes);
    const src = await mkdtemp(join(tmpdir(), 'fuseload-switch-loha-'));
    roots.push(src);
    await writeFile(join(src, 'loha.safetensors'), bytes);
    const report = await build({ base: join(fx.dir, '..', 'src', 'model.onnx'), loras: [{ path: join(src, 'loha.safetensors'), scale: 1 }], name: 'sample', out: join(src, 'out'), store: null, shardSize: SHARD_SIZE });
    const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(report.manifest)), 'test', report.fingerprint));
    loha = { digest, merged: await reference(join(src, 'out', 'blobs', 'sha256', digestHex(manifest.graph.digest))) };
  });

  it('loadPipeline warns, builds a session over shard copies and gives the build-time numbers; setLoras says unsupported', async () => {
    const r = await rig();
    const p = await load(r.loader);
    const made = r.engine.components;
    await expect(p.setLoras([{ digest: loha.digest, scale: 1 }])).rejects.toMatchObject({ code: 'unsupported', message: expect.stringMatching(/ff\.net\.2|Transpose/) });
    // The handle still runs the base after the refused switch.
    expect(maxAbsDiff(await image(p), want.get('base')!)).toBeLessThan(1e-6);
    const q = await load(r.loader, [{ digest: loha.digest, scale: 1 }]);
    expect(r.engine.components).toBe(made + 1);
    expect(r.warnings.some((w) => /plain LoRA only.*merging into copies/.test(w))).toBe(true);
    expect(q.info.loraSwitch).toBeUndefined();
    expect(maxAbsDiff(await image(q), loha.merged)).toBeLessThan(1e-5);
    await expect(q.setLoras([])).rejects.toMatchObject({ code: 'unsupported' });
    await q.dispose();
    await p.dispose();
  });

  it('switching off (loraSwitch: false) keeps the copy-on-merge path for every overlay', async () => {
    const r = await rig();
    const off = createLoader({ engine: r.engine, store: r.store, warn: () => {}, loraSwitch: false });
    const a = await off.loadPipeline({ origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'cpu', loras: fx.overlays(CASES[0]) });
    const b = await off.loadPipeline({ origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'cpu', loras: fx.overlays(CASES[2]) });
    expect(r.engine.components).toBe(2);
    expect(maxAbsDiff(await image(b), want.get(CASES[2].name)!)).toBeLessThan(1e-5);
    await a.dispose();
    await b.dispose();
  });
});

// ---- the real-exporter pipeline (torch 1.13 export): a kohya LoRA on text encoder and UNet ----

const KOHYA = fixtures.loras['kohya-te-unet'];


describe('the real-exporter pipeline (sd-tiny): kohya LoRA on text encoder and UNet', () => {
  let work: string;
  let sd: Awaited<ReturnType<typeof startCountingOrigin>>;
  let baseFp: string;
  let mergedFp: string;
  let loraDigest: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'fuseload-switch-sd-'));
    roots.push(work);
    const dir = join(work, 'origin');
    const base = await build({ base: join(FIX, 'sd-tiny'), name: 'sd-tiny', out: dir, store: null });
    const merged = await build({ base: join(FIX, 'sd-tiny'), loras: [{ path: join(FIX, KOHYA.file), scale: KOHYA.scale }], name: 'sd-tiny', out: dir, store: null });
    baseFp = base.fingerprint;
    mergedFp = merged.fingerprint;
    loraDigest = merged.loras[0].digest;
    await writeTag(dir, 'sd-tiny', base.fingerprint);
    sd = await startCountingOrigin(dir);
  });
  afterAll(async () => {
    await sd?.close();
  });

  it('switches on, off and back without a new session; outputs are torch\'s merged model', async () => {
    const r = await rig();
    const opts = (fingerprint: string, loras?: LoraOverlay[]) => ({ origin: sd.url, model: 'sd-tiny', fingerprint, device: 'cpu' as const, loras });
    const p = await r.loader.loadPipeline(opts(baseFp));
    const made = r.engine.components;
    expect(made).toBe(3);
    const baseOutputs = fixtures.pipelines['sd-tiny'].components;
    for (let round = 0; round < 2; round++) {
      await p.setLoras([{ digest: loraDigest, scale: KOHYA.scale }]);
      expect(p.info.overlays[0].components.text_encoder).toBeGreaterThan(0);
      expect(p.info.overlays[0].components.unet).toBeGreaterThan(0);
      for (const role of ['text_encoder', 'unet'] as const) {
        const c = p.info.loraSwitch![role]!;
        expect(c.fed + c.branched, role).toBeGreaterThan(0);
      }
      for (const [role, outputs] of Object.entries(KOHYA.outputs) as [Role, Record<string, string>][]) await expectOutputs(p.sessions[role]!, role, outputs);
      await expectOutputs(p.sessions.vae_decoder!, 'vae_decoder', baseOutputs.vae_decoder.base_outputs);
      await p.setLoras([]);
      for (const role of ['text_encoder', 'unet', 'vae_decoder'] as const) await expectOutputs(p.sessions[role]!, role, baseOutputs[role].base_outputs);
    }
    expect(r.engine.components).toBe(made);

    await p.dispose();
  });
});

describe('generate() on switched sessions (tiny-sd, a LoRA on every Linear and Conv of text encoder and UNet)', () => {
  it('makes the picture of the build-merged pipeline; after setLoras([]) the base picture; one session per component throughout', async () => {
    const work = await mkdtemp(join(tmpdir(), 'fuseload-switch-tiny-'));
    roots.push(work);
    const tiny = await tinySdWithLora(work);
    const served = await startOrigin({ root: tiny.dir });
    try {
      const r = await rig();
      const opts = (fingerprint: string, loras?: LoraOverlay[]) => ({ origin: served.url, model: tiny.model, fingerprint, device: 'cpu' as const, loras });
      const options = { prompt: 'a photo of a red cat', seed: 7, steps: 3, guidanceScale: 3, scheduler: 'euler' as const, width: 64, height: 48 };
      const merged = await r.loader.loadPipeline(opts(tiny.merged));
      const base = await r.loader.loadPipeline(opts(tiny.base));
      const [wantMerged, wantBase] = [(await merged.generate(options)).image.data, (await base.generate(options)).image.data];
      await merged.dispose();
      const made = r.engine.components;
      const p = await r.loader.loadPipeline(opts(tiny.base, [{ digest: tiny.lora, scale: tiny.scale }]));
      expect(p.info.loraSwitch!.unet!.fed + p.info.loraSwitch!.unet!.branched).toBeGreaterThan(0);
      expect(p.info.loraSwitch!.text_encoder!.fed + p.info.loraSwitch!.text_encoder!.branched).toBeGreaterThan(0);
      const got = (await p.generate(options)).image.data;
      expect(maxAbsDiff(wantMerged, wantBase)).toBeGreaterThan(8); // the LoRA does change the picture
      expect(maxAbsDiff(got, wantMerged)).toBeLessThanOrEqual(1);
      await p.setLoras([]);
      expect(maxAbsDiff((await p.generate(options)).image.data, wantBase)).toBe(0);
      expect(r.engine.components).toBe(made);
      await p.dispose();
      await base.dispose();
    } finally {
      await served.close();
    }
  });
});
