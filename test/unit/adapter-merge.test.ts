/**
 * Every adapter type through the whole LoRA path: a safetensors file read by readLora,
 * matched by matchLora against a tensor index, merged by the one recipe
 * (common/lora/merge-recipe.ts) that `fuseload build` and load-time overlays both call —
 * against the numpy reference of test/fixtures/adapters/cases.json, on every layout, with the
 * onnxruntime forms (build: merge-ort.ts, load: EngineMerger) giving the same bytes.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isFuseloadError } from '../../common/errors.ts';
import { type LoraModule, readLora } from '../../common/lora/adapter.ts';
import { bytesToF32, f32ToBf16, f32ToBytes, f32ToF16 } from '../../common/lora/dtype.ts';
import { type LoraTargetEntry, matchLora, routeLora } from '../../common/lora/match.ts';
import { type MergeApplication, mergeEngine, type MergeTarget, mergeTensorBytes, type OrtMerge, ortInputs } from '../../common/lora/merge-recipe.ts';
import { EngineMerger, mergeRuns } from '../../common/lora/overlay-merge.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { build } from '../../tools/build/build.ts';
import { runMergeWithOrt } from '../../tools/build/merge-ort.ts';
import { inspectFile } from '../../tools/commands/inspect.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { fixtureModel, LAYERS, loraFactors, random, writeModel } from '../fixtures/models.ts';

// ---- the committed numpy reference (make_adapters.py) ----

interface FixtureTensor {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  b64: string;
}
interface FixtureCase {
  name: string;
  type: string;
  target: number[];
  tolerance: 'fp32' | 'fp16' | 'bf16';
  tensors: Record<string, FixtureTensor>;
  base: string;
  delta: string;
  merged: { scale: number; b64: string }[];
  biasDelta?: string;
}
const CASES = (JSON.parse(readFileSync(new URL('../fixtures/adapters/cases.json', import.meta.url), 'utf8')) as { cases: FixtureCase[] }).cases;

function raw(b64: string): ArrayBuffer {
  const b = Buffer.from(b64, 'base64');
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return copy.buffer;
}
const f32 = (b64: string) => new Float32Array(raw(b64));
const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The case's tensors under a kohya module name, as a LoRA file holds them. */
function caseTensors(c: FixtureCase, module: string): Record<string, SafetensorsInput> {
  const out: Record<string, SafetensorsInput> = {};
  for (const [suffix, t] of Object.entries(c.tensors)) {
    out[`${module}.${suffix}`] = { dtype: t.dtype, shape: t.shape, data: t.dtype === 'F32' ? f32(t.b64) : new Uint16Array(raw(t.b64)) };
  }
  return out;
}

function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}

const RELATIVE = { fp32: 2e-6, fp16: 2e-3, bf16: 2e-2 };
function expectClose(got: Float32Array, want: ArrayLike<number>, relative: number, what: string) {
  expect(got.length, what).toBe(want.length);
  let worst = 0;
  let peak = 1;
  for (let i = 0; i < want.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]));
    peak = Math.max(peak, Math.abs(want[i]));
  }
  expect(worst / peak, `${what}: worst error ${worst} against peak ${peak}`).toBeLessThanOrEqual(relative);
}

function worstMove(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function layoutsOf(target: number[]): MergeTarget['layout'][] {
  return target.length === 4 ? ['oihw'] : target.length === 2 ? ['oi', 'io'] : ['none'];
}
/** The stored form of a torch-layout weight. */
const stored = (w: Float32Array, target: number[], layout: MergeTarget['layout']) => (layout === 'io' ? transpose(w, target[0], target[1]) : w);
const storedShape = (target: number[], layout: MergeTarget['layout']) => (layout === 'io' ? [target[1], target[0]] : target);

/** One case read back from a LoRA file: its module, and the application at `scale`. */
function readCase(c: FixtureCase, i: number): LoraModule {
  const module = `lora_unet_cases_${i}_proj`;
  const lora = readLora(encodeSafetensors(caseTensors(c, module)), 'cases.safetensors');
  expect(lora.unrecognised).toEqual([]);
  const m = lora.modules.get(`unet|cases_${i}_proj`)!;
  expect(m.adapter?.type, c.name).toBe(c.type);
  return m;
}
const app = (module: LoraModule, scale: number, part: MergeApplication['part'] = 'weight', digest = 'sha256:a'): MergeApplication => ({ module, part, scale, digest, source: 'cases.safetensors' });

const engine = new OrtNodeEngine();
const merger = new EngineMerger(engine, (m) => {
  throw new Error(m);
});
/** The build's onnxruntime merge (onnxruntime-node, one thread) and the overlay's (the Engine). */
const buildOrt: OrtMerge = (bytes, dtype, inputs) => runMergeWithOrt(bytes, dtype, inputs);
const loadOrt: OrtMerge = async (bytes, dtype, inputs) => {
  const dst = new Uint8Array(bytes.length);
  return (await merger.run(bytes, dst, dtype, inputs, ['cpu'])) ? dst : null;
};

describe('every adapter type merges through the shared recipe to the numpy reference', () => {
  CASES.forEach((c, i) => {
    for (const layout of layoutsOf(c.target)) {
      it(`${c.name} on a ${layout} weight`, async () => {
        const module = readCase(c, i);
        const shape = storedShape(c.target, layout);
        const target: MergeTarget = { name: 'w', dtype: 'float32', shape, layout };
        const base = f32(c.base);
        const bytes = new Uint8Array(stored(base, c.target, layout).buffer.slice(0));
        for (const m of c.merged) {
          const merged = bytesToF32(await mergeTensorBytes(bytes, target, [app(module, m.scale)]), 'float32');
          expectClose(merged, stored(f32(m.b64), c.target, layout), RELATIVE[c.tolerance], `scale ${m.scale}`);
        }
        // Scale 0 is the base, the very bytes.
        expect(await mergeTensorBytes(bytes, target, [app(module, 0)])).toBe(bytes);
        if (c.biasDelta) {
          const bias = Float32Array.from({ length: c.target[0] }, (_, k) => k / 10);
          const got = bytesToF32(await mergeTensorBytes(new Uint8Array(bias.buffer.slice(0)), { name: 'b', dtype: 'float32', shape: [c.target[0]], layout: 'none' }, [app(module, 0.8, 'bias')]), 'float32');
          const want = Array.from(bias, (b, k) => b + 0.8 * f32(c.biasDelta!)[k]);
          expectClose(got, want, RELATIVE.fp32, 'bias');
        }
      });
    }
  });

  it.each(['float16', 'bfloat16'] as const)('on %s weights: fp32 math from the stored values, cast back once', async (dtype) => {
    const c = CASES.find((x) => x.name === 'loha linear')!;
    const module = readCase(c, 0);
    const base = bytesToF32(f32ToBytes(f32(c.base), dtype).slice(), dtype);
    const target: MergeTarget = { name: 'w', dtype, shape: c.target, layout: 'oi' };
    const merged = bytesToF32(await mergeTensorBytes(f32ToBytes(base, dtype).slice(), target, [app(module, 0.8)]), dtype);
    const delta = f32(c.delta);
    const want = Float32Array.from(base, (w, k) => w + 0.8 * delta[k]);
    // One rounding to the stored dtype (the math is fp32 throughout).
    expectClose(merged, want, dtype === 'float16' ? 2e-3 : 2e-2, dtype);
    expect(merged.some((v, k) => v !== base[k])).toBe(true);
  });
});

describe('onnxruntime merges of LoRA, LoHa and LoKr', () => {
  // The forms onnxruntime can run: plain LoRA (stacked), one LoHa or one LoKr without Tucker or DoRA.
  const ortCases = CASES.map((c, i) => ({ c, i })).filter(({ c }) => ['lora linear', 'lora conv 3x3', 'loha linear', 'lokr w1 full, w2 low-rank', 'lokr both full (alpha ignored)', 'lokr w1 low-rank, w2 full', 'lokr conv, flat w2', 'lora fp16 factors'].includes(c.name));
  for (const { c, i } of ortCases) {
    for (const layout of layoutsOf(c.target)) {
      for (const dtype of ['float32', 'float16'] as const) {
        it(`${c.name}, ${layout}, ${dtype}: build = load bit for bit, and = the JavaScript math`, async () => {
          const module = readCase(c, i);
          const target: MergeTarget = { name: 'w', dtype, shape: storedShape(c.target, layout), layout };
          const bytes = f32ToBytes(stored(f32(c.base), c.target, layout), dtype).slice();
          const apps = [app(module, 0.8)];
          expect(mergeEngine(target, apps, { ortMinElements: 0, ort: buildOrt })).toBe('ort');
          const built = await mergeTensorBytes(bytes, target, apps, { ortMinElements: 0, ort: buildOrt });
          const loaded = await mergeTensorBytes(bytes, target, apps, { ortMinElements: 0, ort: loadOrt });
          expect(Buffer.from(loaded).equals(Buffer.from(built))).toBe(true);
          const js = bytesToF32(await mergeTensorBytes(bytes, target, apps), dtype);
          expectClose(bytesToF32(built, dtype), js, dtype === 'float32' ? 2e-6 : 2e-3, 'ort vs js');
          const want = stored(f32(c.merged.find((m) => m.scale === 0.8)!.b64), c.target, layout);
          expectClose(bytesToF32(built, dtype), want, dtype === 'float32' ? RELATIVE[c.tolerance] : 2e-3, 'ort vs numpy');
        });
      }
    }
  }

  it('a LoHa and a LoKr over many runs of rows (the LoKr never crossing a block of w2 rows), in both layouts', async () => {
    // [1024, 512]: more than one run of either runner; LoKr w1 [4, 4] ⊗ w2 [256, 128] (rank 8).
    const r = (shape: number[], seed: number): SafetensorsInput => ({ dtype: 'F32', shape, data: random(seed, numel(shape), 0.3) });
    const alpha: SafetensorsInput = { dtype: 'F32', shape: [], data: Float32Array.of(4) };
    const lora = readLora(
      encodeSafetensors({
        'lora_unet_h.hada_w1_a': r([1024, 8], 1),
        'lora_unet_h.hada_w1_b': r([8, 512], 2),
        'lora_unet_h.hada_w2_a': r([1024, 8], 3),
        'lora_unet_h.hada_w2_b': r([8, 512], 4),
        'lora_unet_h.alpha': alpha,
        'lora_unet_k.lokr_w1': r([4, 4], 5),
        'lora_unet_k.lokr_w2_a': r([256, 8], 6),
        'lora_unet_k.lokr_w2_b': r([8, 128], 7),
        'lora_unet_k.alpha': alpha,
      }),
      'big.safetensors',
    );
    const runs = (inputs: Parameters<typeof mergeRuns>[0], chunk: number) => [...mergeRuns(inputs, chunk)].map((x) => [x.row, x.n]);
    for (const module of ['h', 'k']) {
      for (const layout of ['oi', 'io'] as const) {
        const target: MergeTarget = { name: 'w', dtype: 'float16', shape: layout === 'oi' ? [1024, 512] : [512, 1024], layout };
        const bytes = f32ToBytes(random(8, 1024 * 512, 1), 'float16').slice();
        const apps = [app(lora.modules.get(`unet|${module}`)!, -0.9)];
        const inputs = ortInputs(target, apps)!;
        if (module === 'k') {
          // Runs stop at every multiple of w2's rows (256 for oi; 128 for io, where w2 is transposed).
          const block = layout === 'oi' ? 256 : 128;
          expect(inputs.block).toBe(block);
          expect(runs(inputs, 1 << 18).every(([row, n]) => Math.floor(row / block) === Math.floor((row + n - 1) / block))).toBe(true);
        }
        const built = await mergeTensorBytes(bytes, target, apps, { ortMinElements: 0, ort: buildOrt });
        const loaded = await mergeTensorBytes(bytes, target, apps, { ortMinElements: 0, ort: loadOrt });
        expect(Buffer.from(loaded).equals(Buffer.from(built)), `${module} ${layout}`).toBe(true);
        const js = bytesToF32(await mergeTensorBytes(bytes, target, apps), 'float16');
        expectClose(bytesToF32(built, 'float16'), js, 2e-3, `${module} ${layout}`);
        expect(worstMove(bytesToF32(built, 'float16'), bytesToF32(bytes, 'float16'))).toBeGreaterThan(0.01);
      }
    }
  });

  it('several plain LoRAs stack into one Gemm; anything else on a weight, or bf16, is JavaScript', () => {
    const pick = (name: string) => {
      const i = CASES.findIndex((c) => c.name === name);
      return readCase(CASES[i], i);
    };
    const lin: MergeTarget = { name: 'w', dtype: 'float32', shape: [12, 20], layout: 'oi' };
    const o = { ortMinElements: 0, ort: buildOrt };
    expect(mergeEngine(lin, [app(pick('lora linear'), 1), app(pick('lora linear, no alpha'), 0.5, 'weight', 'sha256:b')], o)).toBe('ort');
    expect(mergeEngine(lin, [app(pick('lora linear'), 1), app(pick('loha linear'), 0.5, 'weight', 'sha256:b')], o)).toBe('js');
    for (const name of ['dora lora, per input column [1,in]', 'glora new linear', 'set_weight', 'diff with diff_b']) expect(mergeEngine(lin, [app(pick(name), 1)], o), name).toBe('js');
    expect(mergeEngine({ ...lin, dtype: 'bfloat16' }, [app(pick('loha linear'), 1)], o)).toBe('js');
    expect(mergeEngine(lin, [app(pick('loha linear'), 1)], { ort: buildOrt })).toBe('js'); // below the default 2^20 elements
    expect(mergeEngine(lin, [app(pick('loha linear'), 0)], o)).toBe('none');
    expect(mergeEngine({ name: 'w', dtype: 'float32', shape: [8, 6, 3, 3], layout: 'oihw' }, [app(pick('loha tucker conv'), 1)], o)).toBe('js');
  });
});

describe('readLora: kohya and LyCORIS names, every type', () => {
  const t = (shape: number[], fill = 0.5): SafetensorsInput => ({ dtype: 'F32', shape, data: new Float32Array(numel(shape)).fill(fill) });
  const f16 = (shape: number[]): SafetensorsInput => ({ dtype: 'F16', shape, data: f32ToF16(new Float32Array(numel(shape)).fill(0.25)) });

  it('groups each module, names its type, and keeps plain LoRA on the fast path', () => {
    const lora = readLora(
      encodeSafetensors({
        'lora_unet_a.lora_up.weight': t([4, 2]),
        'lora_unet_a.lora_down.weight': t([2, 3]),
        'lora_unet_a.alpha': t([]),
        'lora_unet_b.hada_w1_a': f16([4, 2]),
        'lora_unet_b.hada_w1_b': f16([2, 3]),
        'lora_unet_b.hada_w2_a': f16([4, 2]),
        'lora_unet_b.hada_w2_b': f16([2, 3]),
        'lora_te1_c.lokr_w1': t([2, 2]),
        'lora_te1_c.lokr_w2': t([2, 3]),
        'lora_te2_d.oft_blocks': t([4, 1, 1]),
        'lora_unet_e.hada_w1_a': t([4, 2]),
        'lora_unet_f.w_norm': t([4]),
        'lora_unet_f.b_norm': t([4]),
        'lycoris_g.diff': t([4, 3]),
        'not_a_lora_key': t([1]),
      }),
      'mixed.safetensors',
    );
    const types = Object.fromEntries([...lora.modules.values()].map((m) => [`${m.component}|${m.module}`, m.adapter?.type]));
    expect(types).toEqual({ 'unet|a': 'lora', 'unet|b': 'loha', 'text_encoder|c': 'lokr', 'text_encoder_2|d': 'unsupported', 'unet|f': 'norm', 'unet|g': 'diff' });
    const a = lora.modules.get('unet|a')!;
    expect(a.up?.shape).toEqual([4, 2]);
    expect(a.alpha).toBe(0.5);
    expect(lora.modules.get('unet|b')!.up).toBeUndefined();
    // A module missing a partner, and a name no convention knows: unrecognised, never an error.
    expect(lora.unrecognised).toEqual(['lora_unet_e.hada_w1_a', 'not_a_lora_key']);
    expect(lora.keyTypes.get('lora_te2_d.oft_blocks')).toBe('OFT');
    expect(lora.keyTypes.get('lora_unet_e.hada_w1_a')).toBe('loha');
    expect(lora.keyTypes.get('not_a_lora_key')).toBe('unknown');
    expect(lora.keyTypes.get('lora_unet_b.hada_w2_b')).toBe('loha');
  });

  it("SDXL's SGM names match the diffusers module, DiT names the transformer's", () => {
    const lora = readLora(
      encodeSafetensors({
        'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight': t([4, 2]),
        'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight': t([2, 4]),
        'lora_unet_output_blocks_2_2_conv.hada_w1_a': t([4, 1]),
        'lora_unet_output_blocks_2_2_conv.hada_w1_b': t([1, 36]),
        'lora_unet_output_blocks_2_2_conv.hada_w2_a': t([4, 1]),
        'lora_unet_output_blocks_2_2_conv.hada_w2_b': t([1, 36]),
        'lora_unet_transformer_blocks_0_attn_to_q.lokr_w1': t([2, 2]),
        'lora_unet_transformer_blocks_0_attn_to_q.lokr_w2': t([2, 2]),
      }),
      'sdxl.safetensors',
    );
    expect([...lora.modules.values()].map((m) => m.match).sort()).toEqual([
      'down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q',
      'transformer_blocks_0_attn_to_q',
      'up_blocks_0_upsamplers_0_conv',
    ]);
    // A DiT pipeline has a transformer, not a UNet: its `lora_unet_` keys land there.
    const entry = (name: string, module: string, layout: 'oi' | 'oihw', shape: number[]) => ({ name, module, layout, shape });
    const targets = new Map<'transformer' | 'text_encoder', LoraTargetEntry[]>([
      ['transformer', [entry('t.w', 'transformer_blocks.0.attn.to_q', 'oi', [4, 4])]],
      ['text_encoder', []],
    ]);
    const routed = routeLora(lora, targets);
    expect(routed.components.get('transformer')!.matchedKeys).toEqual(['lora_unet_transformer_blocks_0_attn_to_q.lokr_w1', 'lora_unet_transformer_blocks_0_attn_to_q.lokr_w2']);
  });

  it('malformed factors are one-line errors naming the key', () => {
    const failure = (tensors: Record<string, SafetensorsInput>, targets: LoraTargetEntry[] = [{ name: 'w', module: 'm', layout: 'oi', shape: [4, 6] }]) => {
      try {
        matchLora(readLora(encodeSafetensors(tensors), 'bad.safetensors'), targets, 'bad.safetensors');
      } catch (e) {
        expect(isFuseloadError(e), String(e)).toBe(true);
        expect((e as Error).message).not.toContain('\n');
        return e as Error & { code: string };
      }
      throw new Error('expected an error');
    };
    const loha = (b: number[]) => ({ 'lora_unet_m.hada_w1_a': t([4, 2]), 'lora_unet_m.hada_w1_b': t(b), 'lora_unet_m.hada_w2_a': t([4, 2]), 'lora_unet_m.hada_w2_b': t([2, 6]) });
    let e = failure(loha([3, 6]));
    expect(e.code).toBe('shape-mismatch');
    expect(e.message).toMatch(/^bad\.safetensors: .*"lora_unet_m\.hada_w1_b" \[3,6\]/);
    e = failure(loha([2, 5]));
    expect(e.message).toMatch(/^bad\.safetensors: .*"lora_unet_m\.hada_w1_a"/);
    e = failure({ 'lora_unet_m.lokr_w1': t([2, 2, 2]), 'lora_unet_m.lokr_w2': t([2, 3]) });
    expect(e.message).toContain('"lora_unet_m.lokr_w1"');
    e = failure({ 'lora_unet_m.lokr_w1': t([2, 2]), 'lora_unet_m.lokr_w2': t([2, 2]) });
    expect(e.message).toBe('bad.safetensors: LoKr w1 [2,2] ⊗ w2 [2,2] gives [4, 4] ("lora_unet_m.lokr_w1") does not fit weight [4,6]');
    e = failure({ 'lora_unet_m.lora_up.weight': t([4, 2]), 'lora_unet_m.lora_down.weight': t([3, 6]) });
    expect(e.message).toBe('bad.safetensors: "lora_unet_m.lora_up.weight" has rank 2 (shape [4,2]) but its down matrix has rank 3 (shape [3,6])');
    e = failure({ 'lora_unet_m.diff': t([4, 6]), 'lora_unet_m.alpha': t([2]) });
    expect(e.message).toBe('bad.safetensors: "lora_unet_m.alpha" must be one finite number');
    e = failure({ 'lora_unet_m.lora_up.weight': t([4, 2]), 'lora_unet_m.lora_down.weight': t([2, 6]), 'lora_unet_m.dora_scale': t([1, 5]) });
    expect(e.message).toContain('"lora_unet_m.dora_scale" [1,5]');
    e = failure({ 'lora_unet_m.w_norm': t([6]) }, [{ name: 'm.weight', layout: 'none', shape: [5] }]);
    expect(e.message).toContain('"lora_unet_m.w_norm"');
    e = failure({ 'lora_unet_m.diff': t([4, 6]), 'lora_unet_m.diff_b': t([3]) }, [
      { name: 'w', module: 'm', layout: 'oi', shape: [4, 6] },
      { name: 'm.bias', layout: 'none', shape: [4] },
    ]);
    expect(e.message).toBe('bad.safetensors: bias delta [3] ("lora_unet_m.diff_b") does not fit bias "m.bias" [4]');
  });
});

describe('matchLora: weights, norms and biases', () => {
  const t = (shape: number[]): SafetensorsInput => ({ dtype: 'F32', shape, data: new Float32Array(numel(shape)).fill(0.5) });
  const lora = readLora(
    encodeSafetensors({
      'lora_unet_blocks_0_proj.hada_w1_a': t([4, 2]),
      'lora_unet_blocks_0_proj.hada_w1_b': t([2, 6]),
      'lora_unet_blocks_0_proj.hada_w2_a': t([4, 2]),
      'lora_unet_blocks_0_proj.hada_w2_b': t([2, 6]),
      'lora_unet_blocks_0_proj.diff_b': t([4]),
      'lora_unet_blocks_1_proj.diff': t([4, 6]),
      'lora_unet_blocks_1_proj.diff_b': t([4]),
      'lora_unet_blocks_0_norm.w_norm': t([6]),
      'lora_unet_blocks_0_norm.b_norm': t([6]),
      'lora_unet_blocks_2_norm.w_norm': t([6]),
      'lora_unet_blocks_2_proj.hada_w1_a': t([6]),
      'lora_unet_blocks_3_proj.oft_blocks': t([2, 2, 2]),
    }),
    'l.safetensors',
  );
  const index = [
    { name: 'onnx::MatMul_1', module: 'blocks.0.proj', layout: 'io' as const, shape: [6, 4] },
    { name: 'blocks.0.proj.bias', layout: 'none' as const, shape: [4] },
    { name: 'blocks.1.proj.weight', module: 'blocks.1.proj', layout: 'oi' as const, shape: [4, 6] },
    { name: 'blocks.0.norm.weight', layout: 'none' as const, shape: [6] },
    { name: 'blocks.0.norm.bias', layout: 'none' as const, shape: [6] },
    { name: 'blocks.2.norm.weight', layout: 'none' as const, shape: [6] },
    { name: 'blocks.3.proj.weight', module: 'blocks.3.proj', layout: 'oi' as const, shape: [2, 2] },
  ];

  it('weights by module path, norms and biases by tensor name; small inline biases are unmatched', () => {
    const found = matchLora(lora, index, 'l.safetensors');
    expect(found.applications.map((a) => `${a.module.module}:${a.part} → ${a.target.name}`).sort()).toEqual([
      'blocks_0_norm:bias → blocks.0.norm.bias',
      'blocks_0_norm:weight → blocks.0.norm.weight',
      'blocks_0_proj:bias → blocks.0.proj.bias',
      'blocks_0_proj:weight → onnx::MatMul_1',
      'blocks_1_proj:weight → blocks.1.proj.weight',
      'blocks_2_norm:weight → blocks.2.norm.weight',
    ]);
    // blocks.1.proj's bias is not in the index (inline in the graph): that key alone is unmatched.
    expect(found.unmatchedKeys).toEqual(['lora_unet_blocks_1_proj.diff_b', 'lora_unet_blocks_2_proj.hada_w1_a', 'lora_unet_blocks_3_proj.oft_blocks']);
    expect(found.matchedKeys).toHaveLength(9);
  });

  it('low-rank types never land on a tensor that is not a MatMul, Gemm or Conv weight', () => {
    const found = matchLora(lora, [{ name: 'blocks.0.proj.weight', layout: 'none' as const, shape: [4, 6] }], 'l.safetensors');
    expect(found.applications).toEqual([]);
  });
});

describe('fuseload build: a mixed LoRA + LoHa file, the report by type, OFT named', () => {
  let dir: string;
  let base: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fuseload-adapter-merge-'));
    base = await writeModel(dir, 'base.onnx', fixtureModel());
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** LoRA on the even layers, LoHa (the same factors twice) on the odd ones, an OFT module, kohya names. */
  async function mixedFile(withOft: boolean): Promise<string> {
    const t: Record<string, SafetensorsInput> = {};
    LAYERS.forEach((l, i) => {
      const f = loraFactors(l, 2, 40 + i);
      const m = `lora_unet_${l.module.replace(/\./g, '_')}`;
      if (i % 2 === 0) {
        t[`${m}.lora_down.weight`] = { dtype: 'F32', shape: f.down.shape, data: f.down.data };
        t[`${m}.lora_up.weight`] = { dtype: 'F32', shape: f.up.shape, data: f.up.data };
      } else {
        const rows = f.up.shape[0];
        const cols = numel(f.down.shape) / 2;
        for (const n of ['1', '2']) {
          t[`${m}.hada_w${n}_a`] = { dtype: 'F16', shape: [rows, 2], data: f32ToF16(f.up.data) };
          t[`${m}.hada_w${n}_b`] = { dtype: 'BF16', shape: [2, cols], data: f32ToBf16(f.down.data) };
        }
      }
      t[`${m}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(2) };
    });
    if (withOft) t['lora_unet_blocks_9_attn1_to_q.oft_blocks'] = { dtype: 'F32', shape: [4, 3, 3], data: new Float32Array(36) };
    const path = join(dir, withOft ? 'oft.safetensors' : 'mixed.safetensors');
    await writeFile(path, encodeSafetensors(t));
    return path;
  }

  it('matches every key and reports matched and unmatched per adapter type', async () => {
    const report = await build({ base, loras: [{ path: await mixedFile(false), scale: 0.7 }], name: 'fixture', out: join(dir, 'out-mixed'), store: null });
    expect(report.loras[0]).toMatchObject({ matched: 24, unmatched: 0, types: { lora: { matched: 9, unmatched: 0 }, loha: { matched: 15, unmatched: 0 } } });
    expect(report.mergedTensors).toBe(LAYERS.length);
  });

  it('reports OFT by name as unmatched, and --strict refuses it', async () => {
    const oft = await mixedFile(true);
    const report = await build({ base, loras: [{ path: oft, scale: 1 }], name: 'fixture', out: join(dir, 'out-oft'), store: null });
    expect(report.loras[0].types.OFT).toEqual({ matched: 0, unmatched: 1 });
    expect(report.loras[0].unmatchedKeys).toEqual(['lora_unet_blocks_9_attn1_to_q.oft_blocks']);
    const error = await build({ base, loras: [{ path: oft, scale: 1 }], name: 'fixture', out: join(dir, 'out-strict'), store: null, strict: true }).catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('bad-input');
    expect(error.message).toMatch(/^oft\.safetensors: module "blocks_9_attn1_to_q" is OFT, which fuseload cannot merge \(--strict\)/);
    expect(error.message).not.toContain('\n');
  });

  it('inspect names each key’s adapter type and component', async () => {
    const summary = (await inspectFile(await mixedFile(true))) as { types: Record<string, number>; keys: string[] };
    expect(summary.types).toEqual({ lora: 9, loha: 15, OFT: 1 });
    expect(summary.keys).toContain('lora_unet_blocks_0_ff_net_0_proj.hada_w1_a: loha → unet');
    expect(summary.keys).toContain('lora_unet_blocks_9_attn1_to_q.oft_blocks: OFT → unet');
  });
});
