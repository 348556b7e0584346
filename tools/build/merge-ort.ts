/**
 * The merge for large tensors, on onnxruntime's CPU kernels: a rank-r GEMM plus a cast over
 * millions of weights is ~30× faster in MLAS than in JavaScript. Same math as
 * common/lora/applyLoraDelta (fp32, cast back once); several LoRAs on one weight are one
 * GEMM over the factors stacked along the rank, each up matrix pre-scaled by its factor.
 * Deterministic: the GEMM splits work over rows and columns, never over the rank.
 */
import type * as Ort from 'onnxruntime-node';
import { loraFactor, type LoraMatrix } from '../../common/lora/delta.ts';
import type { TensorLayout } from '../../common/manifest.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { DTYPE_CODES, encodeModel } from '../onnx/model.ts';

export type OrtMergeDtype = 'float32' | 'float16';

export interface MergeTerm {
  up: LoraMatrix;
  down: LoraMatrix;
  alpha: number | undefined;
  scale: number;
}

const sessions = new Map<string, Promise<Ort.InferenceSession>>();

/** Loaded on first use: most CLI commands never need the native runtime. */
let runtime: Promise<typeof Ort> | undefined;
const loadOrt = () => (runtime ??= import('onnxruntime-node'));

/** Elements per run: small enough that onnxruntime's fp32 temporaries stay a few MiB. */
const CHUNK = 1 << 20;

/** y = cast(cast(w, fp32) + l·r, dtype) for one block of rows: w [rows, cols], l [rows, rank], r [rank, cols]. */
async function mergeSession(dtype: OrtMergeDtype): Promise<Ort.InferenceSession> {
  const ort = await loadOrt();
  let s = sessions.get(dtype);
  if (!s) {
    const g = new GraphBuilder();
    const w = g.input('w', { dtype, dims: ['rows', 'cols'] });
    const l = g.input('l', { dtype: 'float32', dims: ['rows', 'rank'] });
    const r = g.input('r', { dtype: 'float32', dims: ['rank', 'cols'] });
    const w32 = dtype === 'float32' ? w : g.op('Cast', [w], { to: DTYPE_CODES.float32 });
    let y = g.op('Add', [w32, g.op('MatMul', [l, r])]);
    if (dtype !== 'float32') y = g.op('Cast', [y], { to: DTYPE_CODES[dtype] });
    g.rename(y, 'y');
    g.output('y', { dtype, dims: ['rows', 'cols'] });
    s = ort.InferenceSession.create(encodeModel(g.model(17)), {
      graphOptimizationLevel: 'disabled',
      executionMode: 'sequential',
      // No arena: it would keep the high-water mark of every merge for the whole build.
      enableCpuMemArena: false,
      enableMemPattern: false,
    });
    sessions.set(dtype, s);
  }
  return s;
}

/**
 * Merges `terms` into the weight bytes; returns new bytes of the same dtype and length.
 * W as stored is [rows, cols]: oi/oihw: [out, k], ΔW = U·D; io: [k, out], ΔW = Dᵀ·Uᵀ.
 * Worked in blocks of rows, so memory stays at the tensor plus a few MiB.
 */
export async function mergeWithOrt(bytes: Uint8Array, dtype: OrtMergeDtype, shape: readonly number[], layout: Exclude<TensorLayout, 'none'>, terms: MergeTerm[]): Promise<Uint8Array> {
  const outDim = terms[0].up.shape[0];
  const total = shape.reduce((a, b) => a * b, 1);
  const k = total / outDim;
  const rank = terms.reduce((a, t) => a + t.down.shape[0], 0);
  // Stack [f₁U₁ | f₂U₂ | …] and [D₁; D₂; …] so the sum of deltas is one product.
  const u = new Float32Array(outDim * rank);
  const d = new Float32Array(rank * k);
  let r0 = 0;
  for (const t of terms) {
    const r = t.down.shape[0];
    const f = t.scale * loraFactor(t.alpha, r);
    for (let o = 0; o < outDim; o++) for (let j = 0; j < r; j++) u[o * rank + r0 + j] = f * t.up.data[o * r + j];
    d.set(t.down.data, r0 * k);
    r0 += r;
  }
  const io = layout === 'io';
  const rows = io ? k : outDim;
  const cols = io ? outDim : k;
  // left: [rows, rank] (U, or Dᵀ); right: [rank, cols] (D, or Uᵀ)
  const left = io ? transpose(d, rank, k) : u;
  const right = io ? transpose(u, outDim, rank) : d;
  const size = dtype === 'float32' ? 4 : 2;
  let src = bytes;
  if (bytes.byteOffset % 4) {
    src = new Uint8Array(bytes.length);
    src.set(bytes);
  }
  const result = new Uint8Array(bytes.length);
  const ort = await loadOrt();
  const session = await mergeSession(dtype);
  const rightTensor = new ort.Tensor('float32', right, [rank, cols]);
  const step = Math.max(1, Math.floor(CHUNK / cols));
  for (let row = 0; row < rows; row += step) {
    const n = Math.min(step, rows - row);
    const offset = src.byteOffset + row * cols * size;
    const w = dtype === 'float32' ? new Float32Array(src.buffer, offset, n * cols) : new Uint16Array(src.buffer, offset, n * cols);
    // onnxruntime writes the block straight into `result`: no per-block copy or garbage.
    const yOffset = row * cols * size;
    const y = dtype === 'float32' ? new Float32Array(result.buffer, yOffset, n * cols) : new Uint16Array(result.buffer, yOffset, n * cols);
    await session.run(
      {
        w: new ort.Tensor(dtype, w, [n, cols]),
        l: new ort.Tensor('float32', left.subarray(row * rank, (row + n) * rank), [n, rank]),
        r: rightTensor,
      },
      { y: new ort.Tensor(dtype, y, [n, cols]) },
    );
  }
  return result;
}

function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}
