/**
 * The graph edits that let a session switch LoRAs without being rebuilt (docs/architecture.md,
 * "Switching LoRAs without a new session"), made on the graph blob's bytes as handed to the
 * engine (the blob stays as published), on the protobuf wire format (onnx-wire.ts). Weights are
 * external data, so an edit copies only the small graph.
 *
 * - `withWeightInputs`: chosen weights become graph inputs, fed on every run. Declaring an
 *   initializer as an input too (ONNX IR ≥ 4: an overridable initializer, the stored weight as
 *   its default) is what onnxruntime itself offers, but its JavaScript bindings cannot feed one:
 *   an overridable initializer is not among a session's `inputNames`, and onnxruntime-node drops
 *   such a feed while onnxruntime-web rejects it. So the initializer is dropped and the weight is
 *   a plain input; the runtime feeds the stored bytes (or a merged copy) every run.
 * - `withLoraBranches`: a LoRA branch beside a layer, its factors fed (see LoraBranch).
 */
import { FuseloadError } from '../errors.ts';
import { concatBytes, encodeField, fieldString, fieldStrings, fieldVarint, fieldVarints, readFields, type WireField } from '../onnx-wire.ts';

// ModelProto / GraphProto / TensorProto / ValueInfoProto field numbers (onnx.proto).
const MODEL_GRAPH = 7;
const GRAPH_INITIALIZER = 5;
const GRAPH_INPUT = 11;
const TENSOR_DIMS = 1;
const TENSOR_DATA_TYPE = 2;
const TENSOR_NAME = 8;
const VALUE_INFO_NAME = 1;

export interface WeightInputsGraph {
  /** The graph with the weights as inputs (the same bytes when nothing changed). */
  graph: Uint8Array;
  /** The names that are now inputs, in the order asked for (initializers of the main graph only). */
  inputs: string[];
}

/** Turns every initializer in `names` into a graph input of its dtype and shape (its stored bytes are no longer read). */
export function withWeightInputs(graph: Uint8Array, names: Iterable<string>, what: string): WeightInputsGraph {
  const model = readFields(graph, what);
  const graphIndex = model.findIndex((f) => f.field === MODEL_GRAPH && f.wire === 2);
  if (graphIndex < 0) throw new FuseloadError('bad-input', `${what}: not an ONNX model (no graph)`);
  const fields = readFields(model[graphIndex].payload, what);
  const wanted = new Set(names);
  const declared = new Set(fields.filter((f) => f.field === GRAPH_INPUT && f.wire === 2).map((f) => fieldString(readFields(f.payload, what), VALUE_INFO_NAME)));
  const inputs: string[] = [];
  const added: Uint8Array[] = [];
  const kept: Uint8Array[] = [];
  for (const f of fields) {
    if (f.field !== GRAPH_INITIALIZER || f.wire !== 2) {
      kept.push(f.raw);
      continue;
    }
    const t = readFields(f.payload, what);
    const name = fieldString(t, TENSOR_NAME);
    if (name === undefined || !wanted.has(name)) {
      kept.push(f.raw);
      continue;
    }
    inputs.push(name);
    // Before IR 4 every initializer is declared as an input already: dropping the initializer is enough.
    if (declared.has(name)) continue;
    const dims = fieldVarints(t, TENSOR_DIMS, what);
    const shape = concatBytes(dims.map((d) => encodeField(1, encodeField(1, d))));
    const tensorType = concatBytes([encodeField(1, fieldVarint(t, TENSOR_DATA_TYPE) ?? 0), encodeField(2, shape)]);
    added.push(encodeField(GRAPH_INPUT, concatBytes([encodeField(VALUE_INFO_NAME, name), encodeField(2, encodeField(1, tensorType))])));
  }
  if (inputs.length === 0) return { graph, inputs };
  const order = [...wanted].filter((n) => inputs.includes(n));
  const newGraph = concatBytes([...kept, ...added]);
  return { graph: concatBytes(model.map((f, i) => (i === graphIndex ? encodeField(MODEL_GRAPH, newGraph) : f.raw))), inputs: order };
}

// NodeProto / AttributeProto field numbers.
const GRAPH_NODE = 1;
const NODE_INPUT = 1;
const NODE_OUTPUT = 2;
const NODE_NAME = 3;
const NODE_OP_TYPE = 4;
const NODE_ATTRIBUTE = 5;
const NODE_DOMAIN = 7;
const ATTR_NAME = 1;
const ATTR_I = 3;
const ATTR_INTS = 8;

/** ONNX TensorProto.DataType codes of the compute dtypes a branch can run in. */
const FLOAT_CODES: Record<number, 'float32' | 'float16'> = { 1: 'float32', 10: 'float16' };
const CODE_OF = { float32: 1, float16: 10 } as const;

/**
 * A LoRA branch beside one layer: `y = op(x, W) + (x·down)·up` (MatMul / Gemm, a Linear) or
 * `y = Conv(x, W) + Conv(Conv(x, down), up)` (Conv, `down` with W's kernel and attributes, `up`
 * 1×1). `down` and `up` are graph inputs with a symbolic rank; the LoRA's scale × alpha/rank
 * is folded into `up`, several LoRAs on one layer are stacked along the rank, and a layer no
 * LoRA touches is fed rank 1 of zeros (switch.ts `zeroFactors`: not every provider runs a rank-0 product).
 */
export interface LoraBranch {
  /** The initializer the layer reads (the tensor index name). */
  weight: string;
  kind: 'linear' | 'conv';
  /** The dtype the layer computes in (after any Cast on the weight's way to it). */
  dtype: 'float32' | 'float16';
  /** Input names: `down` [in, r] (linear) or [r, in, kh, kw] (conv); `up` [r, out] or [out, r, 1, 1]. */
  down: string;
  up: string;
}

export interface BranchGraph {
  graph: Uint8Array;
  branches: Map<string, LoraBranch>;
  /** Targets whose layer has no branch form here (a grouped Conv, a transposed Gemm input, …), with why. */
  skipped: Map<string, string>;
}

export interface NodeView {
  index: number;
  fields: WireField[];
  inputs: string[];
  outputs: string[];
  op: string;
  domain: string;
}

/** How a weight reaches the layer that reads it: through Identity / Cast / Transpose nodes, as the build's matching walks. */
export interface WeightPath {
  /** The MatMul / Gemm / Conv node, and which of its inputs the weight arrives on. */
  layer: NodeView;
  slot: number;
  /** The ops passed on the way (a Cast or a Transpose means onnxruntime folds it into a constant for a fixed weight). */
  via: string[];
  /** The dtype the layer reads the weight in. */
  dtype?: 'float32' | 'float16';
  /** Transposes between the stored weight and the layer's operand (Transpose nodes, a Gemm's transB). */
  transposes: number;
}

/** The nodes of the main graph and, per initializer in `names`, the layer it feeds. */
export function weightPaths(graph: Uint8Array, names: Iterable<string>, what: string): Map<string, WeightPath | string> {
  const model = readFields(graph, what);
  const g = model.find((f) => f.field === MODEL_GRAPH && f.wire === 2);
  if (!g) throw new FuseloadError('bad-input', `${what}: not an ONNX model (no graph)`);
  return pathsIn(readFields(g.payload, what), names, what).paths;
}

function pathsIn(fields: WireField[], names: Iterable<string>, what: string) {
  const nodes: NodeView[] = [];
  const consumers = new Map<string, { node: NodeView; slot: number }[]>();
  const dtypes = new Map<string, number>();
  for (const [index, f] of fields.entries()) {
    if (f.wire !== 2) continue;
    if (f.field === GRAPH_INITIALIZER) {
      const t = readFields(f.payload, what);
      const name = fieldString(t, TENSOR_NAME);
      if (name !== undefined) dtypes.set(name, fieldVarint(t, TENSOR_DATA_TYPE) ?? 0);
      continue;
    }
    if (f.field !== GRAPH_NODE) continue;
    const nf = readFields(f.payload, what);
    const node: NodeView = { index, fields: nf, inputs: fieldStrings(nf, NODE_INPUT), outputs: fieldStrings(nf, NODE_OUTPUT), op: fieldString(nf, NODE_OP_TYPE) ?? '', domain: fieldString(nf, NODE_DOMAIN) ?? '' };
    nodes.push(node);
    node.inputs.forEach((name, slot) => {
      const list = consumers.get(name) ?? [];
      list.push({ node, slot });
      consumers.set(name, list);
    });
  }
  const paths = new Map<string, WeightPath | string>();
  for (const name of names) {
    let value = name;
    let dtype: number | undefined = dtypes.get(name);
    const via: string[] = [];
    let found: WeightPath | string = 'not an initializer of the main graph';
    if (!dtypes.has(name)) {
      paths.set(name, found);
      continue;
    }
    for (;;) {
      const users = consumers.get(value) ?? [];
      if (users.length !== 1) {
        found = users.length ? `read by ${users.length} nodes` : 'read by no node';
        break;
      }
      const { node, slot } = users[0];
      if (node.domain !== '' && node.domain !== 'ai.onnx') {
        found = `read by a ${node.domain} ${node.op}`;
        break;
      }
      if (node.op === 'Identity' || node.op === 'Transpose' || node.op === 'Cast') {
        if (node.op === 'Cast') dtype = attrInt(node, 'to');
        via.push(node.op);
        value = node.outputs[0];
        continue;
      }
      if (node.op === 'MatMul' || node.op === 'Gemm' || node.op === 'Conv') {
        const transposes = via.filter((op) => op === 'Transpose').length + (node.op === 'Gemm' && attrInt(node, 'transB') ? 1 : 0);
        found = { layer: node, slot, via, dtype: dtype === undefined ? undefined : FLOAT_CODES[dtype], transposes };
      } else found = `read by a ${node.op}`;
      break;
    }
    paths.set(name, found);
  }
  return { nodes, paths };
}

function attr(node: NodeView, name: string): WireField[] | undefined {
  for (const f of node.fields) {
    if (f.field !== NODE_ATTRIBUTE || f.wire !== 2) continue;
    const a = readFields(f.payload, 'attribute');
    if (fieldString(a, ATTR_NAME) === name) return a;
  }
  return undefined;
}

function attrInt(node: NodeView, name: string): number | undefined {
  const a = attr(node, name);
  return a ? fieldVarint(a, ATTR_I) : undefined;
}

/** Why a layer has no branch form, or null when it has one. */
export function branchProblem(path: WeightPath): string | null {
  const { layer, slot } = path;
  if (!path.dtype) return 'computes in a dtype other than fp32/fp16';
  if (layer.op === 'MatMul') return slot === 1 ? null : 'is the left operand of its MatMul';
  if (layer.op === 'Gemm') {
    if (slot !== 1) return 'is not the B input of its Gemm';
    if (attrInt(layer, 'transA')) return 'feeds a Gemm with transA=1';
    const alpha = attr(layer, 'alpha');
    if (alpha && alpha.some((f) => f.field === 2 && f.wire === 5 && new DataView(f.raw.buffer, f.raw.byteOffset + f.raw.length - 4, 4).getFloat32(0, true) !== 1)) return 'feeds a Gemm with alpha ≠ 1';
    return null;
  }
  if (slot !== 1) return 'is not the kernel of its Conv';
  if (path.transposes) return 'reaches its Conv transposed';
  if ((attrInt(layer, 'group') ?? 1) !== 1) return 'feeds a grouped Conv';
  return null;
}

const nodeBytes = (inputs: string[], outputs: string[], op: string, name: string, attributes: Uint8Array[] = []) =>
  encodeField(GRAPH_NODE, concatBytes([...inputs.map((i) => encodeField(NODE_INPUT, i)), ...outputs.map((o) => encodeField(NODE_OUTPUT, o)), encodeField(NODE_NAME, name), encodeField(NODE_OP_TYPE, op), ...attributes]));

/** A graph input of `dtype` with `rank` symbolic dims (`<name>:0`, …): shapes are checked by the layer. */
function symbolicInput(name: string, dtype: 'float32' | 'float16', rank: number): Uint8Array {
  const shape = concatBytes(Array.from({ length: rank }, (_, i) => encodeField(1, encodeField(2, `${name}:${i}`))));
  const tensorType = concatBytes([encodeField(1, CODE_OF[dtype]), encodeField(2, shape)]);
  return encodeField(GRAPH_INPUT, concatBytes([encodeField(VALUE_INFO_NAME, name), encodeField(2, encodeField(1, tensorType))]));
}

/**
 * Adds a LoRA branch beside every layer in `weights` that has a branch form (see LoraBranch).
 * The layer's own output is renamed `<y>::base` and `<y>` becomes the sum, so every reader of
 * `<y>` sees the branch; the new nodes follow the layer in node order.
 *
 * `join` is the op that adds the branch to the layer's output. onnxruntime fuses a MatMul and the Add
 * after it into one Gemm (its MatMulAddFusion; not a Sum): on onnxruntime-node's CPU provider that
 * took a rank-16 branch on every layer from 1.055 to 1.025 of the plain run, while on WASM the Gemm
 * was slower than the MatMul it replaced, so there it is a Sum (test/bench/overlay.ts).
 */
export function withLoraBranches(graph: Uint8Array, weights: Iterable<string>, what: string, join: 'Add' | 'Sum' = 'Sum'): BranchGraph {
  const model = readFields(graph, what);
  const graphIndex = model.findIndex((f) => f.field === MODEL_GRAPH && f.wire === 2);
  if (graphIndex < 0) throw new FuseloadError('bad-input', `${what}: not an ONNX model (no graph)`);
  const fields = readFields(model[graphIndex].payload, what);
  const { paths } = pathsIn(fields, weights, what);
  const branches = new Map<string, LoraBranch>();
  const skipped = new Map<string, string>();
  const after = new Map<number, Uint8Array[]>();
  const replaced = new Map<number, Uint8Array>();
  const inputs: Uint8Array[] = [];
  for (const [weight, path] of paths) {
    if (typeof path === 'string') {
      skipped.set(weight, path);
      continue;
    }
    const why = branchProblem(path);
    if (why) {
      skipped.set(weight, why);
      continue;
    }
    const { layer } = path;
    if (replaced.has(layer.index)) {
      skipped.set(weight, 'shares its layer with another target');
      continue;
    }
    const dtype = path.dtype!;
    const kind = layer.op === 'Conv' ? 'conv' : 'linear';
    const y = layer.outputs[0];
    const x = layer.inputs[0];
    const down = `${weight}::lora_down`;
    const up = `${weight}::lora_up`;
    const mid = `${weight}::lora_mid`;
    const delta = `${weight}::lora_delta`;
    const base = `${y}::base`;
    // The layer as it was, writing `<y>::base` instead of `<y>`.
    let renamed = false;
    replaced.set(
      layer.index,
      encodeField(
        GRAPH_NODE,
        concatBytes(
          layer.fields.map((f) => {
            if (f.field !== NODE_OUTPUT || renamed) return f.raw;
            renamed = true;
            return encodeField(NODE_OUTPUT, base);
          }),
        ),
      ),
    );
    const at = `${weight}::lora`;
    const nodes =
      kind === 'linear'
        ? [nodeBytes([x, down], [mid], 'MatMul', `${at}/down`), nodeBytes([mid, up], [delta], 'MatMul', `${at}/up`)]
        : [
            // The down conv is the layer's own geometry (kernel, strides, pads, dilations); up is 1×1.
            nodeBytes([x, down], [mid], 'Conv', `${at}/down`, layer.fields.filter((f) => f.field === NODE_ATTRIBUTE && ['strides', 'pads', 'dilations', 'auto_pad'].includes(fieldString(readFields(f.payload, what), ATTR_NAME) ?? '')).map((f) => f.raw)),
            nodeBytes([mid, up], [delta], 'Conv', `${at}/up`),
          ];
    nodes.push(nodeBytes([base, delta], [y], join, `${at}/add`));
    after.set(layer.index, nodes);
    const rank = kind === 'linear' ? 2 : 4;
    inputs.push(symbolicInput(down, dtype, rank), symbolicInput(up, dtype, rank));
    branches.set(weight, { weight, kind, dtype, down, up });
  }
  if (branches.size === 0) return { graph, branches, skipped };
  const out: Uint8Array[] = [];
  for (const [i, f] of fields.entries()) {
    out.push(replaced.get(i) ?? f.raw);
    out.push(...(after.get(i) ?? []));
  }
  out.push(...inputs);
  const newGraph = concatBytes(out);
  return { graph: concatBytes(model.map((f, i) => (i === graphIndex ? encodeField(MODEL_GRAPH, newGraph) : f.raw))), branches, skipped };
}
