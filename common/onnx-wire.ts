/**
 * Just enough of the protobuf wire format to edit an ONNX graph at load time without a
 * protobuf library or the schema (both runtimes; no Node or DOM imports). A message is read as
 * its top-level fields, in order, each with the bytes it spans; an edit re-emits the fields it
 * keeps byte for byte and appends new ones. Repeated fields may be split anywhere in a message
 * (protobuf concatenates them), so appending graph inputs or nodes is a valid edit.
 */
import { FuseloadError } from './errors.ts';

export interface WireField {
  field: number;
  /** 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. */
  wire: 0 | 1 | 2 | 5;
  /** The whole field as encoded (tag included): what re-emitting it copies. */
  raw: Uint8Array;
  /** Wire 2: the payload; wire 0: empty (see `varint`). */
  payload: Uint8Array;
  /** Wire 0: the value (as a number: ONNX's varints here are dims, types, versions). */
  varint: number;
}

function readVarint(bytes: Uint8Array, at: number, what: string): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (at >= bytes.length) throw new FuseloadError('bad-input', `${what}: truncated protobuf varint`);
    const b = bytes[at++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, at];
    scale *= 128;
  }
  throw new FuseloadError('bad-input', `${what}: protobuf varint longer than 10 bytes`);
}

/** The top-level fields of one message, in order. */
export function readFields(bytes: Uint8Array, what: string): WireField[] {
  const fields: WireField[] = [];
  let at = 0;
  while (at < bytes.length) {
    const start = at;
    const [tag, afterTag] = readVarint(bytes, at, what);
    at = afterTag;
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    let payload: Uint8Array = EMPTY;
    let varint = 0;
    if (wire === 0) [varint, at] = readVarint(bytes, at, what);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      const [length, afterLength] = readVarint(bytes, at, what);
      payload = bytes.subarray(afterLength, afterLength + length);
      at = afterLength + length;
    } else throw new FuseloadError('bad-input', `${what}: protobuf wire type ${wire} (field ${field}) is not one ONNX uses`);
    if (at > bytes.length) throw new FuseloadError('bad-input', `${what}: protobuf field ${field} runs past the end of its message`);
    fields.push({ field, wire: wire as WireField['wire'], raw: bytes.subarray(start, at), payload, varint });
  }
  return fields;
}

const EMPTY: Uint8Array = new Uint8Array(0);
const utf8 = new TextEncoder();
const text = new TextDecoder();

export function fieldString(fields: readonly WireField[], field: number): string | undefined {
  const f = fields.find((x) => x.field === field && x.wire === 2);
  return f ? text.decode(f.payload) : undefined;
}

export function fieldStrings(fields: readonly WireField[], field: number): string[] {
  return fields.filter((x) => x.field === field && x.wire === 2).map((x) => text.decode(x.payload));
}

export function fieldVarint(fields: readonly WireField[], field: number): number | undefined {
  return fields.find((x) => x.field === field && x.wire === 0)?.varint;
}

/** A repeated int64 field, packed or not (TensorProto.dims). */
export function fieldVarints(fields: readonly WireField[], field: number, what: string): number[] {
  const out: number[] = [];
  for (const f of fields) {
    if (f.field !== field) continue;
    if (f.wire === 0) out.push(f.varint);
    else if (f.wire === 2) for (let at = 0; at < f.payload.length; ) {
      const [v, next] = readVarint(f.payload, at, what);
      out.push(v);
      at = next;
    }
  }
  return out;
}

/** A protobuf varint's bytes. */
export function varintBytes(value: number): number[] {
  if (!Number.isSafeInteger(value) || value < 0) throw new FuseloadError('bad-input', `protobuf varint ${value} is not a non-negative safe integer`);
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/** One encoded field: a varint, a string, or a nested message / bytes. */
export function encodeField(field: number, value: number | string | Uint8Array): Uint8Array {
  if (typeof value === 'number') return Uint8Array.from([...varintBytes(field * 8), ...varintBytes(value)]);
  const payload = typeof value === 'string' ? utf8.encode(value) : value;
  const head = [...varintBytes(field * 8 + 2), ...varintBytes(payload.length)];
  const out = new Uint8Array(head.length + payload.length);
  out.set(head);
  out.set(payload, head.length);
  return out;
}

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
