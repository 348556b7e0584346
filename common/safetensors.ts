/**
 * safetensors, strictly (https://github.com/huggingface/safetensors#format):
 * 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data. Every tensor's
 * `data_offsets` are relative to the data, contiguous from 0 to the end of the file, and
 * span exactly numel × dtype size. Runtime-neutral: works on the header bytes and the
 * file size, so Node can read just the header and a browser can parse a fetched buffer.
 */
import { badInput } from './errors.ts';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';
export const SAFETENSORS_DTYPE_SIZE: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2 };

export interface SafetensorsTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Bytes before the data: 8 + header length. */
  dataStart: number;
  tensors: SafetensorsTensor[];
  metadata: Record<string, string>;
}

/** Keeps a bad header from making us allocate or parse gigabytes. */
const MAX_HEADER = 100 * 1024 * 1024;

/** The header length from the first 8 bytes, checked against the file size. */
export function safetensorsHeaderLength(first8: Uint8Array, fileSize: number, input: string): number {
  if (fileSize < 8 || first8.length < 8) throw badInput(input, `not a safetensors file (${fileSize} bytes, shorter than the 8-byte header length)`);
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const n = Number(view.getBigUint64(0, true));
  if (n < 2 || n > MAX_HEADER) throw badInput(input, `not a safetensors file (header length ${n})`);
  if (8 + n > fileSize) throw badInput(input, `header ends at byte ${8 + n} but the file has ${fileSize}`);
  return n;
}

/** Parses and validates the JSON header (the N bytes after the first 8). */
export function parseSafetensorsHeader(headerJson: Uint8Array, fileSize: number, input: string): SafetensorsHeader {
  const dataStart = 8 + headerJson.length;
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerJson));
  } catch (e) {
    throw badInput(input, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw badInput(input, 'header is not a JSON object');
  const metadata: Record<string, string> = {};
  const tensors: SafetensorsTensor[] = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!value || typeof value !== 'object' || Array.isArray(value)) throw badInput(input, '__metadata__ is not an object');
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') throw badInput(input, `__metadata__ "${k}" is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!entry || typeof entry !== 'object') throw badInput(input, `tensor "${name}" is not an object`);
    if (typeof entry.dtype !== 'string') throw badInput(input, `tensor "${name}" has no dtype`);
    if (!(entry.dtype in SAFETENSORS_DTYPE_SIZE)) {
      throw badInput(input, `tensor "${name}" has unsupported dtype "${entry.dtype}" (F32, F16 and BF16 are supported)`);
    }
    const dtype = entry.dtype as SafetensorsDtype;
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw badInput(input, `tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offsets = entry.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] < offsets[0]) {
      throw badInput(input, `tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [b, e] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, d) => a * d, 1) * SAFETENSORS_DTYPE_SIZE[dtype];
    if (e - b !== expected) {
      throw badInput(input, `tensor "${name}" spans ${e - b} bytes but ${dtype} ${JSON.stringify(shape)} needs ${expected}`);
    }
    if (dataStart + e > fileSize) throw badInput(input, `tensor "${name}" ends at byte ${dataStart + e} but the file has ${fileSize}`);
    tensors.push({ name, dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e });
  }
  // Contiguous from the start of the data to the end of the file: no gaps, no overlaps.
  const sorted = [...tensors].sort((x, y) => x.begin - y.begin || x.end - y.end);
  let cursor = dataStart;
  for (const t of sorted) {
    if (t.begin !== cursor) {
      throw badInput(input, `tensor "${t.name}" starts at byte ${t.begin} but the previous tensor ends at ${cursor} (offsets must be contiguous)`);
    }
    cursor = t.end;
  }
  if (cursor !== fileSize) throw badInput(input, `tensor data ends at byte ${cursor} but the file has ${fileSize}`);
  return { dataStart, tensors, metadata };
}

/** Parses a whole safetensors file held in memory. */
export function parseSafetensors(bytes: Uint8Array, input: string): SafetensorsHeader {
  const n = safetensorsHeaderLength(bytes.subarray(0, 8), bytes.length, input);
  return parseSafetensorsHeader(bytes.subarray(8, 8 + n), bytes.length, input);
}

/** A tensor's data as a typed array over a copy (aligned) of its bytes. */
export function tensorData(bytes: Uint8Array, t: SafetensorsTensor): Float32Array | Uint16Array {
  // A real, aligned copy: Buffer#slice is a view, and its .buffer may be a shared pool.
  const copy = new Uint8Array(t.end - t.begin);
  copy.set(bytes.subarray(t.begin, t.end));
  return t.dtype === 'F32' ? new Float32Array(copy.buffer) : new Uint16Array(copy.buffer);
}

export interface SafetensorsInput {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array | Uint16Array;
}

/** Writes a safetensors file; keys are sorted so the bytes depend only on the contents. */
export function encodeSafetensors(tensors: Record<string, SafetensorsInput>, metadata?: Record<string, string>): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const length = t.data.byteLength;
    const expected = t.shape.reduce((a, d) => a * d, 1) * SAFETENSORS_DTYPE_SIZE[t.dtype];
    if (length !== expected) throw new Error(`encodeSafetensors: "${name}" has ${length} bytes, ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + length] };
    offset += length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces to 8 bytes, as the reference writer does, so data is aligned.
  while ((new TextEncoder().encode(json).length) % 8) json += ' ';
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + jsonBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(jsonBytes.length), true);
  out.set(jsonBytes, 8);
  let at = 8 + jsonBytes.length;
  for (const name of names) {
    const d = tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  return out;
}
