/**
 * The overlay's parts: request checking and the cache key, and the onnxruntime merge graph
 * (encoded by hand in common/) against the build's two merges — the shared JavaScript math
 * and tools/build/merge-ort.ts — on every layout and on fp32 and fp16 weights.
 */
import { describe, expect, it } from 'vitest';
import { resolveOverlays, overlayKey } from '../../common/loader/overlay.ts';
import { applyLoraDelta, type LoraMatrix } from '../../common/lora/delta.ts';
import { bytesToF32, f32ToBytes } from '../../common/lora/dtype.ts';
import { EngineMerger, type MergeDtype, mergeGraph } from '../../common/lora/overlay-merge.ts';
import type { TensorLayout } from '../../common/manifest.ts';
import { mergeWithOrt } from '../../tools/build/merge-ort.ts';
import { DTYPE_CODES, decodeModel } from '../../tools/onnx/model.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { random } from '../fixtures/models.ts';

describe('resolveOverlays and overlayKey', () => {
  it('normalises digests, keeps scale and alpha, and refuses what cannot be loaded', () => {
    const hex = 'ab'.repeat(32);
    expect(resolveOverlays(undefined)).toEqual([]);
    expect(resolveOverlays([{ digest: hex, scale: -0.5 }, { url: 'https://h/x.safetensors', scale: 1, alpha: 8 }])).toEqual([
      { digest: `sha256:${hex}`, scale: -0.5 },
      { url: 'https://h/x.safetensors', scale: 1, alpha: 8 },
    ]);
    expect(() => resolveOverlays([{ digest: hex, url: 'https://h/x', scale: 1 }])).toThrow(/^loras\[0\]: give exactly one of digest or url$/);
    expect(() => resolveOverlays([{ digest: hex, scale: Infinity }])).toThrow(/^loras\[0\]\.scale: Infinity is not a finite number$/);
    expect(() => resolveOverlays([{ digest: hex, scale: 1, alpha: 0 }])).toThrow(/^loras\[0\]\.alpha: 0 is not a positive finite number$/);
  });

  it('the key has every digest, scale and alpha, so a change to any is another pipeline', () => {
    const a = `sha256:${'a'.repeat(64)}` as const;
    const b = `sha256:${'b'.repeat(64)}` as const;
    const keys = [
      overlayKey([]),
      overlayKey([{ digest: a, scale: 1 }]),
      overlayKey([{ digest: a, scale: 0.5 }]),
      overlayKey([{ digest: a, scale: 1, alpha: 8 }]),
      overlayKey([{ digest: a, scale: 1 }, { digest: b, scale: 1 }]),
    ];
    expect(new Set(keys).size).toBe(keys.length);
  });
});

describe('the onnxruntime merge graph', () => {
  it.each(['float32', 'float16'] as const)('is a valid ONNX model computing cast(l·r + cast(w)) for %s', (dtype) => {
    const model = decodeModel(mergeGraph(dtype), 'merge graph');
    const graph = model.graph!;
    expect(graph.node!.map((n) => n.opType)).toEqual(dtype === 'float32' ? ['Gemm'] : ['Cast', 'Gemm', 'Cast']);
    expect(graph.input!.map((i) => [i.name, (i.type as { tensorType?: { elemType?: number } }).tensorType?.elemType])).toEqual([
      ['w', DTYPE_CODES[dtype]],
      ['l', DTYPE_CODES.float32],
      ['r', DTYPE_CODES.float32],
    ]);
    expect(graph.output!.map((o) => o.name)).toEqual(['y']);
  });

  const engine = new OrtNodeEngine();
  const merger = new EngineMerger(engine, (m) => {
    throw new Error(m);
  });
  const cases: { layout: Exclude<TensorLayout, 'none'>; shape: number[]; up: number[]; down: number[] }[] = [
    { layout: 'oi', shape: [24, 40], up: [24, 4], down: [4, 40] },
    { layout: 'io', shape: [40, 24], up: [24, 4], down: [4, 40] },
    { layout: 'oihw', shape: [6, 5, 3, 3], up: [6, 2, 1, 1], down: [2, 5, 3, 3] },
  ];
  const matrix = (shape: number[], seed: number): LoraMatrix => ({ shape, data: random(seed, shape.reduce((a, b) => a * b, 1), 0.5) });

  for (const dtype of ['float32', 'float16'] as MergeDtype[]) {
    it.each(cases)(`${dtype} $layout $shape: equals the build's JS merge and its onnxruntime merge`, async ({ layout, shape, up, down }) => {
      const count = shape.reduce((a, b) => a * b, 1);
      const base = f32ToBytes(random(11, count, 1), dtype).slice();
      const terms = [
        { up: matrix(up, 1), down: matrix(down, 2), alpha: 2, scale: 0.8 },
        { up: matrix(up, 3), down: matrix(down, 4), alpha: undefined, scale: -1.3 },
      ];
      const js = bytesToF32(base, dtype);
      for (const t of terms) applyLoraDelta(js, { shape, layout }, t.up, t.down, t.alpha, t.scale);
      const built = bytesToF32(await mergeWithOrt(base, dtype, shape, layout, terms), dtype);

      const bytes = new Uint8Array(base.length);
      expect(await merger.merge(base, bytes, dtype, shape, layout, terms, ['cpu'])).toBe(true);
      const overlay = bytesToF32(bytes, dtype);
      const tolerance = dtype === 'float32' ? 1e-5 : 2e-3; // fp16: one rounding step either way
      let maxJs = 0;
      let maxBuilt = 0;
      let moved = 0;
      const before = bytesToF32(base, dtype);
      for (let i = 0; i < count; i++) {
        maxJs = Math.max(maxJs, Math.abs(overlay[i] - js[i]));
        maxBuilt = Math.max(maxBuilt, Math.abs(overlay[i] - built[i]));
        moved = Math.max(moved, Math.abs(overlay[i] - before[i]));
      }
      expect(maxJs).toBeLessThan(tolerance);
      expect(maxBuilt).toBeLessThan(tolerance);
      expect(moved).toBeGreaterThan(0.05); // the delta is there
    });
  }

  it('works in row blocks on a tensor larger than one run (4M elements), reaching every row', async () => {
    const shape = [4096, 1100];
    const count = shape[0] * shape[1];
    const base = new Uint8Array(count * 4);
    const terms = [{ up: matrix([4096, 2], 5), down: matrix([2, 1100], 6), alpha: undefined, scale: 1 }];
    const js = new Float32Array(count);
    applyLoraDelta(js, { shape, layout: 'oi' }, terms[0].up, terms[0].down, undefined, 1);
    expect(await merger.merge(base, base, 'float32', shape, 'oi', terms, ['cpu'])).toBe(true);
    const out = new Float32Array(base.buffer);
    let max = 0;
    for (let i = 0; i < count; i++) max = Math.max(max, Math.abs(out[i] - js[i]));
    expect(max).toBeLessThan(1e-5);
    expect(Math.abs(out[count - 1])).toBeGreaterThan(0);
  });
});
