/**
 * The dense weight delta of every adapter type, in fp32 and torch layout
 * ([out, in] or [out, in/groups, kh, kw]), following ComfyUI's `calculate_weight` of each
 * `comfy/weight_adapter/*.py` and `comfy/lora.py`.
 *
 * Every formula there is affine in the user's strength s: merged = W + s·Δ, where Δ may
 * depend on W (GLoRA, DoRA, set). So `adapterDelta` returns Δ per unit of strength and
 * `mergedWeight` = W + s·Δ is exact for every type; DoRA's normalisation happens inside
 * Δ (at strength 1), the strength interpolates outside it, as ComfyUI does.
 */
import { FuseloadError } from '../errors.ts';
import { type AdapterDescription, type AdapterFactor, adapterRank, checkAdapterTarget, doraAxis, fmtShape, gloraLayout, type LokrFactor, lokrShape } from './adapter-types.ts';
import { type LoraTarget, loraFactor } from './delta.ts';

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** fp32 epsilon, which LyCORIS and ComfyUI add to the DoRA norm (finfo(dtype).eps). */
const F32_EPS = 2 ** -23;

/** Whether the delta depends on the base weight (GLoRA, DoRA, set): pass it to adapterDelta. */
export function needsBaseWeight(a: AdapterDescription): boolean {
  return a.type === 'glora' || a.type === 'set' || a.doraScale !== undefined;
}

/** False for a module that only changes its bias (`diff_b` alone) and for unsupported ones. */
export function hasWeightDelta(a: AdapterDescription): boolean {
  return !(a.type === 'diff' && !a.diff) && a.type !== 'unsupported';
}

/**
 * What an adapter does to a weight at strength 1: add `delta`, or (set, DoRA) become
 * `weight`, which strength s then reaches as W + s·(weight − W), as ComfyUI does.
 */
type Effect = { delta: Float32Array; weight?: undefined } | { weight: Float32Array; delta?: undefined };

function effect(a: AdapterDescription, targetShape: readonly number[], baseWeight: Float32Array | undefined, source: string): Effect {
  checkAdapterTarget(a, targetShape, undefined, source);
  const n = numel(targetShape);
  if (baseWeight && baseWeight.length !== n) {
    throw new FuseloadError('shape-mismatch', `${source}: base weight of module "${a.module}" has ${baseWeight.length} values, not ${fmtShape(targetShape)}`);
  }
  if (needsBaseWeight(a) && !baseWeight) {
    throw new FuseloadError('bad-input', `${source}: ${a.type}${a.doraScale ? ' with dora_scale' : ''} module "${a.module}" needs the base weight`);
  }
  switch (a.type) {
    case 'diff':
      return { delta: a.diff ? a.diff.data.slice() : new Float32Array(n) };
    case 'norm':
      return { delta: a.wNorm.data.slice() };
    case 'set':
      // ComfyUI copies set_weight whatever the strength; W + s·(set − W) is that at s = 1.
      return { weight: a.weight.data.slice() };
    case 'unsupported':
      throw new FuseloadError('unsupported', `${source}: module "${a.module}": ${a.reason}`);
  }
  // alpha/rank, alpha absent or 0 meaning 1 as everywhere else here; LoKr with two full sides has no rank.
  const rank = adapterRank(a, targetShape);
  const delta = lowRankDelta(a, targetShape, baseWeight, rank === undefined ? 1 : loraFactor(a.alpha, rank), source);
  if (!a.doraScale) return { delta };
  return { weight: doraWeight(a.doraScale, baseWeight!, delta, targetShape, source) };
}

/**
 * Δ per unit of strength, in torch layout, such that the merged weight is
 * `baseWeight + scale·Δ` for every type. `targetShape` is the weight's torch shape;
 * `baseWeight` (torch layout, fp32) is required where `needsBaseWeight` says so.
 * Throws a one-line FuseloadError naming the key for shapes that do not fit.
 */
export function adapterDelta(a: AdapterDescription, targetShape: readonly number[], baseWeight?: Float32Array, source = 'lora'): Float32Array {
  const e = effect(a, targetShape, baseWeight, source);
  if (e.delta) return e.delta;
  const d = e.weight;
  for (let i = 0; i < d.length; i++) d[i] -= baseWeight![i];
  return d;
}

/**
 * The merged weight `base + scale·adapterDelta(…)`, a fresh fp32 array in torch layout;
 * at scale 1 a set or DoRA module gives its weight exactly, at scale 0 every module the base.
 */
export function mergedWeight(a: AdapterDescription, base: Float32Array, targetShape: readonly number[], scale: number, source = 'lora'): Float32Array {
  if (scale === 0 || !hasWeightDelta(a)) {
    if (a.type === 'unsupported') throw new FuseloadError('unsupported', `${source}: module "${a.module}": ${a.reason}`);
    return base.slice();
  }
  const e = effect(a, targetShape, base, source);
  if (e.weight && scale === 1) return e.weight;
  const out = base.slice();
  if (e.delta) {
    for (let i = 0; i < out.length; i++) out[i] += scale * e.delta[i];
  } else {
    for (let i = 0; i < out.length; i++) out[i] += scale * (e.weight[i] - base[i]);
  }
  return out;
}

/** The bias delta per unit of strength (`diff_b` / `b_norm`), or undefined. */
export function biasDelta(a: AdapterDescription, biasShape?: readonly number[], source = 'lora'): Float32Array | undefined {
  if (!a.biasDiff) return undefined;
  if (biasShape && numel(biasShape) !== a.biasDiff.data.length) {
    throw new FuseloadError('shape-mismatch', `${source}: bias delta ${fmtShape(a.biasDiff.shape)} ("${a.biasDiff.key}") does not fit bias ${fmtShape(biasShape)}`);
  }
  return a.biasDiff.data.slice();
}

// ---- layouts ----

/** A target's shape in torch layout: `io` ([in, out], MatMul) is transposed; others are as stored. */
export function torchShape(target: Pick<LoraTarget, 'shape' | 'layout'>): number[] {
  return target.layout === 'io' ? [target.shape[1], target.shape[0]] : [...target.shape];
}

/** A stored weight in torch layout (a transposed copy for `io`, the same array otherwise). */
export function toTorchLayout(weight: Float32Array, target: Pick<LoraTarget, 'shape' | 'layout'>): Float32Array {
  if (target.layout !== 'io') return weight;
  const [inDim, outDim] = target.shape;
  const t = new Float32Array(weight.length);
  for (let i = 0; i < inDim; i++) for (let o = 0; o < outDim; o++) t[o * inDim + i] = weight[i * outDim + o];
  return t;
}

/** weight += scale·delta in place, with `delta` in torch layout and `weight` as stored. */
export function addAdapterDelta(weight: Float32Array, target: Pick<LoraTarget, 'shape' | 'layout' | 'name'>, delta: Float32Array, scale: number): void {
  if (weight.length !== delta.length) {
    throw new FuseloadError('shape-mismatch', `weight "${target.name ?? '?'}" has ${weight.length} values but the delta has ${delta.length}`);
  }
  if (target.layout !== 'io') {
    for (let i = 0; i < weight.length; i++) weight[i] += scale * delta[i];
    return;
  }
  const [inDim, outDim] = target.shape;
  for (let i = 0; i < inDim; i++) {
    const row = i * outDim;
    for (let o = 0; o < outDim; o++) weight[row + o] += scale * delta[o * inDim + i];
  }
}

// ---- the formulas ----

type LowRank = Exclude<AdapterDescription, { type: 'diff' | 'norm' | 'set' | 'unsupported' }>;

function lowRankDelta(a: LowRank, target: readonly number[], base: Float32Array | undefined, f: number, source: string): Float32Array {
  const out = target[0];
  const row = numel(target) / out;
  switch (a.type) {
    case 'lora':
      // lora.py: mm(up.flatten(1), down.flatten(1)) · alpha/rank.
      return matmul(a.up.data, a.down.data, out, a.down.shape[0], row, f);
    case 'locon-mid': {
      // lora.py folds the core into down, down'[m, i, s] = Σn mid[m, n, s]·down[n, i]; then up·down'.
      const r = a.down.shape[0];
      const rm = a.mid.shape[0];
      const inDim = a.down.shape[1];
      const kk = numel(a.mid.shape.slice(2));
      const folded = new Float32Array(rm * inDim * kk);
      for (let m = 0; m < rm; m++) {
        const part = matmul(a.down.data, a.mid.data.subarray(m * r * kk, (m + 1) * r * kk), inDim, r, kk, 1, true);
        folded.set(part, m * inDim * kk);
      }
      return matmul(a.up.data, folded, out, rm, inDim * kk, f);
    }
    case 'loha': {
      if (a.t1 && a.t2) {
        // loha.py: einsum('i j k l, j r, i p -> p r k l', t, w_b, w_a) for each side, then ⊙.
        const m1 = tucker(a.t1, a.w1a, a.w1b);
        const m2 = tucker(a.t2, a.w2a, a.w2b);
        for (let i = 0; i < m1.length; i++) m1[i] = f * m1[i] * m2[i];
        return m1;
      }
      return hadamardOfProducts(a.w1a.data, a.w1b.data, a.w2a.data, a.w2b.data, out, a.w1b.shape[0], a.w2b.shape[0], row, f);
    }
    case 'lokr': {
      // lokr.py: kron(w1, w2) with w1 unsqueezed to w2's rank, reshaped to the weight.
      const w1 = rebuildLokr(a.w1);
      const w2 = rebuildLokr(a.w2);
      const s1 = lokrShape(a.w1);
      const s2 = lokrShape(a.w2);
      return kron(w1, s1[0], numel(s1) / s1[0], w2, s2[0], numel(s2) / s2[0], f);
    }
    case 'glora':
      return gloraDelta(a, target, base!, f, source);
  }
}

/** C[m×n] = f·A·B with A [m×k] (or Aᵀ when A is stored [k×m]) and B [k×n], row-major, fp64 rows. */
export function matmul(A: Float32Array, B: Float32Array, m: number, k: number, n: number, f = 1, transA = false): Float32Array {
  const C = new Float32Array(m * n);
  const acc = new Float64Array(n);
  const a = new Float64Array(k);
  for (let i = 0; i < m; i++) {
    loadRow(a, A, i, m, k, transA);
    acc.fill(0);
    accumulateRow(acc, a, B, k, n);
    const c0 = i * n;
    for (let j = 0; j < n; j++) C[c0 + j] = f * acc[j];
  }
  return C;
}

function loadRow(a: Float64Array, A: Float32Array, i: number, m: number, k: number, transA: boolean): void {
  if (transA) for (let p = 0; p < k; p++) a[p] = A[p * m + i];
  else for (let p = 0; p < k; p++) a[p] = A[i * k + p];
}

/** acc += a·B (a: one row of A, B [k×n]); unrolled by 8 and 4 so each pass over acc does several updates. */
function accumulateRow(acc: Float64Array, a: Float64Array, B: Float32Array, k: number, n: number): void {
  let p = 0;
  for (; p + 7 < k; p += 8) {
    const a0 = a[p];
    const a1 = a[p + 1];
    const a2 = a[p + 2];
    const a3 = a[p + 3];
    const a4 = a[p + 4];
    const a5 = a[p + 5];
    const a6 = a[p + 6];
    const a7 = a[p + 7];
    const b0 = p * n;
    for (let j = 0; j < n; j++) {
      const q = b0 + j;
      acc[j] += a0 * B[q] + a1 * B[q + n] + a2 * B[q + 2 * n] + a3 * B[q + 3 * n] + a4 * B[q + 4 * n] + a5 * B[q + 5 * n] + a6 * B[q + 6 * n] + a7 * B[q + 7 * n];
    }
  }
  for (; p + 3 < k; p += 4) {
    const a0 = a[p];
    const a1 = a[p + 1];
    const a2 = a[p + 2];
    const a3 = a[p + 3];
    const b0 = p * n;
    for (let j = 0; j < n; j++) {
      const q = b0 + j;
      acc[j] += a0 * B[q] + a1 * B[q + n] + a2 * B[q + 2 * n] + a3 * B[q + 3 * n];
    }
  }
  for (; p < k; p++) {
    const a0 = a[p];
    if (a0 === 0) continue;
    const b0 = p * n;
    for (let j = 0; j < n; j++) acc[j] += a0 * B[b0 + j];
  }
}

/** f·(A1·B1) ⊙ (A2·B2), one output row at a time so both product rows stay in cache. */
function hadamardOfProducts(A1: Float32Array, B1: Float32Array, A2: Float32Array, B2: Float32Array, m: number, k1: number, k2: number, n: number, f: number): Float32Array {
  const C = new Float32Array(m * n);
  const r1 = new Float64Array(n);
  const r2 = new Float64Array(n);
  const a1 = new Float64Array(k1);
  const a2 = new Float64Array(k2);
  for (let i = 0; i < m; i++) {
    loadRow(a1, A1, i, m, k1, false);
    loadRow(a2, A2, i, m, k2, false);
    r1.fill(0);
    r2.fill(0);
    accumulateRow(r1, a1, B1, k1, n);
    accumulateRow(r2, a2, B2, k2, n);
    const c0 = i * n;
    for (let j = 0; j < n; j++) C[c0 + j] = f * r1[j] * r2[j];
  }
  return C;
}

/** out[p, q, s] = Σi Σj t[i, j, s]·b[j, q]·a[i, p]: t [ra, rb, kk…], a [ra, P], b [rb, Q]. */
function tucker(t: AdapterFactor, a: AdapterFactor, b: AdapterFactor): Float32Array {
  const [ra, rb] = t.shape;
  const kk = numel(t.shape.slice(2));
  const P = a.shape[1];
  const Q = b.shape[1];
  // tmp[i, q, s] = Σj b[j, q]·t[i, j, s]: for each i, bᵀ [Q×rb] · t_i [rb×kk].
  const tmp = new Float32Array(ra * Q * kk);
  for (let i = 0; i < ra; i++) {
    tmp.set(matmul(b.data, t.data.subarray(i * rb * kk, (i + 1) * rb * kk), Q, rb, kk, 1, true), i * Q * kk);
  }
  // out = aᵀ [P×ra] · tmp [ra×(Q·kk)].
  return matmul(a.data, tmp, P, ra, Q * kk, 1, true);
}

function rebuildLokr(w: LokrFactor): Float32Array {
  if (w.kind === 'full') return w.w.data;
  if (w.kind === 'low-rank') return matmul(w.a.data, w.b.data, w.a.shape[0], w.b.shape[0], numel(w.b.shape) / w.b.shape[0], 1);
  return tucker(w.t, w.a, w.b);
}

/** f·kron(A [ar×ac], B [br×bc]) as [ar·br × ac·bc]. */
function kron(A: Float32Array, ar: number, ac: number, B: Float32Array, br: number, bc: number, f: number): Float32Array {
  const cols = ac * bc;
  const C = new Float32Array(ar * br * cols);
  for (let i = 0; i < ar; i++) {
    for (let p = 0; p < br; p++) {
      const c0 = (i * br + p) * cols;
      const b0 = p * bc;
      for (let j = 0; j < ac; j++) {
        const a = f * A[i * ac + j];
        const cj = c0 + j * bc;
        for (let q = 0; q < bc; q++) C[cj + q] = a * B[b0 + q];
      }
    }
  }
  return C;
}

/**
 * glora.py: old layout ΔW = b2·b1 + (W·a2)·a1 on W flattened to [out, K]; new layout
 * ΔW = (W·a1)·a2 + b1·b2, where for a conv W·a1 mixes input channels at each tap
 * (einsum 'o i ..., i j -> o j ...'). Factors are flattened to 2-D first.
 */
function gloraDelta(a: Extract<AdapterDescription, { type: 'glora' }>, target: readonly number[], W: Float32Array, f: number, source: string): Float32Array {
  const { old } = gloraLayout(a, target, source);
  const out = target[0];
  const row = numel(target) / out;
  const cols = (x: AdapterFactor) => numel(x.shape) / x.shape[0];
  let d: Float32Array;
  if (old) {
    const r = a.a1.shape[0];
    const wa2 = matmul(W, a.a2.data, out, row, r);
    d = matmul(wa2, a.a1.data, out, r, row);
    const bb = matmul(a.b2.data, a.b1.data, out, r, row);
    for (let i = 0; i < d.length; i++) d[i] += bb[i];
  } else {
    const r = cols(a.a1);
    const inDim = target[1];
    const kk = row / inDim;
    if (kk === 1) {
      d = matmul(matmul(W, a.a1.data, out, inDim, r), a.a2.data, out, r, inDim);
    } else {
      d = new Float32Array(out * row);
      for (let o = 0; o < out; o++) {
        // W_o [in×kk] → a1ᵀ·W_o [r×kk] → a2ᵀ·(…) [in×kk].
        const t = matmul(a.a1.data, W.subarray(o * row, (o + 1) * row), r, inDim, kk, 1, true);
        d.set(matmul(a.a2.data, t, inDim, r, kk, 1, true), o * row);
      }
    }
    const bb = matmul(a.b1.data, a.b2.data, out, cols(a.b1), row);
    for (let i = 0; i < d.length; i++) d[i] += bb[i];
  }
  if (f !== 1) for (let i = 0; i < d.length; i++) d[i] *= f;
  return d;
}

/**
 * DoRA as ComfyUI's weight_adapter/base.py::weight_decompose: W' = W + α·ΔW (α = alpha/rank,
 * strength not yet applied), D = dora_scale · W' / (‖W'‖ + eps) per output row or per input
 * column, and the strength interpolates: merged = W + s·(D − W). Returns D.
 * The norm is always taken of W' as LyCORIS and PEFT define it; ComfyUI's output-axis
 * branch takes it of the base W instead, which we do not copy.
 */
function doraWeight(dora: AdapterFactor, W: Float32Array, delta: Float32Array, target: readonly number[], source: string): Float32Array {
  const axis = doraAxis(dora, target, source);
  const out = target[0];
  const row = numel(target) / out;
  const m = dora.data;
  // W' = W + α·ΔW in fp32 as ComfyUI forms it, then scaled in place.
  const wc = new Float32Array(W.length);
  for (let i = 0; i < W.length; i++) wc[i] = W[i] + delta[i];
  if (axis === 'out') {
    for (let o = 0; o < out; o++) {
      let ss = 0;
      const r0 = o * row;
      for (let j = 0; j < row; j++) ss += wc[r0 + j] * wc[r0 + j];
      const g = m[o] / (Math.sqrt(ss) + F32_EPS);
      for (let j = 0; j < row; j++) wc[r0 + j] *= g;
    }
    return wc;
  }
  const inDim = target[1];
  const kk = row / inDim;
  const ss = new Float64Array(inDim);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inDim; c++) {
      const b = o * row + c * kk;
      for (let s = 0; s < kk; s++) ss[c] += wc[b + s] * wc[b + s];
    }
  }
  const g = new Float64Array(inDim);
  for (let c = 0; c < inDim; c++) g[c] = m[c] / (Math.sqrt(ss[c]) + F32_EPS);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inDim; c++) {
      const b = o * row + c * kk;
      for (let s = 0; s < kk; s++) wc[b + s] *= g[c];
    }
  }
  return wc;
}
