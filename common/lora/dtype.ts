/**
 * fp16 / bf16 <-> fp32 on typed arrays, bit-exact and round-to-nearest-even, so a merge gives
 * the same bytes in Node and in a browser (no Float16Array on Node 20).
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

let f16Table: Float32Array | undefined;

/** All 65536 half values, decoded once: a lookup beats bit twiddling per element. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * frac * 2 ** -24;
    else if (exp === 31) table[h] = frac ? NaN : sign * Infinity;
    else table[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  f16Table = table;
  return table;
}

export function f16ToF32(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const table = halfTable();
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow to Inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow to ±0
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++; // carries into the exponent correctly
  return sign | half;
}

export function f32ToF16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[i] = f32ToF16Bits(src[i]);
  return dst;
}

export function bf16ToF32(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

export function f32ToBf16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) {
      dst[i] = (x >>> 16) | 0x40; // keep NaN a NaN
      continue;
    }
    dst[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return dst;
}

export type FloatDtype = 'float32' | 'float16' | 'bfloat16';

/** Little-endian bytes of a float tensor → fp32 (a fresh array; the bytes are not aliased). */
export function bytesToF32(bytes: Uint8Array, dtype: FloatDtype): Float32Array {
  // A real copy: Buffer#slice is a view, and its .buffer may be a shared pool.
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  if (dtype === 'float32') return new Float32Array(copy.buffer, 0, copy.length / 4);
  const half = new Uint16Array(copy.buffer, 0, copy.length / 2);
  return dtype === 'float16' ? f16ToF32(half) : bf16ToF32(half);
}

/** fp32 → little-endian bytes of `dtype`. */
export function f32ToBytes(values: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === 'float32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const half = dtype === 'float16' ? f32ToF16(values) : f32ToBf16(values);
  return new Uint8Array(half.buffer, half.byteOffset, half.byteLength);
}
