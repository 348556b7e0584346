/**
 * A small ONNX graph builder for generated models (the sample model, test fixtures, the
 * bench). Produces plain ModelProto objects for encodeModel().
 */
import { f32ToBytes, type FloatDtype } from '../../common/lora/dtype.ts';
import { type AttributeProto, DTYPE_CODES, type ModelProto, type NodeProto, type TensorProto, type ValueInfoProto } from './model.ts';

export type AttrValue = number | number[] | string | { floats: number[] } | { int: number } | { float: number };

export interface TensorSpec {
  dtype: 'float32' | 'float16' | 'bfloat16' | 'int64';
  dims: (number | string)[];
}

function attribute(name: string, value: AttrValue): AttributeProto {
  if (typeof value === 'string') return { name, type: 3, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: 7, ints: value };
  if (typeof value === 'number') return Number.isInteger(value) ? { name, type: 2, i: value } : { name, type: 1, f: value };
  if ('floats' in value) return { name, type: 6, floats: value.floats };
  if ('int' in value) return { name, type: 2, i: value.int };
  return { name, type: 1, f: value.float };
}

function valueInfo(name: string, spec: TensorSpec): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: DTYPE_CODES[spec.dtype],
        shape: { dim: spec.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  readonly inputs: ValueInfoProto[] = [];
  readonly outputs: ValueInfoProto[] = [];
  #counter = 0;

  input(name: string, spec: TensorSpec): string {
    this.inputs.push(valueInfo(name, spec));
    return name;
  }

  output(name: string, spec: TensorSpec): void {
    this.outputs.push(valueInfo(name, spec));
  }

  /** A float initializer from fp32 values, stored as `dtype`. */
  weight(name: string, dims: number[], values: Float32Array, dtype: FloatDtype = 'float32'): string {
    const bytes = f32ToBytes(values, dtype);
    this.initializers.push({ name, dims, dataType: DTYPE_CODES[dtype], rawData: bytes.slice() });
    return name;
  }

  int64(name: string, values: number[]): string {
    const bytes = new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer);
    this.initializers.push({ name, dims: [values.length], dataType: DTYPE_CODES.int64, rawData: bytes });
    return name;
  }

  node(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, name?: string, outputs = 1): string[] {
    const id = this.#counter++;
    const outs = Array.from({ length: outputs }, (_, i) => `${opType.toLowerCase()}_${id}_${i}`);
    this.nodes.push({
      name: name ?? `/${opType}_${id}`,
      opType,
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outs;
  }

  /** One-output node. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, name?: string): string {
    return this.node(opType, inputs, attrs, name)[0];
  }

  /** Renames a value (the graph output must carry the output's name). */
  rename(from: string, to: string): void {
    for (const n of this.nodes) {
      n.output = n.output!.map((o) => (o === from ? to : o));
      n.input = n.input!.map((i) => (i === from ? to : i));
    }
  }

  model(opset = 17, producer = 'fuseload'): ModelProto {
    return {
      irVersion: 8,
      producerName: producer,
      opsetImport: [{ domain: '', version: opset }],
      graph: { name: 'main', node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs },
    };
  }
}
