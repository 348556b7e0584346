/**
 * Merges of large weights on onnxruntime, at load time through the runtime's own Engine (on the
 * providers the pipeline asked for), at build time through tools/build/merge-ort.ts: the same
 * graphs and the same inputs, fp32 math cast back once. A rank-r GEMM over millions of weights
 * is many times faster in ORT's kernels than in JavaScript. Three graphs, one per adapter form
 * the recipe (merge-recipe.ts) sends here:
 *
 *   lora  y = cast(l·r + cast(w, fp32))               several LoRAs stacked along the rank
 *   loha  y = cast(cast(w, fp32) + (l1·r1) ⊙ (l2·r2))  one LoHa
 *   lokr  y = cast(cast(w, fp32) + reshape(a ⊙ c))     one LoKr: a [1, b, 1] ⊙ c [n, 1, d] per run
 *
 * Runtime-neutral: the graphs are encoded here (a few protobuf fields), since the ONNX codec in
 * tools/ is Node-only. Deterministic: the kernels split work over rows and columns, never over
 * the rank, so any block of rows gives the same bytes.
 */
import type { TensorLayout } from '../manifest.ts';
import type { Engine, EngineSession, Feeds, Provider } from '../pipeline.ts';
import { adapterRank, type AdapterDescription, type LokrFactor, lokrShape } from './adapter-types.ts';
import { matmul } from './adapter-delta.ts';
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

export type MergeKind = 'lora' | 'loha' | 'lokr';

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The ONNX model bytes of a merge graph for one weight dtype (opset 17, IR 8). */
export function mergeGraph(dtype: MergeDtype, kind: MergeKind = 'lora'): Uint8Array {
  const t = ELEM_TYPE[dtype];
  const nodes: number[] = [];
  const w32 = dtype === 'float32' ? 'w' : 'w32';
  const sum = dtype === 'float32' ? 'y' : 'sum';
  if (dtype !== 'float32') nodes.push(...node('Cast', ['w'], ['w32'], [['to', 1]]));
  const inputs: number[] = [];
  const input = (name: string, dims: string[], elem = 1) => inputs.push(...field(11, valueInfo(name, elem, dims)));
  input('w', ['rows', 'cols'], t);
  if (kind === 'lora') {
    // Gemm: l·r + w in one pass over the weight (MatMul then Add would make two).
    nodes.push(...node('Gemm', ['l', 'r', w32], [sum]));
    input('l', ['rows', 'rank']);
    input('r', ['rank', 'cols']);
  } else if (kind === 'loha') {
    nodes.push(...node('MatMul', ['l1', 'r1'], ['p1']), ...node('MatMul', ['l2', 'r2'], ['p2']), ...node('Mul', ['p1', 'p2'], ['d']), ...node('Add', [w32, 'd'], [sum]));
    input('l1', ['rows', 'rank1']);
    input('r1', ['rank1', 'cols']);
    input('l2', ['rows', 'rank2']);
    input('r2', ['rank2', 'cols']);
  } else {
    // Row n of kron(w1, w2) is the outer product of w1's row i and w2's row p (n = i·c + p), flattened.
    nodes.push(...node('Mul', ['a', 'c'], ['k3']), ...node('Shape', ['w'], ['ws']), ...node('Reshape', ['k3', 'ws'], ['d']), ...node('Add', [w32, 'd'], [sum]));
    input('a', ['a_rows', 'b', 'one_b']);
    input('c', ['rows', 'one_c', 'd']);
  }
  if (dtype !== 'float32') nodes.push(...node('Cast', ['sum'], ['y'], [['to', t]]));
  const graph = nodes.concat(str(2, `fuseload_${kind}_merge`), inputs, field(12, valueInfo('y', t, ['rows', 'cols'])));
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

/** A factor input of a merge graph, fp32. */
export interface MergeFactor {
  name: string;
  data: Float32Array;
  dims: number[];
}

/**
 * A factor cut by the weight's rows for each run, `data` row-major [·, ...dims]:
 * `each` (default): one data row per weight row; `cyclic`: `block` data rows, weight row r
 * reads r mod block; `block`: one data row per `block` weight rows, fed as a single row that
 * broadcasts over the run.
 */
export interface RowFactor extends MergeFactor {
  rows?: 'each' | 'cyclic' | 'block';
}

/** One merge graph's inputs over a weight stored [rows, cols]: what both onnxruntime merges run. */
export interface MergeInputs {
  kind: MergeKind;
  rows: number;
  cols: number;
  /** Runs never cross a multiple of this many rows (cyclic and block factors need it). */
  block?: number;
  perRow: RowFactor[];
  /** Taken whole by every run. */
  shared: MergeFactor[];
}

/** One run of a merge graph: weight rows [row, row + n) and the factors it takes (views, no copies). */
export interface MergeRun {
  row: number;
  n: number;
  factors: MergeFactor[];
}

/**
 * The runs both onnxruntime merges make over a weight: blocks of about `chunkElements`
 * elements (at least one row), never crossing a multiple of `inputs.block` rows. The bytes do
 * not depend on the blocks (no kernel splits over the rank).
 */
export function* mergeRuns(inputs: MergeInputs, chunkElements: number): Generator<MergeRun> {
  const { rows, cols } = inputs;
  const block = inputs.block ?? rows;
  const step = Math.max(1, Math.floor(chunkElements / cols));
  for (let row = 0; row < rows; ) {
    const n = Math.min(step, rows - row, block - (row % block));
    const factors: MergeFactor[] = inputs.perRow.map((p) => {
      const width = numel(p.dims);
      const at = p.rows === 'cyclic' ? row % block : p.rows === 'block' ? Math.floor(row / block) : row;
      const count = p.rows === 'block' ? 1 : n;
      return { name: p.name, data: p.data.subarray(at * width, (at + count) * width), dims: [count, ...p.dims] };
    });
    yield { row, n, factors: factors.concat(inputs.shared) };
    row += n;
  }
}

/** Several plain LoRAs on one weight: the stacked Gemm. */
export function loraInputs(terms: readonly MergeTerm[], shape: readonly number[], layout: Exclude<TensorLayout, 'none'>): MergeInputs {
  const { rows, cols, rank, left, right } = stackFactors(terms, shape, layout);
  return { kind: 'lora', rows, cols, perRow: [{ name: 'l', data: left, dims: [rank] }], shared: [{ name: 'r', data: right, dims: [rank, cols] }] };
}

/**
 * One LoHa (no Tucker core, no DoRA) at `scale`: ΔW = f·(w1a·w1b) ⊙ (w2a·w2b), f = scale·alpha/rank.
 * oi/oihw: l = w·a [out, r], r = w·b [r, k]; io (stored ΔWᵀ): l = w·bᵀ [k, r], r = w·aᵀ [r, out].
 */
export function lohaInputs(a: Extract<AdapterDescription, { type: 'loha' }>, scale: number, shape: readonly number[], layout: Exclude<TensorLayout, 'none'>): MergeInputs {
  const f = scale * loraFactor(a.alpha, a.w1b.shape[0]);
  const io = layout === 'io';
  const out = io ? shape[1] : shape[0];
  const k = numel(shape) / out;
  const side = (wa: LoraMatrix, wb: LoraMatrix, g: number) => {
    const r = wb.shape[0];
    const ua = g === 1 ? wa.data : wa.data.map((v) => g * v);
    return io ? { l: transpose(wb.data, r, k), r: transpose(ua, out, r), rank: r } : { l: ua, r: wb.data, rank: r };
  };
  const s1 = side(a.w1a, a.w1b, f);
  const s2 = side(a.w2a, a.w2b, 1);
  const rows = io ? k : out;
  const cols = io ? out : k;
  return {
    kind: 'loha',
    rows,
    cols,
    perRow: [
      { name: 'l1', data: s1.l, dims: [s1.rank] },
      { name: 'l2', data: s2.l, dims: [s2.rank] },
    ],
    shared: [
      { name: 'r1', data: s1.r, dims: [s1.rank, cols] },
      { name: 'r2', data: s2.r, dims: [s2.rank, cols] },
    ],
  };
}

/** A LoKr side as a matrix [rows, cols] (a Tucker side has no onnxruntime form: undefined). */
function lokrMatrix(w: LokrFactor): { data: Float32Array; rows: number; cols: number } | undefined {
  const s = lokrShape(w);
  const rows = s[0];
  const cols = numel(s) / rows;
  if (w.kind === 'full') return { data: w.w.data, rows, cols };
  if (w.kind === 'low-rank') return { data: matmul(w.a.data, w.b.data, rows, w.b.shape[0], cols), rows, cols };
  return undefined;
}

/**
 * One LoKr (no Tucker core, no DoRA) at `scale`: ΔW = f·kron(w1, w2), f = scale·alpha/rank (1
 * when both sides are full). Row n = i·c + p of the kron (c = w2's rows) is f·w1[i, :] ⊗ w2[p, :]:
 * runs stay inside one i (block c), feeding f·w1[i, :] once (`a`) and w2's rows p… as they are
 * (`c`), so nothing the size of the weight is built here. io (stored ΔWᵀ) is kron(w1ᵀ, w2ᵀ).
 */
export function lokrInputs(a: Extract<AdapterDescription, { type: 'lokr' }>, scale: number, layout: Exclude<TensorLayout, 'none'>): MergeInputs | undefined {
  let w1 = lokrMatrix(a.w1);
  let w2 = lokrMatrix(a.w2);
  if (!w1 || !w2) return undefined;
  if (layout === 'io') {
    w1 = { data: transpose(w1.data, w1.rows, w1.cols), rows: w1.cols, cols: w1.rows };
    w2 = { data: transpose(w2.data, w2.rows, w2.cols), rows: w2.cols, cols: w2.rows };
  }
  const rank = adapterRank(a);
  const f = scale * (rank === undefined ? 1 : loraFactor(a.alpha, rank));
  return {
    kind: 'lokr',
    rows: w1.rows * w2.rows,
    cols: w1.cols * w2.cols,
    block: w2.rows,
    perRow: [
      { name: 'a', data: w1.data.map((v) => f * v), dims: [w1.cols, 1], rows: 'block' },
      { name: 'c', data: w2.data, dims: [1, w2.cols], rows: 'cyclic' },
    ],
    shared: [],
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

  #session(dtype: MergeDtype, kind: MergeKind, providers: Provider[]) {
    const key = `${kind}|${dtype}|${providers.join(',')}`;
    let s = this.#sessions.get(key);
    if (!s) {
      s = (async () => {
        const reasons: string[] = [];
        for (const provider of providers) {
          try {
            return { session: await this.engine.create(mergeGraph(dtype, kind), [], provider), provider };
          } catch (e) {
            reasons.push(`${provider}: ${e instanceof Error ? e.message : String(e)}`);
          }
        }
        this.warn(`LoRA merge graph (${kind}, ${dtype}) runs on no provider (${reasons.join('; ')}); merging in JavaScript`);
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
    return this.run(src, dst, dtype, loraInputs(terms, shape, layout), providers);
  }

  /** Writes `src` merged by `inputs`' graph into `dst` (same length; may be `src`); false when no provider runs the graph. */
  async run(src: Uint8Array, dst: Uint8Array, dtype: MergeDtype, inputs: MergeInputs, providers: Provider[]): Promise<boolean> {
    const got = await this.#session(dtype, inputs.kind, providers);
    if (!got) return false;
    const { cols } = inputs;
    const size = dtype === 'float32' ? 4 : 2;
    // Typed views need an aligned offset (tensors are 64-byte aligned in their shard, shards may not be).
    if (src.byteOffset % 4) src = src.slice();
    for (const { row, n, factors } of mergeRuns(inputs, CHUNK)) {
      const offset = src.byteOffset + row * cols * size;
      const w = dtype === 'float32' ? new Float32Array(src.buffer, offset, n * cols) : new Uint16Array(src.buffer, offset, n * cols);
      const feeds: Feeds = { w: { type: dtype, dims: [n, cols], data: w } };
      for (const f of factors) feeds[f.name] = { type: 'float32', dims: f.dims, data: f.data };
      const out = await got.session.run(feeds);
      const y = out.y.data;
      dst.set(new Uint8Array(y.buffer, y.byteOffset, n * cols * size), row * cols * size);
    }
    return true;
  }
}
