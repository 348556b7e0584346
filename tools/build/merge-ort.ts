/**
 * The merge for large tensors at build time, on onnxruntime-node's CPU kernels: a rank-r GEMM
 * plus a cast over millions of weights is ~30× faster in MLAS than in JavaScript. The graphs
 * and their inputs are the load-time overlay's (common/lora/overlay-merge.ts: plain LoRAs
 * stacked along the rank, one LoHa, one LoKr), fp32 math cast back once.
 * Deterministic: the kernels split work over rows and columns, never over the rank.
 */
import type * as Ort from 'onnxruntime-node';
import type { TensorLayout } from '../../common/manifest.ts';
import { loraInputs, type MergeInputs, type MergeKind, type MergeTerm, mergeGraph, mergeRuns } from '../../common/lora/overlay-merge.ts';

export type OrtMergeDtype = 'float32' | 'float16';
export type { MergeTerm };

const sessions = new Map<string, Promise<Ort.InferenceSession>>();

/** Loaded on first use: most CLI commands never need the native runtime. */
let runtime: Promise<typeof Ort> | undefined;
const loadOrt = () => (runtime ??= import('onnxruntime-node'));

/**
 * Elements per run: onnxruntime's fp32 temporaries (two of CHUNK × 4 bytes) stay about 1 MiB,
 * in cache, and the arena that recycles them never grows past a few blocks.
 */
const CHUNK = 1 << 18;

/** The merge graph of one kind and dtype, made once per process. */
async function mergeSession(dtype: OrtMergeDtype, kind: MergeKind): Promise<Ort.InferenceSession> {
  const ort = await loadOrt();
  const key = `${kind}|${dtype}`;
  let s = sessions.get(key);
  if (!s) {
    s = ort.InferenceSession.create(mergeGraph(dtype, kind), {
      graphOptimizationLevel: 'disabled',
      executionMode: 'sequential',
      // One thread: run() blocks the main thread anyway, and the second core is busier hashing
      // (base digest, shard digests) than a second GEMM thread would be useful; a second
      // thread also spins against those. The bytes do not depend on this (no split over rank).
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      // The arena recycles the per-block temporaries (fixed size: CHUNK elements, or one row)
      // instead of a malloc + page faults per run.
      enableCpuMemArena: true,
      enableMemPattern: false,
    });
    sessions.set(key, s);
  }
  return s;
}

/**
 * Merges `terms` (plain LoRAs) into the weight bytes; returns new bytes of the same dtype and
 * length, in `into` when given (at least as long as `bytes`; the caller reuses it across tensors).
 * W as stored is [rows, cols]: oi/oihw: [out, k], ΔW = U·D; io: [k, out], ΔW = Dᵀ·Uᵀ.
 */
export async function mergeWithOrt(bytes: Uint8Array, dtype: OrtMergeDtype, shape: readonly number[], layout: Exclude<TensorLayout, 'none'>, terms: MergeTerm[], into?: Uint8Array): Promise<Uint8Array> {
  return runMergeWithOrt(bytes, dtype, loraInputs(terms, shape, layout), into);
}

/**
 * Runs one merge graph (overlay-merge.ts MergeInputs) over the weight bytes, in blocks of rows,
 * so memory stays at the tensor plus a few MiB; returns new bytes (in `into` when it fits).
 */
export async function runMergeWithOrt(bytes: Uint8Array, dtype: OrtMergeDtype, inputs: MergeInputs, into?: Uint8Array): Promise<Uint8Array> {
  const { cols } = inputs;
  const size = dtype === 'float32' ? 4 : 2;
  let src = bytes;
  if (bytes.byteOffset % 4) {
    src = new Uint8Array(bytes.length);
    src.set(bytes);
  }
  const result = into && into.length >= bytes.length && into.byteOffset % 4 === 0 ? into.subarray(0, bytes.length) : new Uint8Array(bytes.length);
  const ort = await loadOrt();
  const session = await mergeSession(dtype, inputs.kind);
  for (const { row, n, factors } of mergeRuns(inputs, CHUNK)) {
    const offset = src.byteOffset + row * cols * size;
    const w = dtype === 'float32' ? new Float32Array(src.buffer, offset, n * cols) : new Uint16Array(src.buffer, offset, n * cols);
    // onnxruntime writes the block straight into `result`: no per-block copy or garbage.
    const yOffset = result.byteOffset + row * cols * size;
    const y = dtype === 'float32' ? new Float32Array(result.buffer, yOffset, n * cols) : new Uint16Array(result.buffer, yOffset, n * cols);
    const feeds: Record<string, Ort.Tensor> = { w: new ort.Tensor(dtype, w, [n, cols]) };
    for (const f of factors) feeds[f.name] = new ort.Tensor('float32', f.data, f.dims);
    await session.run(feeds, { y: new ort.Tensor(dtype, y, [n, cols]) });
  }
  return result;
}
