/**
 * Between the loop's Float32Array/Int32Array values and a session's inputs and outputs: names
 * (diffusers' ONNX names, else by position) and element types (fp16 sessions get and give
 * float16 bits in a Uint16Array; ids go in as int32 or int64, timesteps as whatever the UNet declares).
 */
import { FuseloadError } from '../errors.ts';
import { f16ToF32, f32ToF16 } from '../lora/dtype.ts';
import type { Feeds, TensorLike } from '../pipeline.ts';
import { type DeviceFeeds, isDeviceTensor, type DeviceSession, type SessionDevice } from './device/types.ts';

/** What the loop needs of a session: onnxruntime's InferenceSession has this shape. */
export interface SessionLike {
  run(feeds: Feeds): Promise<Feeds>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** ORT element type per input name ('float32' | 'float16' | 'int32' | 'int64'), when known. */
  readonly inputTypes?: Readonly<Record<string, string>>;
  /** Declared dims per input (numbers, or strings for symbolic dims), when known. */
  readonly inputDims?: Readonly<Record<string, readonly (number | string)[]>>;
  /** On a device (WebGPU): runs with tensors that stay there (device/types.ts). */
  readonly runDevice?: DeviceSession['runDevice'];
  readonly device?: SessionDevice;
}

/** The input called `preferred`, else the one at `position` (exporters that renamed inputs). */
export function inputName(session: SessionLike, role: string, preferred: string, position: number): string {
  if (session.inputNames.includes(preferred)) return preferred;
  const name = session.inputNames[position];
  if (name === undefined) throw new FuseloadError('unsupported', `${role}: has no input "${preferred}" and no input #${position}`);
  return name;
}

export function outputName(session: SessionLike, role: string, preferred: string, position = 0): string {
  if (session.outputNames.includes(preferred)) return preferred;
  const name = session.outputNames[position];
  if (name === undefined) throw new FuseloadError('unsupported', `${role}: has no output "${preferred}" and no output #${position}`);
  return name;
}

/** The declared dim `axis` of an input, when it is a number (not symbolic, not unknown). */
export function fixedDim(session: SessionLike, input: string, axis: number): number | undefined {
  const d = session.inputDims?.[input]?.[axis];
  return typeof d === 'number' && d >= 0 ? d : undefined;
}

/** A float input in the session's declared type (float32 unless it says float16). */
export function floatFeed(session: SessionLike, role: string, input: string, values: Float32Array, dims: readonly number[]): TensorLike {
  const type = session.inputTypes?.[input] ?? 'float32';
  if (type === 'float32') return { type, dims, data: values };
  if (type === 'float16') return { type, dims, data: f32ToF16(values) };
  throw new FuseloadError('unsupported', `${role}: input "${input}" is ${type}; this loop feeds float32 or float16`);
}

/** Integer ids as the session declares them (int32 unless it says int64; diffusers' ONNX export uses int32). */
export function intFeed(session: SessionLike, role: string, input: string, values: Int32Array, dims: readonly number[]): TensorLike {
  const type = session.inputTypes?.[input] ?? 'int32';
  if (type === 'int32') return { type, dims, data: values };
  if (type === 'int64') return { type, dims, data: BigInt64Array.from(values, (v) => BigInt(v)) };
  throw new FuseloadError('unsupported', `${role}: input "${input}" is ${type}; this loop feeds int32 or int64`);
}

/**
 * The timestep, repeated for the batch (diffusers' export declares it [batch]; a scalar when the
 * graph declares rank 0). int64 truncates as numpy's astype does; float16 rounds.
 */
export function timestepFeed(session: SessionLike, role: string, input: string, timestep: number, batch: number): TensorLike {
  const declared = session.inputDims?.[input];
  const dims = declared && declared.length === 0 ? [] : [declared && typeof declared[0] === 'number' ? declared[0] : batch];
  const count = dims.length ? dims[0] : 1;
  const type = session.inputTypes?.[input] ?? 'float32';
  switch (type) {
    case 'float32':
      return { type, dims, data: new Float32Array(count).fill(timestep) };
    case 'float16':
      return { type, dims, data: f32ToF16(new Float32Array(count).fill(timestep)) };
    case 'int64':
      return { type, dims, data: new BigInt64Array(count).fill(BigInt(Math.trunc(timestep))) };
    case 'int32':
      return { type, dims, data: new Int32Array(count).fill(Math.trunc(timestep)) };
    default:
      throw new FuseloadError('unsupported', `${role}: input "${input}" is ${type}; timesteps go in as float32, float16, int64 or int32`);
  }
}

/** An output as float32 values, checked against the element count the loop expects. */
export function floatOutput(outputs: Feeds | DeviceFeeds, role: string, name: string, expected?: number): { values: Float32Array; dims: readonly number[] } {
  const t = outputs[name];
  if (!t) throw new FuseloadError('engine', `${role}: the session returned no output "${name}"`);
  if (isDeviceTensor(t)) throw new FuseloadError('engine', `${role}: output "${name}" is on the device, not read back`);
  let values: Float32Array;
  if (t.type === 'float32' && t.data instanceof Float32Array) values = t.data;
  else if (t.type === 'float16' && t.data instanceof Uint16Array) values = f16ToF32(t.data);
  else if (t.type === 'float16' || t.type === 'float32') values = Float32Array.from(t.data as ArrayLike<number>); // a Float16Array, where engines have one
  else throw new FuseloadError('unsupported', `${role}: output "${name}" is ${t.type}; expected float32 or float16`);
  if (expected !== undefined && values.length !== expected) {
    throw new FuseloadError('shape-mismatch', `${role}: output "${name}" has ${values.length} values [${t.dims.join(', ')}], expected ${expected}`);
  }
  return { values, dims: t.dims };
}

/** onnxruntime's `inputMetadata` entries (web and node alike). */
export interface InputMetadataLike {
  readonly name: string;
  readonly isTensor: boolean;
  readonly type?: string;
  readonly shape?: readonly (number | string)[];
}

/** `inputTypes` and `inputDims` for a SessionLike, from an onnxruntime session's `inputMetadata`. */
export function describeInputs(metadata: readonly InputMetadataLike[]): {
  inputTypes: Record<string, string>;
  inputDims: Record<string, readonly (number | string)[]>;
} {
  const inputTypes: Record<string, string> = {};
  const inputDims: Record<string, readonly (number | string)[]> = {};
  for (const m of metadata) {
    if (!m.isTensor) continue;
    if (m.type) inputTypes[m.name] = m.type;
    if (m.shape) inputDims[m.name] = m.shape;
  }
  return { inputTypes, inputDims };
}
