/**
 * `withLoraBranches` on its own, run by real onnxruntime-node on CPU: a Linear layer gets
 * `y = x·W + (x·down)·up` beside it, joined by an Add (onnxruntime fuses it with the branch's last
 * MatMul into a Gemm) or a Sum (what WASM runs). Both must give the same numbers as the branch
 * computed here by plain loops over the same float32 values, with the factors fed, and a branch fed
 * rank 0 must give the layer alone.
 */
import ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { withLoraBranches } from '../../common/loader/switchable-graph.ts';
import { readFields } from '../../common/onnx-wire.ts';
import { mulberry32 } from '../../common/sample-input.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { encodeModel } from '../../tools/onnx/model.ts';

const [ROWS, IN, OUT, RANK] = [3, 8, 6, 2];

function values(n: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  return Float32Array.from({ length: n }, () => rand() - 0.5);
}

/** a [n, k] · b [k, m], row-major, accumulated in float64. */
function matmul(a: Float32Array, b: Float32Array, n: number, k: number, m: number): Float64Array {
  const out = new Float64Array(n * m);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) for (let p = 0; p < k; p++) out[i * m + j] += a[i * k + p] * b[p * m + j];
  return out;
}

/** The op types of the graph's nodes, in order (ModelProto 7 → GraphProto 1 → NodeProto 4). */
function opTypes(model: Uint8Array): string[] {
  const graph = readFields(model, 'test').find((f) => f.field === 7)!;
  return readFields(graph.payload, 'test')
    .filter((f) => f.field === 1)
    .map((n) => new TextDecoder().decode(readFields(n.payload, 'test').find((f) => f.field === 4)!.payload));
}

const w = values(IN * OUT, 1);
const x = values(ROWS * IN, 2);
const down = values(IN * RANK, 3);
const up = values(RANK * OUT, 4);

function layer(): Uint8Array {
  const g = new GraphBuilder();
  const input = g.input('x', { dtype: 'float32', dims: [ROWS, IN] });
  const y = g.op('MatMul', [input, g.weight('proj.weight', [IN, OUT], w)], {}, '/proj/MatMul');
  g.rename(y, 'y');
  g.output('y', { dtype: 'float32', dims: [ROWS, OUT] });
  return encodeModel(g.model());
}

describe('withLoraBranches', () => {
  for (const join of ['Add', 'Sum'] as const) {
    it(`joins a Linear layer's branch with ${join}: x·W + (x·down)·up, and rank 0 is the layer alone`, async () => {
      const { graph, branches, skipped } = withLoraBranches(layer(), ['proj.weight'], 'layer', join);
      expect(skipped.size).toBe(0);
      const branch = branches.get('proj.weight')!;
      expect(branch).toMatchObject({ kind: 'linear', dtype: 'float32' });
      expect(opTypes(graph)).toEqual(['MatMul', 'MatMul', 'MatMul', join]);

      const session = await ort.InferenceSession.create(graph);
      try {
        const feeds = (d: Float32Array, u: Float32Array, rank: number) => ({
          x: new ort.Tensor('float32', x, [ROWS, IN]),
          [branch.down]: new ort.Tensor('float32', d, [IN, rank]),
          [branch.up]: new ort.Tensor('float32', u, [rank, OUT]),
        });
        const base = matmul(x, w, ROWS, IN, OUT);
        const delta = matmul(Float32Array.from(matmul(x, down, ROWS, IN, RANK)), up, ROWS, RANK, OUT);
        const got = (await session.run(feeds(down, up, RANK))).y.data as Float32Array;
        expect(got.length).toBe(ROWS * OUT);
        for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(base[i] + delta[i], 5);
        // The branch really contributes: the answer is not the layer's alone.
        expect(Math.max(...delta.map(Math.abs))).toBeGreaterThan(1e-3);

        const alone = (await session.run(feeds(new Float32Array(0), new Float32Array(0), 0))).y.data as Float32Array;
        for (let i = 0; i < alone.length; i++) expect(alone[i]).toBeCloseTo(base[i], 5);
      } finally {
        await session.release();
      }
    });
  }
});
