/**
 * delta = scale × (alpha / rank) × up·down, added to a weight in fp32 in place.
 * The layout says how [out, in] lands on the stored tensor (see TensorLayout in manifest.ts).
 */
import { FuseloadError } from '../errors.ts';
import type { TensorLayout } from '../manifest.ts';

export interface LoraMatrix {
  data: Float32Array;
  shape: readonly number[];
}

/** What a weight needs to say for a delta to land on it: a tensor index entry will do. */
export interface LoraTarget {
  name?: string;
  shape: readonly number[];
  layout: TensorLayout;
}

/** alpha / rank, with alpha missing or 0 meaning alpha = rank (factor 1). */
export function loraFactor(alpha: number | undefined, rank: number): number {
  if (!alpha) return 1;
  return alpha / rank;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const fmt = (shape: readonly number[]) => `[${shape.join(',')}]`;

/**
 * Adds scale × loraFactor(alpha, rank) × up·down to `weight` (fp32, in place).
 * up: [out, rank] (or [out, rank, 1, 1]); down: [rank, in] (or [rank, in, kh, kw] for LoCon).
 * `label` names the LoRA key in errors.
 */
export function applyLoraDelta(
  weight: Float32Array,
  target: LoraTarget,
  up: LoraMatrix,
  down: LoraMatrix,
  alpha: number | undefined,
  scale: number,
  label = 'lora',
): void {
  checkLoraDelta(target, up.shape, down.shape, label);
  if (weight.length !== numel(target.shape)) throw new FuseloadError('shape-mismatch', `${label}: weight "${target.name ?? '?'}" has ${weight.length} values, not ${fmt(target.shape)}`);
  const rank = down.shape[0];
  const outDim = up.shape[0];
  const k = numel(down.shape) / rank;
  const f = scale * loraFactor(alpha, rank);
  const U = up.data;
  const D = down.data;
  if (target.layout === 'oi' || target.layout === 'oihw') {
    // W[o, k] with k = in (× kh × kw): contiguous rows, so loop o, r, k.
    for (let o = 0; o < outDim; o++) {
      const row = o * k;
      for (let r = 0; r < rank; r++) {
        const c = f * U[o * rank + r];
        if (c === 0) continue;
        const d0 = r * k;
        for (let j = 0; j < k; j++) weight[row + j] += c * D[d0 + j];
      }
    }
    return;
  }
  if (target.layout === 'io') {
    // W[k, o]: the delta transposed. Loop k, r, o over up transposed so the inner loop is contiguous.
    const upT = new Float32Array(rank * outDim);
    for (let o = 0; o < outDim; o++) for (let r = 0; r < rank; r++) upT[r * outDim + o] = U[o * rank + r];
    for (let j = 0; j < k; j++) {
      const row = j * outDim;
      for (let r = 0; r < rank; r++) {
        const c = f * D[r * k + j];
        if (c === 0) continue;
        const u0 = r * outDim;
        for (let o = 0; o < outDim; o++) weight[row + o] += c * upT[u0 + o];
      }
    }
  }
}

/** Throws a shape-mismatch error naming the key and both shapes unless up·down fits the target. */
export function checkLoraDelta(target: LoraTarget, up: readonly number[], down: readonly number[], label = 'lora'): void {
  const rank = down[0];
  if (!rank || up.length < 2 || numel(up) !== up[0] * rank) {
    throw new FuseloadError('shape-mismatch', `${label}: up ${fmt(up)} and down ${fmt(down)} do not share a rank`);
  }
  const outDim = up[0];
  const k = numel(down) / rank;
  const w = target.shape;
  const fits =
    target.layout === 'oi' || target.layout === 'oihw'
      ? w[0] === outDim && numel(w) / outDim === k
      : target.layout === 'io'
        ? w.length === 2 && w[0] === k && w[1] === outDim
        : false;
  if (!fits) {
    throw new FuseloadError(
      'shape-mismatch',
      `${label}: LoRA up ${fmt(up)} · down ${fmt(down)} does not fit weight "${target.name ?? '?'}" ${fmt(w)} (layout ${target.layout})`,
    );
  }
}
