import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isFuseloadError } from '../../common/errors.ts';
import { addAdapterDelta, adapterDelta, biasDelta, mergedWeight, needsBaseWeight, toTorchLayout, torchShape } from '../../common/lora/adapter-delta.ts';
import { type AdapterTensorInput, checkAdapterTarget, describeAdapter, splitAdapterKey } from '../../common/lora/adapter-types.ts';
import { applyLoraDelta } from '../../common/lora/delta.ts';

// Factors and numpy references written by test/fixtures/adapters/make_adapters.py.
interface FixtureTensor {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  b64: string;
}
interface FixtureCase {
  name: string;
  type: string;
  module: string;
  target: number[];
  tolerance: 'fp32' | 'fp16' | 'bf16';
  tensors: Record<string, FixtureTensor>;
  base: string;
  delta: string;
  merged: { scale: number; b64: string }[];
  biasDelta?: string;
}
const fixture = JSON.parse(readFileSync(new URL('../fixtures/adapters/cases.json', import.meta.url), 'utf8')) as { cases: FixtureCase[] };

function bytes(b64: string): ArrayBuffer {
  const b = Buffer.from(b64, 'base64');
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return copy.buffer;
}
const f32 = (b64: string) => new Float32Array(bytes(b64));
function tensors(c: FixtureCase): Record<string, AdapterTensorInput> {
  const out: Record<string, AdapterTensorInput> = {};
  for (const [suffix, t] of Object.entries(c.tensors)) {
    out[suffix] = { shape: t.shape, dtype: t.dtype, data: t.dtype === 'F32' ? f32(t.b64) : new Uint16Array(bytes(t.b64)) };
  }
  return out;
}

const RELATIVE = { fp32: 2e-6, fp16: 2e-3, bf16: 2e-2 };
/** max |got − want| ≤ tol × max(1, max |want|) */
function expectClose(got: Float32Array, want: Float32Array, tolerance: keyof typeof RELATIVE, what: string) {
  expect(got.length, what).toBe(want.length);
  let worst = 0;
  let peak = 1;
  for (let i = 0; i < want.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]));
    peak = Math.max(peak, Math.abs(want[i]));
  }
  expect(worst / peak, `${what}: worst error ${worst} against peak ${peak}`).toBeLessThanOrEqual(RELATIVE[tolerance]);
}

describe('adapter types against the numpy reference of each published formula', () => {
  it('covers every type the fixture was written for', () => {
    expect(new Set(fixture.cases.map((c) => c.type))).toEqual(new Set(['lora', 'locon-mid', 'loha', 'lokr', 'glora', 'diff', 'norm', 'set']));
  });

  for (const c of fixture.cases) {
    describe(c.name, () => {
      const adapter = describeAdapter(c.module, tensors(c));
      const base = f32(c.base);

      it(`reads as ${c.type} and accounts for every key`, () => {
        expect(adapter.type).toBe(c.type);
        expect(adapter.keys).toEqual(Object.keys(c.tensors).map((s) => `${c.module}.${s}`).sort());
        expect(() => checkAdapterTarget(adapter, c.target)).not.toThrow();
      });

      it('gives the reference delta per unit of strength', () => {
        const delta = adapterDelta(adapter, c.target, needsBaseWeight(adapter) ? base : undefined);
        expectClose(delta, f32(c.delta), c.tolerance, 'delta');
      });

      it('gives the reference merged weight at each strength, and the base at 0', () => {
        for (const m of c.merged) expectClose(mergedWeight(adapter, base, c.target, m.scale), f32(m.b64), c.tolerance, `scale ${m.scale}`);
        expect(mergedWeight(adapter, base, c.target, 0)).toEqual(base);
        if (adapter.type === 'set') expect(mergedWeight(adapter, base, c.target, 1)).toEqual(adapter.weight.data);
      });

      if (c.biasDelta) {
        it('gives the bias delta', () => {
          expectClose(biasDelta(adapter, [c.target[0]])!, f32(c.biasDelta!), 'fp32', 'bias');
        });
      }
    });
  }
});

describe('adapter key grammar', () => {
  it('splits module and suffix, two-part suffixes first', () => {
    expect(splitAdapterKey('lora_unet_mid_block_attentions_0_proj_in.lora_up.weight')).toEqual({ module: 'lora_unet_mid_block_attentions_0_proj_in', suffix: 'lora_up.weight' });
    expect(splitAdapterKey('lycoris_x.hada_w1_a')).toEqual({ module: 'lycoris_x', suffix: 'hada_w1_a' });
    expect(splitAdapterKey('lora_unet_x.a1.weight')).toEqual({ module: 'lora_unet_x', suffix: 'a1.weight' });
    expect(splitAdapterKey('lora_unet_x.boft_blocks')).toEqual({ module: 'lora_unet_x', suffix: 'boft_blocks' });
    expect(splitAdapterKey('lora_unet_x.diff_b')).toEqual({ module: 'lora_unet_x', suffix: 'diff_b' });
    expect(splitAdapterKey('unet.x.lora_A.weight')).toBeNull();
    expect(splitAdapterKey('lora_unet_x.weight')).toBeNull();
  });

  it('reads a bias-only module (diff_b alone) as a diff with no weight delta', () => {
    const a = describeAdapter('m', { diff_b: { shape: [4], data: new Float32Array([1, 2, 3, 4]) } });
    expect(a).toMatchObject({ type: 'diff', biasDiff: { key: 'm.diff_b' } });
    expect(mergedWeight(a, new Float32Array(8), [2, 4], 1)).toEqual(new Float32Array(8));
    expect(biasDelta(a, [4])).toEqual(new Float32Array([1, 2, 3, 4]));
  });

  it('names OFT and BOFT as unsupported and refuses to merge them', () => {
    const oft = describeAdapter('m', { oft_blocks: { shape: [4, 3, 3], data: new Float32Array(36) }, alpha: { shape: [], data: new Float32Array([1]) } });
    expect(oft).toMatchObject({ type: 'unsupported', kind: 'oft' });
    const boft = describeAdapter('m', { oft_blocks: { shape: [2, 4, 3, 3], data: new Float32Array(72) }, rescale: { shape: [12, 1], data: new Float32Array(12) } });
    expect(boft).toMatchObject({ type: 'unsupported', kind: 'boft' });
    expect(boft.keys).toEqual(['m.oft_blocks', 'm.rescale']);
    expect(() => adapterDelta(boft, [12, 12])).toThrow(/BOFT/);
  });
});

describe('malformed factors give one-line errors naming the key', () => {
  const t = (...shape: number[]): AdapterTensorInput => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.5) });
  function failure(fn: () => unknown): { code: string; message: string } {
    try {
      fn();
    } catch (e) {
      expect(isFuseloadError(e), String(e)).toBe(true);
      const { code, message } = e as { code: string; message: string };
      expect(message).not.toContain('\n');
      return { code, message };
    }
    throw new Error('expected an error');
  }

  it('a missing half of a pair', () => {
    expect(failure(() => describeAdapter('m', { hada_w1_a: t(4, 2), hada_w2_a: t(4, 2), hada_w2_b: t(2, 4) }))).toEqual({
      code: 'bad-input',
      message: 'lora: "m.hada_w1_a" has no matching "m.hada_w1_b"',
    });
    expect(failure(() => describeAdapter('m', { 'lora_up.weight': t(4, 2) }, 'x.safetensors')).message).toBe('x.safetensors: "m.lora_up.weight" has no matching "m.lora_down.weight"');
    expect(failure(() => describeAdapter('m', { lokr_w1: t(2, 2), lokr_w2_a: t(3, 2) })).message).toContain('"m.lokr_w2_b"');
    const tuckerHalf = { hada_w1_a: t(2, 4), hada_w1_b: t(2, 4), hada_w2_a: t(2, 4), hada_w2_b: t(2, 4), hada_t1: t(2, 2, 3, 3) };
    expect(failure(() => describeAdapter('m', tuckerHalf)).message).toContain('"m.hada_t2"');
    expect(failure(() => describeAdapter('m', { 'a1.weight': t(4, 2), 'a2.weight': t(2, 4), 'b1.weight': t(4, 2) })).message).toContain('"m.b2.weight"');
    expect(failure(() => describeAdapter('m', { lokr_w1: t(2, 2) })).message).toContain('"m.lokr_w2"');
  });

  it('factors that cannot multiply', () => {
    const e = failure(() => describeAdapter('m', { 'lora_up.weight': t(8, 4), 'lora_down.weight': t(3, 16) }));
    expect(e.code).toBe('shape-mismatch');
    expect(e.message).toContain('"m.lora_up.weight" [8,4]');
    expect(e.message).toContain('"m.lora_down.weight" [3,16]');
    const h = failure(() => describeAdapter('m', { hada_w1_a: t(8, 4), hada_w1_b: t(5, 16), hada_w2_a: t(8, 4), hada_w2_b: t(4, 16) }));
    expect(h).toMatchObject({ code: 'shape-mismatch' });
    expect(h.message).toContain('"m.hada_w1_b" [5,16]');
    expect(failure(() => describeAdapter('m', { lokr_w1: t(2, 2), lokr_w2_a: t(6, 3), lokr_w2_b: t(2, 5) })).message).toContain('"m.lokr_w2_b" [2,5]');
    expect(failure(() => describeAdapter('m', { 'a1.weight': t(4, 2), 'a2.weight': t(3, 5), 'b1.weight': t(4, 2), 'b2.weight': t(2, 4) })).code).toBe('shape-mismatch');
  });

  it('a Kronecker product that does not fit the target', () => {
    const a = describeAdapter('m', { lokr_w1: t(2, 2), lokr_w2: t(5, 10) });
    const e = failure(() => adapterDelta(a, [12, 20]));
    expect(e.code).toBe('shape-mismatch');
    expect(e.message).toBe('lora: LoKr w1 [2,2] ⊗ w2 [5,10] gives [10, 20] ("m.lokr_w1") does not fit weight [12,20]');
  });

  it('a delta, DoRA magnitude or bias that does not fit the target', () => {
    const lora = describeAdapter('m', { 'lora_up.weight': t(8, 4), 'lora_down.weight': t(4, 16) });
    expect(failure(() => checkAdapterTarget(lora, [8, 15])).message).toContain('"m.lora_up.weight"');
    const dora = describeAdapter('m', { 'lora_up.weight': t(8, 4), 'lora_down.weight': t(4, 16), dora_scale: t(1, 8) });
    expect(failure(() => adapterDelta(dora, [8, 16], new Float32Array(128))).message).toContain('"m.dora_scale" [1,8] is neither [8,1] nor [1,16]');
    expect(failure(() => adapterDelta(describeAdapter('m', { diff: t(8, 16) }), [16, 8])).message).toContain('"m.diff"');
    const withBias = describeAdapter('m', { diff: t(8, 16), diff_b: t(7) });
    expect(failure(() => checkAdapterTarget(withBias, [8, 16], [8])).message).toContain('"m.diff_b"');
  });

  it('conflicting or unknown keys', () => {
    expect(failure(() => describeAdapter('m', { 'lora_up.weight': t(8, 4), 'lora_down.weight': t(4, 16), hada_w1_a: t(8, 4) })).message).toBe(
      'lora: module "m" mixes lora ("m.lora_up.weight") and loha ("m.hada_w1_a") keys',
    );
    expect(failure(() => describeAdapter('m', { lokr_w1: t(2, 2), lokr_w1_a: t(2, 1), lokr_w1_b: t(1, 2), lokr_w2: t(3, 3) })).message).toContain('"m.lokr_w1" and "m.lokr_w1_a"');
    expect(failure(() => describeAdapter('m', { lora_up: t(8, 4) })).message).toBe('lora: "m.lora_up" is not an adapter key we know');
    expect(failure(() => describeAdapter('m', { diff: t(4), dora_scale: t(4, 1) })).message).toContain('"m.dora_scale"');
    expect(failure(() => describeAdapter('m', { alpha: t(2) })).message).toBe('lora: "m.alpha" must be one finite number');
    expect(failure(() => describeAdapter('m', { diff: { shape: [2], data: new Uint16Array(2) } })).message).toContain('no F16/BF16 dtype');
  });

  it('a base weight missing where the delta needs it', () => {
    const glora = describeAdapter('m', { 'a1.weight': t(4, 2), 'a2.weight': t(2, 4), 'b1.weight': t(3, 2), 'b2.weight': t(2, 4) });
    expect(needsBaseWeight(glora)).toBe(true);
    expect(failure(() => adapterDelta(glora, [3, 4]))).toEqual({ code: 'bad-input', message: 'lora: glora module "m" needs the base weight' });
  });
});

describe('layouts', () => {
  it('lands a torch-layout delta on oi and io weights as applyLoraDelta does', () => {
    const out = 5;
    const inDim = 7;
    const up = Float32Array.from({ length: out * 3 }, (_, i) => Math.sin(i));
    const down = Float32Array.from({ length: 3 * inDim }, (_, i) => Math.cos(i));
    const a = describeAdapter('m', { 'lora_up.weight': { shape: [out, 3], data: up }, 'lora_down.weight': { shape: [3, inDim], data: down }, alpha: { shape: [], data: new Float32Array([1.5]) } });
    for (const layout of ['oi', 'io'] as const) {
      const target = { name: 'w', layout, shape: layout === 'io' ? [inDim, out] : [out, inDim] };
      const want = Float32Array.from({ length: out * inDim }, (_, i) => i / 10);
      const got = want.slice();
      applyLoraDelta(want, target, { data: up, shape: [out, 3] }, { data: down, shape: [3, inDim] }, 1.5, 0.7);
      const delta = adapterDelta(a, torchShape(target), undefined);
      addAdapterDelta(got, target, delta, 0.7);
      expectClose(got, want, 'fp32', layout);
      expect(toTorchLayout(toTorchLayout(got, target), { layout, shape: torchShape(target) }).length).toBe(got.length);
    }
  });
});
