import { describe, expect, it } from 'vitest';
import { encodeSafetensors, parseSafetensors, parseSafetensorsHeader, safetensorsHeaderLength, tensorData } from '../../common/safetensors.ts';

describe('safetensors', () => {
  it('round-trips F32, F16 and BF16 tensors with metadata, data contiguous after the header', () => {
    const bytes = encodeSafetensors(
      {
        b: { dtype: 'F16', shape: [3], data: Uint16Array.of(0x3c00, 0xc000, 0) },
        a: { dtype: 'F32', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) },
        c: { dtype: 'BF16', shape: [], data: Uint16Array.of(0x3f80) },
      },
      { format: 'pt' },
    );
    const h = parseSafetensors(bytes, 'x.safetensors');
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.dataStart % 8).toBe(0);
    const byName = Object.fromEntries(h.tensors.map((t) => [t.name, t]));
    expect(byName.a).toMatchObject({ dtype: 'F32', shape: [2, 2], begin: h.dataStart, end: h.dataStart + 16 });
    expect(Array.from(tensorData(bytes, byName.a))).toEqual([1, 2, 3, 4]);
    expect(Array.from(tensorData(bytes, byName.b))).toEqual([0x3c00, 0xc000, 0]);
    expect(Array.from(tensorData(bytes, byName.c))).toEqual([0x3f80]);
  });

  it('parses from the header bytes and the file size alone (no data needed)', () => {
    const bytes = encodeSafetensors({ w: { dtype: 'F32', shape: [1000], data: new Float32Array(1000) } });
    const n = safetensorsHeaderLength(bytes.subarray(0, 8), bytes.length, 'w');
    const h = parseSafetensorsHeader(bytes.slice(8, 8 + n), bytes.length, 'w');
    expect(h.tensors[0].end).toBe(bytes.length);
    expect(() => parseSafetensorsHeader(bytes.slice(8, 8 + n), bytes.length - 4, 'w.safetensors')).toThrow('w.safetensors: tensor "w" ends at byte');
  });

  const withHeader = (json: string, data = 0) => {
    const text = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + text.length + data);
    new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
    out.set(text, 8);
    return out;
  };

  it.each([
    ['trailing bytes after the last tensor', withHeader('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 8), /tensor data ends at byte \d+ but the file has \d+/],
    ['overlapping tensors', withHeader('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4), /starts at byte \d+ but the previous tensor ends at/],
    ['reversed offsets', withHeader('{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}', 4), /invalid data_offsets/],
    ['a negative dimension', withHeader('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', 4), /invalid shape/],
    ['a non-object header', withHeader('[1,2]'), /header is not a JSON object/],
    ['an unsupported dtype, by name', withHeader('{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}', 8), /unsupported dtype "F64"/],
    ['invalid UTF-8', withHeader('{"\xff":1}'), /not valid UTF-8 JSON|is not an object/],
  ])('rejects %s', (_, bytes, message) => {
    expect(() => parseSafetensors(bytes, 'bad.safetensors')).toThrow(message);
  });
});
