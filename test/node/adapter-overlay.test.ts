/**
 * Every adapter type, merged by `fuseload build` and overlaid at load time on the base, in Node
 * with onnxruntime-node: the overlay's shards must be the build's shards byte for byte (one
 * recipe, common/lora/merge-recipe.ts), through the JavaScript math and through onnxruntime,
 * and the merged weights must be the numpy reference (test/fixtures/adapters/cases.json).
 * Then an SDXL-named kohya file against a UNet in SDXL's diffusers layout
 * (test/fixtures/adapters/make_sdxl_layout.py): every key lands, every weight as numpy merged it.
 */
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex, sha256 } from '../../common/digest.ts';
import { isFuseloadError } from '../../common/errors.ts';
import { createLoader } from '../../common/loader/index.ts';
import { bytesToF32, type FloatDtype } from '../../common/lora/dtype.ts';
import { decodeManifest, type Manifest, schema1, type TensorEntry } from '../../common/manifest.ts';
import { type Engine, type ExternalDataFile, externalBytes, type Feeds } from '../../common/pipeline.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { MemoryStore } from '../../common/store.ts';
import { build, type BuildReport } from '../../tools/build/build.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { DTYPE_CODES, encodeModel } from '../../tools/onnx/model.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { random } from '../fixtures/models.ts';
import { type Origin, startOrigin } from '../support/origin.ts';

interface FixtureCase {
  name: string;
  type: string;
  target: number[];
  tolerance: 'fp32' | 'fp16' | 'bf16';
  tensors: Record<string, { dtype: 'F32' | 'F16' | 'BF16'; shape: number[]; b64: string }>;
  base: string;
  delta: string;
  merged: { scale: number; b64: string }[];
}
const CASES = (JSON.parse(await readFile(new URL('../fixtures/adapters/cases.json', import.meta.url), 'utf8')) as { cases: FixtureCase[] }).cases;
const SDXL_DIR = new URL('../fixtures/adapters/sdxl-layout/', import.meta.url).pathname;

function raw(b64: string): ArrayBuffer {
  const b = Buffer.from(b64, 'base64');
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return copy.buffer;
}
const f32 = (b64: string) => new Float32Array(raw(b64));
const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}
function worst(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let w = 0;
  let peak = 1;
  for (let i = 0; i < want.length; i++) {
    w = Math.max(w, Math.abs(got[i] - want[i]));
    peak = Math.max(peak, Math.abs(want[i]));
  }
  return w / peak;
}

let work: string;
const origins: Origin[] = [];
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-adapter-overlay-'));
});
afterAll(async () => {
  for (const o of origins) await o.close();
  await rm(work, { recursive: true, force: true });
});

interface Artifact {
  dir: string;
  report: BuildReport;
  manifest: Manifest;
}
async function buildArtifact(out: string, base: string, loras: { path: string; scale: number }[], ortMergeMinElements?: number): Promise<Artifact> {
  const report = await build({ base, loras, name: 'adapters', out, store: null, shardSize: 16 * 1024, ortMergeMinElements });
  const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(report.manifest)), 'test', report.fingerprint));
  return { dir: out, report, manifest };
}

/** A tensor of an artifact, fp32, as stored. */
async function tensorOf(a: Artifact, name: string): Promise<{ entry: TensorEntry; values: Float32Array }> {
  const entry = a.manifest.tensors.find((t) => t.name === name);
  if (!entry) throw new Error(`no tensor "${name}"`);
  const shard = await readFile(join(a.dir, 'blobs', 'sha256', digestHex(a.manifest.shards[entry.shard].digest)));
  return { entry, values: bytesToF32(shard.subarray(entry.offset, entry.offset + entry.length), entry.dtype as FloatDtype) };
}

/** Serves the base artifact (with the LoRA files as blobs) and overlays `loras` on it; returns the external data the engine got. */
async function overlay(base: Artifact, loras: { path: string; scale: number }[], ortMinElements?: number, feeds?: Feeds) {
  for (const l of loras) await copyFile(l.path, join(base.dir, 'blobs', 'sha256', digestHex(await sha256(new Uint8Array(await readFile(l.path))))));
  const origin = await startOrigin({ root: base.dir });
  origins.push(origin);
  const created: ExternalDataFile[][] = [];
  const inner = new OrtNodeEngine();
  const engine: Engine = {
    providers: (d) => inner.providers(d),
    async create(graph, files, provider) {
      if (files.length) created.push(files);
      return inner.create(graph, files, provider);
    },
  };
  const warnings: string[] = [];
  const loader = createLoader({ engine, store: new MemoryStore(), warn: (m) => warnings.push(m), overlayOrtMinElements: ortMinElements });
  const overlays = await Promise.all(loras.map(async (l) => ({ digest: await sha256(new Uint8Array(await readFile(l.path))), scale: l.scale })));
  const p = await loader.loadPipeline({ origin: origin.url, model: 'adapters', fingerprint: base.report.fingerprint, device: 'cpu', loras: overlays });
  const outputs = feeds ? await p.run(feeds) : undefined;
  await p.dispose();
  return { files: created.at(-1)!, warnings, outputs, info: p.info };
}

/** Every shard of the overlay is the build's shard, byte for byte. */
async function expectSameShards(files: ExternalDataFile[], base: Artifact, merged: Artifact) {
  expect(merged.manifest.shards).toHaveLength(base.manifest.shards.length);
  let changed = 0;
  for (const [i, shard] of base.manifest.shards.entries()) {
    const file = files.find((f) => f.path === digestHex(shard.digest))!;
    expect(await sha256(externalBytes(file)), `shard ${i}`).toBe(merged.manifest.shards[i].digest);
    if (merged.manifest.shards[i].digest !== shard.digest) changed++;
  }
  expect(changed).toBeGreaterThan(0);
}

// ---- every type of cases.json on one model ----

const SCALE = 0.8;
const BIG = 512; // wide enough that the norm weight and the bias are in the tensor index (≥ 1 KiB) even in fp16
const CASE_MODULE = (i: number) => `lora_unet_cases_${i}_proj`;
const caseIndex = (name: string) => CASES.findIndex((c) => c.name === name);

/** One layer per case with the case's base weight (linear cases alternate Gemm [out,in] and MatMul [in,out]), plus a wide Gemm + LayerNorm. */
function casesModel(dtype: FloatDtype) {
  const g = new GraphBuilder();
  const x20 = g.input('x20', { dtype: 'float32', dims: [3, 20] });
  const img = g.input('img', { dtype: 'float32', dims: [1, 6, 5, 5] });
  const x16 = g.input('x16', { dtype: 'float32', dims: [3, 16] });
  const weight = (name: string, dims: number[], values: Float32Array, path: string) => {
    const w = g.weight(name, dims, values, dtype);
    return dtype === 'float32' ? w : g.op('Cast', [w], { to: DTYPE_CODES.float32 }, `${path}/Cast_${name.split('.').pop()}`);
  };
  const out = (y: string, name: string, dims: number[]) => {
    g.rename(y, name);
    g.output(name, { dtype: 'float32', dims });
  };
  CASES.forEach((c, i) => {
    const module = `cases.${i}.proj`;
    const path = `/cases.${i}/proj`;
    const base = f32(c.base);
    if (c.target.length === 2) {
      const [o, k] = c.target;
      if (c.type === 'diff' || i % 2 === 0) {
        const y = g.op('Gemm', [x20, weight(`${module}.weight`, c.target, base, path), weight(`${module}.bias`, [o], random(300 + i, o, 0.1), path)], { transB: 1 }, `${path}/Gemm`);
        out(y, `y${i}`, [3, o]);
      } else {
        out(g.op('MatMul', [x20, weight(`onnx::MatMul_${500 + i}`, [k, o], transpose(base, o, k), path)], {}, `${path}/MatMul`), `y${i}`, [3, o]);
      }
    } else if (c.target.length === 4) {
      out(g.op('Conv', [img, weight(`${module}.weight`, c.target, base, path)], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }, `${path}/Conv`), `y${i}`, [1, c.target[0], 5, 5]);
    } else {
      const n = c.target[0];
      const y = g.op('LayerNormalization', [x16, weight(`${module}.weight`, [n], base, path), weight(`${module}.bias`, [n], random(400 + i, n, 0.1), path)], { axis: -1, epsilon: { float: 1e-5 } }, `${path}/LayerNormalization`);
      out(y, `y${i}`, [3, n]);
    }
  });
  const h = g.op('Gemm', [x16, weight('big.proj.weight', [BIG, 16], random(1, BIG * 16, 0.25), '/big/proj'), weight('big.proj.bias', [BIG], random(2, BIG, 0.1), '/big/proj')], { transB: 1 }, '/big/proj/Gemm');
  const y = g.op('LayerNormalization', [h, weight('big.norm.weight', [BIG], random(3, BIG, 0.1).map((v) => 1 + v), '/big/norm'), weight('big.norm.bias', [BIG], random(4, BIG, 0.1), '/big/norm')], { axis: -1, epsilon: { float: 1e-5 } }, '/big/norm/LayerNormalization');
  out(y, 'ybig', [3, BIG]);
  return g.model(17, 'fuseload adapter fixture');
}

const t32 = (shape: number[], data: Float32Array): SafetensorsInput => ({ dtype: 'F32', shape, data });
const BIG_DIFF = { diff: random(10, BIG * 16, 0.05), diffB: random(11, BIG, 0.05), wNorm: random(12, BIG, 0.05), bNorm: random(13, BIG, 0.05) };
const SCALE_B = -0.6;
const SCALE_C = 1.1;

/**
 * A: every case of cases.json, one module each (every type, F32/F16/BF16 factors, an OFT module);
 * B: full diffs on the wide layer and its norm; C: plain LoRA on layers A and B also touch
 * (LoRA + LoRA stacks into one Gemm; LoRA + LoKr and LoRA + diff are JavaScript).
 */
async function writeLoras(dir: string) {
  const a: Record<string, SafetensorsInput> = {};
  CASES.forEach((c, i) => {
    for (const [suffix, t] of Object.entries(c.tensors)) a[`${CASE_MODULE(i)}.${suffix}`] = { dtype: t.dtype, shape: t.shape, data: t.dtype === 'F32' ? f32(t.b64) : new Uint16Array(raw(t.b64)) };
  });
  a['lora_unet_cases_99_proj.oft_blocks'] = t32([4, 3, 3], new Float32Array(36));
  const b = {
    'lora_unet_big_proj.diff': t32([BIG, 16], BIG_DIFF.diff),
    'lora_unet_big_proj.diff_b': t32([BIG], BIG_DIFF.diffB),
    'lora_unet_big_norm.w_norm': t32([BIG], BIG_DIFF.wNorm),
    'lora_unet_big_norm.b_norm': t32([BIG], BIG_DIFF.bNorm),
  };
  const c: Record<string, SafetensorsInput> = {};
  for (const [module, out, k] of [
    [CASE_MODULE(caseIndex('lora linear')), 12, 20],
    [CASE_MODULE(caseIndex('lokr both full (alpha ignored)')), 12, 20],
    ['lora_unet_big_proj', BIG, 16],
  ] as const) {
    c[`${module}.lora_down.weight`] = t32([3, k], random(20 + out, 3 * k, 0.3));
    c[`${module}.lora_up.weight`] = t32([out, 3], random(21 + out, out * 3, 0.3));
    c[`${module}.alpha`] = t32([], Float32Array.of(1.5));
  }
  const paths = { a: join(dir, 'a.safetensors'), b: join(dir, 'b.safetensors'), c: join(dir, 'c.safetensors') };
  await writeFile(paths.a, encodeSafetensors(a));
  await writeFile(paths.b, encodeSafetensors(b));
  await writeFile(paths.c, encodeSafetensors(c));
  return paths;
}

const TOLERANCE: Record<FloatDtype, number> = { float32: 0, float16: 2e-3, bfloat16: 2e-2 };
const CASE_TOLERANCE = { fp32: 2e-6, fp16: 2e-3, bf16: 2e-2 };

describe.each(['float32', 'float16', 'bfloat16'] as FloatDtype[])('every adapter type on %s weights', (dtype) => {
  let dir: string;
  let baseModel: string;
  let loras: Awaited<ReturnType<typeof writeLoras>>;
  let base: Artifact;
  const feeds: Feeds = {
    x20: { type: 'float32', dims: [3, 20], data: random(50, 60) },
    img: { type: 'float32', dims: [1, 6, 5, 5], data: random(51, 150) },
    x16: { type: 'float32', dims: [3, 16], data: random(52, 48) },
  };
  beforeAll(async () => {
    dir = join(work, dtype);
    baseModel = join(dir, 'base.onnx');
    await mkdir(dir, { recursive: true });
    await writeFile(baseModel, encodeModel(casesModel(dtype)));
    loras = await writeLoras(dir);
    base = await buildArtifact(join(dir, 'base'), baseModel, []);
  });

  for (const ortMin of [undefined, 0]) {
    const how = ortMin === undefined ? 'JavaScript math' : 'onnxruntime for LoRA, LoHa and LoKr';
    it(`build-time merge = load-time overlay, byte for byte (${how}), and = the numpy reference`, async () => {
      const all = [
        { path: loras.a, scale: SCALE },
        { path: loras.b, scale: SCALE_B },
        { path: loras.c, scale: SCALE_C },
      ];
      const merged = await buildArtifact(join(dir, `merged-${ortMin ?? 'js'}`), baseModel, all, ortMin);
      const applied = await overlay(base, all, ortMin, feeds);
      await expectSameShards(applied.files, base, merged);
      expect(applied.warnings).toEqual([expect.stringMatching(/^LoRA [0-9a-f:sha]+: 1 module\(s\) are OFT, which fuseload cannot merge \(first "cases_99_proj"\)$/)]);

      // Same weights, same outputs.
      const session = await ort.InferenceSession.create(join(merged.dir, 'blobs', 'sha256', digestHex(merged.manifest.graph.digest)));
      const want = await session.run(Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, new ort.Tensor('float32', v.data as Float32Array, v.dims as number[])])));
      await session.release();
      for (const name of Object.keys(want)) expect(Array.from(applied.outputs![name].data as Float32Array), name).toEqual(Array.from(want[name].data as Float32Array));

      // Each case alone on its layer (A only) lands on the numpy reference.
      const touchedByC = new Set([caseIndex('lora linear'), caseIndex('lokr both full (alpha ignored)')]);
      for (const [i, c] of CASES.entries()) {
        if (touchedByC.has(i) || c.target.length === 1) continue;
        const gemm = c.target.length === 4 || c.type === 'diff' || i % 2 === 0;
        const got = await tensorOf(merged, gemm ? `cases.${i}.proj.weight` : `onnx::MatMul_${500 + i}`);
        const torch = gemm ? got.values : transpose(got.values, c.target[1], c.target[0]);
        const ref = c.merged.find((m) => m.scale === SCALE);
        const expected = ref ? f32(ref.b64) : Float32Array.from(f32(c.base), (w, k) => w + SCALE * f32(c.delta)[k]);
        expect(worst(torch, expected), c.name).toBeLessThanOrEqual(Math.max(CASE_TOLERANCE[c.tolerance], TOLERANCE[dtype]));
      }
      // B: full diffs on a weight (with C's LoRA), its bias, and a norm's weight and bias.
      for (const [name, delta] of [
        ['big.proj.bias', BIG_DIFF.diffB],
        ['big.norm.weight', BIG_DIFF.wNorm],
        ['big.norm.bias', BIG_DIFF.bNorm],
      ] as const) {
        const before = (await tensorOf(base, name)).values;
        const after = (await tensorOf(merged, name)).values;
        expect(worst(after, Array.from(before, (v, k) => v + SCALE_B * delta[k])), name).toBeLessThanOrEqual(Math.max(1e-6, TOLERANCE[dtype]));
      }

      // The report: every key of A lands except the OFT module and the small norm and bias the graph keeps inline.
      const reportA = merged.report.loras.find((l) => l.source === 'a.safetensors')!;
      const types: Record<string, { matched: number; unmatched: number }> = { OFT: { matched: 0, unmatched: 1 } };
      for (const c of CASES) {
        const n = Object.keys(c.tensors).length;
        const t = (types[c.type] ??= { matched: 0, unmatched: 0 });
        if (c.type === 'norm') t.unmatched += n;
        else if (c.type === 'diff') {
          t.matched += n - 1;
          t.unmatched += 1;
        } else t.matched += n;
      }
      expect(reportA.types).toEqual(types);
      expect(reportA.unmatchedKeys).toEqual([`${CASE_MODULE(caseIndex('diff with diff_b'))}.diff_b`, `${CASE_MODULE(caseIndex('norm (w_norm, b_norm)'))}.b_norm`, `${CASE_MODULE(caseIndex('norm (w_norm, b_norm)'))}.w_norm`, 'lora_unet_cases_99_proj.oft_blocks'].sort());
      expect(merged.report.loras.find((l) => l.source === 'b.safetensors')).toMatchObject({ matched: 4, unmatched: 0, types: { diff: { matched: 2, unmatched: 0 }, norm: { matched: 2, unmatched: 0 } } });
      expect(applied.info.overlays.map((o) => o.matched).sort()).toEqual(merged.report.loras.map((l) => l.matched).sort());
    });
  }

  it('scale 0 is the base: the same shards at build time, the very same buffers at load time', async () => {
    const zero = await buildArtifact(join(dir, 'zero'), baseModel, [{ path: loras.a, scale: 0 }]);
    expect(zero.manifest.shards).toEqual(base.manifest.shards);
    const applied = await overlay(base, [{ path: loras.a, scale: 0 }]);
    for (const [i, s] of base.manifest.shards.entries()) expect(await sha256(externalBytes(applied.files.find((f) => f.path === digestHex(s.digest))!)), `shard ${i}`).toBe(s.digest);
  });
});

describe('factors that do not fit, at load time', () => {
  it('a LoHa whose product does not fit its layer is a one-line shape-mismatch naming the key; nothing is merged', async () => {
    const dir = join(work, 'misfit');
    await mkdir(dir, { recursive: true });
    const model = join(dir, 'base.onnx');
    await writeFile(model, encodeModel(casesModel('float32')));
    const base = await buildArtifact(join(dir, 'base'), model, []);
    const i = caseIndex('loha linear');
    const bad = join(dir, 'bad.safetensors');
    const m = CASE_MODULE(i);
    await writeFile(
      bad,
      encodeSafetensors({
        [`${m}.hada_w1_a`]: t32([12, 2], random(1, 24)),
        [`${m}.hada_w1_b`]: t32([2, 21], random(2, 42)),
        [`${m}.hada_w2_a`]: t32([12, 2], random(3, 24)),
        [`${m}.hada_w2_b`]: t32([2, 21], random(4, 42)),
      }),
    );
    const error = await overlay(base, [{ path: bad, scale: 1 }]).catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('shape-mismatch');
    expect(error.message).not.toContain('\n');
    expect(error.message).toContain(`"${m}.hada_w1_a"`);
    const built = await build({ base: model, loras: [{ path: bad, scale: 1 }], name: 'adapters', out: join(dir, 'out'), store: null }).catch((e) => e);
    // The build says the same of the same key, with the file's name in front.
    const tail = (m: string) => m.slice(m.indexOf('LoHa'));
    expect(built.message).toBe(`bad.safetensors: ${tail(error.message)}`);
  });
});

// ---- SDXL: kohya's SGM names against diffusers' module names ----

interface SdxlModule {
  module: string;
  kohya: string;
  type: 'lora' | 'loha' | 'lokr';
  op: 'Linear' | 'Conv';
  shape: number[];
  merged_head: number[];
  merged_sum: number;
  merged_sumsq: number;
}
const SDXL = JSON.parse(await readFile(join(SDXL_DIR, 'sdxl-layout.json'), 'utf8')) as { scale: number; modules: SdxlModule[] };

describe('an SDXL kohya LoRA (SGM block names) on a UNet in diffusers names', () => {
  const unet = join(SDXL_DIR, 'unet.onnx');
  const lora = join(SDXL_DIR, 'kohya-sgm.safetensors');
  let base: Artifact;
  beforeAll(async () => {
    base = await buildArtifact(join(work, 'sdxl-base'), unet, []);
  });

  it('covers SDXL’s blocks: down_blocks.0 without attentions, 2 transformer blocks in down_blocks.2, 3 resnets per up block', () => {
    const names = SDXL.modules.map((m) => m.module);
    expect(names.some((n) => n.startsWith('down_blocks.0.attentions'))).toBe(false);
    expect(names).toContain('down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k');
    expect(names).toContain('up_blocks.2.resnets.2.conv_shortcut');
    expect(names).toContain('up_blocks.1.upsamplers.0.conv');
    expect(names).toContain('add_embedding.linear_2');
    expect(SDXL.modules.find((m) => m.module === 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q')?.kohya).toBe('lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q');
  });

  for (const ortMin of [undefined, 0]) {
    it(`every key lands on its module, at the numpy reference; the overlay is the build byte for byte (${ortMin === undefined ? 'JavaScript' : 'onnxruntime'})`, async () => {
      const merged = await buildArtifact(join(work, `sdxl-merged-${ortMin ?? 'js'}`), unet, [{ path: lora, scale: SDXL.scale }], ortMin);
      const report = merged.report.loras[0];
      const keys = { lora: 3, loha: 5, lokr: 4 };
      const types: Record<string, { matched: number; unmatched: number }> = {};
      for (const m of SDXL.modules) (types[m.type] ??= { matched: 0, unmatched: 0 }).matched += keys[m.type];
      expect(report).toMatchObject({ unmatched: 0, matched: Object.values(types).reduce((n, t) => n + t.matched, 0), types });
      expect(merged.report.mergedTensors).toBe(SDXL.modules.length);

      for (const m of SDXL.modules) {
        const entry = merged.manifest.tensors.find((t) => t.module === m.module);
        expect(entry, m.module).toBeDefined();
        const { values } = await tensorOf(merged, entry!.name);
        const torch = entry!.layout === 'io' ? transpose(values, entry!.shape[0], entry!.shape[1]) : values;
        expect(Array.from(torch.subarray(0, 4)).map((v, k) => Math.abs(v - m.merged_head[k])).every((d) => d < 1e-5), m.module).toBe(true);
        let sum = 0;
        let sumsq = 0;
        for (const v of torch) {
          sum += v;
          sumsq += v * v;
        }
        expect(Math.abs(sum - m.merged_sum), m.module).toBeLessThan(1e-6 * numel(m.shape) + 1e-5);
        expect(Math.abs(sumsq - m.merged_sumsq) / m.merged_sumsq, m.module).toBeLessThan(1e-6);
      }
      const applied = await overlay(base, [{ path: lora, scale: SDXL.scale }], ortMin);
      await expectSameShards(applied.files, base, merged);
      expect(applied.warnings).toEqual([]);
    });
  }
});

