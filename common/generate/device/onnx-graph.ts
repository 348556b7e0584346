/**
 * A minimal ONNX model writer for the few-node graphs the loop runs on an engine's device
 * (scheduler steps, text batching): the onnx.proto fields those graphs need and nothing else.
 * Runtime-neutral, like common/lora/overlay-merge.ts (the ONNX codec in tools/ is Node-only).
 */

export type GraphElemType = 'float32' | 'float16' | 'int32' | 'int64';

const ELEM: Record<GraphElemType, number> = { float32: 1, int32: 6, int64: 7, float16: 10 };

// --- protobuf wire format: varints (int64 two's complement for negatives), length-delimited fields
function varint(value: number | bigint): number[] {
  let n = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  while (n > 0x7fn) {
    out.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  out.push(Number(n));
  return out;
}
const utf8 = new TextEncoder();
const bytes = (no: number, b: ArrayLike<number>): number[] => [...varint((no << 3) | 2), ...varint(b.length), ...Array.from(b)];
const int = (no: number, n: number): number[] => [...varint(no << 3), ...varint(n)];
const str = (no: number, s: string): number[] => bytes(no, utf8.encode(s));

/** An attribute value: an integer, a list of integers, or a float. */
export type AttributeValue = number | number[] | { float: number };

function attribute(name: string, value: AttributeValue): number[] {
  // AttributeProto: name 1, f 2, i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7).
  if (Array.isArray(value)) return str(1, name).concat(value.flatMap((v) => int(8, v)), int(20, 7));
  if (typeof value === 'object') {
    const f = new Uint8Array(new Float32Array([value.float]).buffer);
    return str(1, name).concat([(2 << 3) | 5, ...f], int(20, 1));
  }
  return str(1, name).concat(int(3, value), int(20, 2));
}

function valueInfo(name: string, type: GraphElemType, dims: readonly (number | string)[]): number[] {
  // ValueInfoProto { name 1, type 2: TypeProto { tensor_type 1: { elem_type 1, shape 2: { dim 1: { dim_value 1 | dim_param 2 } } } } }
  const shape = dims.flatMap((d) => bytes(1, typeof d === 'number' ? int(1, d) : str(2, d)));
  return str(1, name).concat(bytes(2, bytes(1, int(1, ELEM[type]).concat(bytes(2, shape)))));
}

/** Builds one graph node by node; `encode()` gives the model bytes (opset 17, IR 8). */
export class OnnxGraphBuilder {
  readonly #nodes: number[][] = [];
  readonly #inputs: number[][] = [];
  readonly #outputs: number[][] = [];
  readonly #initializers: number[][] = [];
  #next = 0;

  constructor(readonly name: string) {}

  input(name: string, type: GraphElemType, dims: readonly (number | string)[]): string {
    this.#inputs.push(valueInfo(name, type, dims));
    return name;
  }

  output(name: string, type: GraphElemType, dims: readonly (number | string)[]): string {
    this.#outputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** A constant int64 tensor (axes, indices). */
  int64(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const name = `c${this.#next++}`;
    // TensorProto: dims 1, data_type 2, int64_data 7, name 8.
    this.#initializers.push(dims.flatMap((d) => int(1, d)).concat(int(2, ELEM.int64), values.flatMap((v) => int(7, v)), str(8, name)));
    return name;
  }

  /**
   * One node; returns its outputs (`outputs` names them, or a count to name them here). Nodes
   * must come in topological order; `first` puts this one before every node so far.
   */
  node(op: string, inputs: readonly string[], outputs: number | readonly string[] = 1, attrs: Record<string, AttributeValue> = {}, first = false): string[] {
    const names = typeof outputs === 'number' ? Array.from({ length: outputs }, () => `v${this.#next++}`) : [...outputs];
    const node = inputs
      .flatMap((i) => str(1, i))
      .concat(
        names.flatMap((o) => str(2, o)),
        str(3, `${op}_${names[0]}`),
        str(4, op),
        Object.entries(attrs).flatMap(([k, v]) => bytes(5, attribute(k, v))),
      );
    if (first) this.#nodes.unshift(node);
    else this.#nodes.push(node);
    return names;
  }

  /** `node` with exactly one output. */
  op(op: string, inputs: readonly string[], attrs: Record<string, AttributeValue> = {}, output?: string): string {
    return this.node(op, inputs, output ? [output] : 1, attrs)[0];
  }

  encode(): Uint8Array {
    // GraphProto: node 1, name 2, initializer 5, input 11, output 12.
    const graph = this.#nodes
      .flatMap((n) => bytes(1, n))
      .concat(
        str(2, this.name),
        this.#initializers.flatMap((t) => bytes(5, t)),
        this.#inputs.flatMap((v) => bytes(11, v)),
        this.#outputs.flatMap((v) => bytes(12, v)),
      );
    // ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 { domain 1, version 2 }.
    return Uint8Array.from(int(1, 8).concat(str(2, 'fuseload'), bytes(8, str(1, '').concat(int(2, 17))), bytes(7, graph)));
  }
}
