/**
 * The onnxruntime merge used for large tensors (worked in row blocks) agrees with the shared
 * JavaScript math, for both layouts, fp32 and fp16, with several LoRAs stacked.
 */
import { describe, expect, it } from 'vitest';
import { applyLoraDelta, f16ToF32, f32ToF16 } from '../../common/lora/index.ts';
import { mergeWithOrt } from '../../tools/build/merge-ort.ts';
import { random } from '../fixtures/models.ts';

describe('mergeWithOrt', () => {
  // 300 × 5000 = 1.5M elements: more than one block of rows.
  const out = 300;
  const k = 5000;
  const terms = [
    { up: { data: random(1, out * 4), shape: [out, 4] }, down: { data: random(2, 4 * k), shape: [4, k] }, alpha: 2, scale: 0.7 },
    { up: { data: random(3, out * 8), shape: [out, 8] }, down: { data: random(4, 8 * k), shape: [8, k] }, alpha: undefined, scale: -0.3 },
  ];

  for (const layout of ['oi', 'io'] as const) {
    for (const dtype of ['float32', 'float16'] as const) {
      it(`${layout}, ${dtype}`, async () => {
        const shape = layout === 'oi' ? [out, k] : [k, out];
        const w32 = random(5, out * k);
        const stored = dtype === 'float32' ? new Uint8Array(w32.buffer.slice(0)) : new Uint8Array(f32ToF16(w32).buffer);
        const expected = dtype === 'float32' ? w32.slice() : f16ToF32(f32ToF16(w32));
        for (const t of terms) applyLoraDelta(expected, { shape, layout }, t.up, t.down, t.alpha, t.scale);
        const merged = await mergeWithOrt(stored, dtype, shape, layout, terms);
        const actual = dtype === 'float32' ? new Float32Array(merged.buffer, merged.byteOffset, out * k) : f16ToF32(new Uint16Array(merged.buffer, merged.byteOffset, out * k));
        let maxDiff = 0;
        let moved = 0;
        const before = dtype === 'float32' ? w32 : f16ToF32(f32ToF16(w32));
        for (let i = 0; i < actual.length; i++) {
          maxDiff = Math.max(maxDiff, Math.abs(actual[i] - expected[i]));
          moved = Math.max(moved, Math.abs(actual[i] - before[i]));
        }
        // fp16: one rounding of values up to ~4 → at most one ulp (2^-8) apart
        expect(maxDiff).toBeLessThan(dtype === 'float32' ? 1e-5 : 4e-3);
        expect(moved).toBeGreaterThan(0.5);
      });
    }
  }
});
