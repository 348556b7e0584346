/**
 * Load-time merge of large weights through the runtime's own onnxruntime (Engine), on the
 * providers the pipeline asked for: y = cast(l·r + cast(w, fp32), dtype), the math
 * tools/build/merge-ort.ts runs at build time (fp32, cast once), as one Gemm.
 * A rank-r GEMM over millions of weights is many times faster in ORT's kernels than in
 * JavaScript. Runtime-neutral: the graph is encoded here (a few protobuf fields), since the
 * ONNX codec in tools/ is Node-only.
 */
import type { TensorLayout } from '../manifest.ts';
import type { Engine, EngineSession, Provider } from '../pipeline.ts';
import { loraFactor, type LoraMatrix } from './delta.ts';

export type MergeDtype = 'float32' | 'float16';

export interface MergeTerm {
  up: LoraMatrix;
  down: LoraMatrix;
  alpha: number | undefined;
  scale: number;
}

/** Elements per run: keeps ORT's fp32 temporaries to a few tens of MiB. */
const CHUNK = 1 << 22;

const ELEM_TYPE: Record<MergeDtype, number> = { float32: 1, float16: 10 };

// --- a minimal protobuf writer for the merge graph (onnx.proto field numbers) ---
function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
const enc = new TextEncoder();
const field = (no: number, bytes: ArrayLike<number>): number[] => [...varint((no << 3) | 2), ...varint(bytes.length), ...Array.from(bytes)];
const int = (no: number, n: number): number[] => [...varint(no << 3), ...varint(n)];
const str = (no: number, s: string) => field(no, enc.encode(s));

function valueInfo(name: string, dtype: number, dims: string[]): number[] {
  const shape = dims.flatMap((d) => field(1, str(2, d)));
  return str(1, name).concat(field(2, field(1, int(1, dtype).concat(field(2, shape)))));
}
function node(op: string, inputs: string[], outputs: string[], attrs: [string, number][] = []): number[] {
  const attributes = attrs.flatMap(([name, i]) => field(5, str(1, name).concat(int(3, i), int(20, 2))));
  return field(1, inputs.flatMap((i) => str(1, i)).concat(outputs.flatMap((o) => str(2, o)), str(3, `${op}_${outputs[0]}`), str(4, op), attributes));
}

/** The ONNX model bytes of the merge graph for one weight dtype (opset 17, IR 8). */
export function mergeGraph(dtype: MergeDtype): Uint8Array {
  const t = ELEM_TYPE[dtype];
  const nodes: number[] = [];
  const w32 = dtype === 'float32' ? 'w' : 'w32';
  if (dtype !== 'float32') nodes.push(...node('Cast', ['w'], ['w32'], [['to', 1]]));
  // Gemm: l·r + w in one pass over the weight (MatMul then Add would make two).
  nodes.push(...node('Gemm', ['l', 'r', w32], [dtype === 'float32' ? 'y' : 'sum']));
  if (dtype !== 'float32') nodes.push(...node('Cast', ['sum'], ['y'], [['to', t]]));
  const graph = nodes.concat(
    str(2, 'fuseload_lora_merge'),
    field(11, valueInfo('w', t, ['rows', 'cols'])),
    field(11, valueInfo('l', 1, ['rows', 'rank'])),
    field(11, valueInfo('r', 1, ['rank', 'cols'])),
    field(12, valueInfo('y', t, ['rows', 'cols'])),
  );
  const model = int(1, 8).concat(str(2, 'fuseload'), field(8, str(1, '').concat(int(2, 17))), field(7, graph));
  return Uint8Array.from(model);
}

function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}

/** The merge as one GEMM over a weight stored [rows, cols]: y = w + left·right. */
export interface StackedFactors {
  rows: number;
  cols: number;
  /** Sum of the terms' ranks. */
  rank: number;
  /** [rows, rank]: the up matrices pre-scaled (oi/oihw), or the downs transposed (io). */
  left: Float32Array;
  /** [rank, cols]: the down matrices (oi/oihw), or the scaled ups transposed (io). */
  right: Float32Array;
}

/**
 * Stacks several LoRAs on one weight into one product: [f₁U₁ | f₂U₂ | …]·[D₁; D₂; …], each up
 * pre-scaled by its factor (scale × alpha/rank). W as stored: oi/oihw [out, k], ΔW = U·D;
 * io [k, out], ΔW = Dᵀ·Uᵀ. Shared by the build's merge and the load-time overlay.
 */
export function stackFactors(terms: readonly MergeTerm[], shape: readonly number[], layout: Exclude<TensorLayout, 'none'>): StackedFactors {
  const outDim = terms[0].up.shape[0];
  const total = shape.reduce((a, b) => a * b, 1);
  const k = total / outDim;
  const rank = terms.reduce((a, t) => a + t.down.shape[0], 0);
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
  return {
    rows: io ? k : outDim,
    cols: io ? outDim : k,
    rank,
    left: io ? transpose(d, rank, k) : u,
    right: io ? transpose(u, outDim, rank) : d,
  };
}

/**
 * Runs merges on an Engine, one session per (providers, dtype), made once and kept. A provider
 * that cannot create the merge session is passed over; with none, `merge` returns false and the
 * caller does the math in JavaScript.
 */
export class EngineMerger {
  readonly #sessions = new Map<string, Promise<{ session: EngineSession; provider: Provider } | null>>();

  constructor(
    readonly engine: Engine,
    readonly warn: (message: string) => void = () => {},
  ) {}

  #session(dtype: MergeDtype, providers: Provider[]) {
    const key = `${dtype}|${providers.join(',')}`;
    let s = this.#sessions.get(key);
    if (!s) {
      s = (async () => {
        const reasons: string[] = [];
        for (const provider of providers) {
          try {
            return { session: await this.engine.create(mergeGraph(dtype), [], provider), provider };
          } catch (e) {
            reasons.push(`${provider}: ${e instanceof Error ? e.message : String(e)}`);
          }
        }
        this.warn(`LoRA merge graph (${dtype}) runs on no provider (${reasons.join('; ')}); merging in JavaScript`);
        return null;
      })();
      this.#sessions.set(key, s);
    }
    return s;
  }

  /**
   * Writes `src` (a weight, little-endian `dtype`, [rows, cols] as stored) plus every term into `dst`
   * (same length; may be `src` itself).
   * W as stored: oi/oihw [out, k], ΔW = U·D; io [k, out], ΔW = Dᵀ·Uᵀ. Several LoRAs on one
   * weight are one GEMM over the factors stacked along the rank, each up pre-scaled by its factor.
   */
  async merge(src: Uint8Array, dst: Uint8Array, dtype: MergeDtype, shape: readonly number[], layout: Exclude<TensorLayout, 'none'>, terms: MergeTerm[], providers: Provider[]): Promise<boolean> {
    const got = await this.#session(dtype, providers);
    if (!got) return false;
    const { rows, cols, rank, left, right } = stackFactors(terms, shape, layout);
    const size = dtype === 'float32' ? 4 : 2;
    // Typed views need an aligned offset (tensors are 64-byte aligned in their shard, shards may not be).
    if (src.byteOffset % 4) src = src.slice();
    const step = Math.max(1, Math.floor(CHUNK / cols));
    for (let row = 0; row < rows; row += step) {
      const n = Math.min(step, rows - row);
      const offset = src.byteOffset + row * cols * size;
      const w = dtype === 'float32' ? new Float32Array(src.buffer, offset, n * cols) : new Uint16Array(src.buffer, offset, n * cols);
      const out = await got.session.run({
        w: { type: dtype, dims: [n, cols], data: w },
        l: { type: 'float32', dims: [n, rank], data: left.subarray(row * rank, (row + n) * rank) },
        r: { type: 'float32', dims: [rank, cols], data: right },
      });
      const y = out.y.data;
      dst.set(new Uint8Array(y.buffer, y.byteOffset, n * cols * size), row * cols * size);
    }
    return true;
  }
}
