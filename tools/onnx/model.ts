/**
 * ONNX ModelProto codec: protobufjs with the upstream schema (onnx.proto beside this file).
 * Decoding gives plain objects (camelCase fields, int64 as number) that encode back to the
 * same fields; weights may be inline (`rawData`, `floatData`, …) or external data.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { badInput } from '../../common/errors.ts';
import type { TensorDtype } from '../../common/manifest.ts';

const root = protobuf.parse(readFileSync(fileURLToPath(new URL('./onnx.proto', import.meta.url)), 'utf8')).root;
const ModelType = root.lookupType('onnx.ModelProto');

export interface StringStringEntry {
  key?: string;
  value?: string;
}

export interface TensorProto {
  name?: string;
  dims?: number[];
  dataType?: number;
  rawData?: Uint8Array;
  floatData?: number[];
  int32Data?: number[];
  int64Data?: number[];
  doubleData?: number[];
  uint64Data?: number[];
  stringData?: Uint8Array[];
  externalData?: StringStringEntry[];
  dataLocation?: number;
  docString?: string;
  [field: string]: unknown;
}

export interface AttributeProto {
  name?: string;
  type?: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: TensorProto;
  floats?: number[];
  ints?: number[];
  [field: string]: unknown;
}

export interface NodeProto {
  input?: string[];
  output?: string[];
  name?: string;
  opType?: string;
  domain?: string;
  attribute?: AttributeProto[];
  [field: string]: unknown;
}

export interface ValueInfoProto {
  name?: string;
  type?: unknown;
  [field: string]: unknown;
}

export interface GraphProto {
  node?: NodeProto[];
  name?: string;
  initializer?: TensorProto[];
  input?: ValueInfoProto[];
  output?: ValueInfoProto[];
  valueInfo?: ValueInfoProto[];
  [field: string]: unknown;
}

export interface ModelProto {
  irVersion?: number;
  opsetImport?: { domain?: string; version?: number }[];
  producerName?: string;
  producerVersion?: string;
  graph?: GraphProto;
  [field: string]: unknown;
}

/** ONNX TensorProto.DataType codes for the dtypes a manifest can name. */
export const ONNX_DTYPES: Record<number, { dtype: TensorDtype; size: number }> = {
  1: { dtype: 'float32', size: 4 },
  2: { dtype: 'uint8', size: 1 },
  3: { dtype: 'int8', size: 1 },
  6: { dtype: 'int32', size: 4 },
  7: { dtype: 'int64', size: 8 },
  9: { dtype: 'bool', size: 1 },
  10: { dtype: 'float16', size: 2 },
  11: { dtype: 'float64', size: 8 },
  16: { dtype: 'bfloat16', size: 2 },
};
export const DTYPE_CODES: Record<string, number> = Object.fromEntries(
  Object.entries(ONNX_DTYPES).map(([code, { dtype }]) => [dtype, Number(code)]),
);

export const EXTERNAL = 1;

export function decodeModel(bytes: Uint8Array, input: string): ModelProto {
  let model: ModelProto;
  try {
    const message = ModelType.decode(bytes);
    model = ModelType.toObject(message, { longs: Number, enums: Number }) as ModelProto;
  } catch (e) {
    throw badInput(input, `not a valid ONNX model (${(e as Error).message})`);
  }
  const graph = model.graph;
  if (!graph || !model.opsetImport?.length) throw badInput(input, 'not a valid ONNX model (no graph or no opset_import)');
  for (const node of graph.node ?? []) {
    if (!node.opType) throw badInput(input, `not a valid ONNX model (node "${node.name ?? ''}" has no op_type)`);
  }
  for (const t of graph.initializer ?? []) {
    if (!t.name) throw badInput(input, 'not a valid ONNX model (an initializer has no name)');
  }
  return model;
}

export function encodeModel(model: ModelProto): Uint8Array {
  const message = ModelType.fromObject(model);
  return ModelType.encode(message).finish();
}

export function numel(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === EXTERNAL;
}

export interface ExternalRef {
  location: string;
  offset: number;
  length: number;
}

/** The `location`/`offset`/`length` of an external tensor; length defaults to its byte size. */
export function externalRef(t: TensorProto, input: string): ExternalRef {
  const map = new Map((t.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  const location = map.get('location');
  if (!location) throw badInput(input, `initializer "${t.name}" has external data without a location`);
  const info = ONNX_DTYPES[t.dataType ?? 0];
  const expected = info ? numel(t.dims ?? []) * info.size : undefined;
  const offset = Number(map.get('offset') ?? '0');
  const length = map.has('length') ? Number(map.get('length')) : expected;
  if (!Number.isSafeInteger(offset) || offset < 0) throw badInput(input, `initializer "${t.name}" has external data offset "${map.get('offset')}"`);
  if (length === undefined || !Number.isSafeInteger(length) || length < 0) {
    throw badInput(input, `initializer "${t.name}" has external data length "${map.get('length')}"`);
  }
  if (expected !== undefined && length !== expected) {
    throw badInput(input, `initializer "${t.name}" has ${length} bytes of external data, but ${info!.dtype} ${JSON.stringify(t.dims ?? [])} needs ${expected}`);
  }
  return { location, offset, length };
}

/** The bytes of an inline initializer, whichever field the exporter used, little-endian. */
export function inlineBytes(t: TensorProto, input: string): Uint8Array {
  const info = ONNX_DTYPES[t.dataType ?? 0];
  const count = numel(t.dims ?? []);
  let bytes: Uint8Array;
  if (t.rawData && t.rawData.length) bytes = t.rawData;
  else if (!info) return new Uint8Array(0);
  else if (info.dtype === 'float32') bytes = u8(Float32Array.from(t.floatData ?? []));
  else if (info.dtype === 'float64') bytes = u8(Float64Array.from(t.doubleData ?? []));
  else if (info.dtype === 'int64') bytes = u8(BigInt64Array.from((t.int64Data ?? []).map((v) => BigInt(v))));
  else if (info.dtype === 'int32') bytes = u8(Int32Array.from(t.int32Data ?? []));
  else if (info.dtype === 'float16' || info.dtype === 'bfloat16') bytes = u8(Uint16Array.from(t.int32Data ?? []));
  else bytes = Uint8Array.from(t.int32Data ?? []);
  if (info && bytes.length !== count * info.size) {
    throw badInput(input, `initializer "${t.name}" has ${bytes.length} bytes of data, but ${info.dtype} ${JSON.stringify(t.dims ?? [])} needs ${count * info.size}`);
  }
  return bytes;
}

function u8(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Drops every inline data field and points the tensor at external data. */
export function setExternal(t: TensorProto, ref: ExternalRef): void {
  for (const field of ['rawData', 'floatData', 'int32Data', 'int64Data', 'doubleData', 'uint64Data', 'stringData']) delete t[field];
  t.dataLocation = EXTERNAL;
  t.externalData = [
    { key: 'location', value: ref.location },
    { key: 'offset', value: String(ref.offset) },
    { key: 'length', value: String(ref.length) },
  ];
}

export function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute?.find((a) => a.name === name);
}
