/**
 * Reads an ONNX file without holding its weights: every field is read as usual except the
 * `raw_data` of graph initializers, which is left in the file and recorded as an external
 * reference into the file itself. A 1.7 GB inline fp16 UNet then costs its graph structure in
 * memory, and the build reads each tensor when it writes it (docs/architecture.md, "Streaming build").
 *
 * Wire format (onnx.proto): ModelProto.graph = 7; GraphProto.initializer = 5;
 * TensorProto.raw_data = 9. Everything else is copied through to protobufjs.
 */
import type { FileHandle } from 'node:fs/promises';
import { badInput } from '../../common/errors.ts';
import { concatBytes, encodeField, varintBytes } from '../../common/onnx-wire.ts';

/** Where one initializer's raw bytes lie in the .onnx file. */
export interface InlineSpan {
  offset: number;
  length: number;
}

export interface ModelSkeleton {
  /** The model's bytes with every initializer's raw_data removed: small, decodable as usual. */
  bytes: Uint8Array;
  /** Per initializer, in graph order (the i-th initializer that had raw_data): its span in the file. */
  spans: (InlineSpan | null)[];
}

const CHUNK = 1 << 20;

/** Sequential reads over a file handle, buffered, with positions in the file. */
class Reader {
  #buf = new Uint8Array(0);
  #start = 0;
  pos = 0;
  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    readonly input: string,
  ) {}

  async #fill(need: number): Promise<void> {
    if (this.pos >= this.#start && this.pos + need <= this.#start + this.#buf.length) return;
    if (this.pos + need > this.size) throw badInput(this.input, `not a valid ONNX model (truncated at byte ${this.size}; a field needs ${this.pos + need})`);
    const len = Math.max(need, Math.min(CHUNK, this.size - this.pos));
    const buf = new Uint8Array(len);
    const { bytesRead } = await this.fh.read(buf, 0, len, this.pos);
    if (bytesRead < need) throw badInput(this.input, `not a valid ONNX model (truncated at byte ${this.pos + bytesRead})`);
    this.#buf = buf.subarray(0, bytesRead);
    this.#start = this.pos;
  }
  async byte(): Promise<number> {
    await this.#fill(1);
    return this.#buf[this.pos++ - this.#start];
  }
  async varint(): Promise<number> {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      const b = await this.byte();
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw badInput(this.input, `not a valid ONNX model (a varint at byte ${this.pos} runs past 10 bytes)`);
  }
  async bytes(n: number): Promise<Uint8Array> {
    if (n > CHUNK * 64) throw badInput(this.input, `not a valid ONNX model (a ${n}-byte field outside initializer data at byte ${this.pos})`);
    await this.#fill(n);
    const at = this.pos - this.#start;
    this.pos += n;
    return this.#buf.slice(at, at + n);
  }
  skip(n: number): void {
    if (this.pos + n > this.size) throw badInput(this.input, `not a valid ONNX model (a field runs past the end of the file at byte ${this.size})`);
    this.pos += n;
  }
}

/** Raw bytes of one field (tag, then value) copied as they were. */
async function copyField(r: Reader, tag: number, wire: number): Promise<Uint8Array[]> {
  const head = Uint8Array.from(varintBytes(tag));
  switch (wire) {
    case 0:
      return [head, Uint8Array.from(varintBytes(await r.varint()))];
    case 1:
      return [head, await r.bytes(8)];
    case 5:
      return [head, await r.bytes(4)];
    case 2: {
      const len = await r.varint();
      return [head, Uint8Array.from(varintBytes(len)), await r.bytes(len)];
    }
    default:
      throw new Error(`wire type ${wire}`);
  }
}

/** Parses messages of known nesting: fields to descend into, and the raw_data field to leave out. */
async function message(r: Reader, end: number, level: 'model' | 'graph' | 'tensor', spans: (InlineSpan | null)[], raw: { span: InlineSpan | null }): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  while (r.pos < end) {
    const tag = await r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 2 && ((level === 'model' && field === 7) || (level === 'graph' && field === 5) || (level === 'tensor' && field === 9))) {
      const len = await r.varint();
      const stop = r.pos + len;
      if (stop > r.size) throw badInput(r.input, `not a valid ONNX model (a field runs past the end of the file at byte ${r.size})`);
      if (level === 'tensor') {
        raw.span = { offset: r.pos, length: len };
        r.skip(len);
        continue;
      }
      const inner = { span: null as InlineSpan | null };
      const body = await message(r, stop, level === 'model' ? 'graph' : 'tensor', spans, inner);
      if (level === 'graph') spans.push(inner.span);
      parts.push(encodeField(field, body));
      continue;
    }
    if (wire !== 0 && wire !== 1 && wire !== 2 && wire !== 5) throw badInput(r.input, `not a valid ONNX model (wire type ${wire} at byte ${r.pos})`);
    parts.push(...(await copyField(r, tag, wire)));
  }
  if (r.pos !== end) throw badInput(r.input, `not a valid ONNX model (a message ends at byte ${r.pos}, not ${end})`);
  return concatBytes(parts);
}

export async function readSkeleton(fh: FileHandle, size: number, input: string): Promise<ModelSkeleton> {
  const r = new Reader(fh, size, input);
  const spans: (InlineSpan | null)[] = [];
  try {
    const bytes = await message(r, size, 'model', spans, { span: null });
    return { bytes, spans };
  } catch (e) {
    if ((e as Error).message?.startsWith('wire type')) throw badInput(input, `not a valid ONNX model (${(e as Error).message})`);
    throw e;
  }
}
