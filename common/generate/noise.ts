/**
 * Seeded Gaussian noise that is bit-identical in every JavaScript engine.
 *
 * - Uniform bits: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 *   SC'11), a counter-based generator on 32-bit integer math only (`Math.imul` and exact
 *   16-bit partial products; no BigInt). Counter-based means value `i` of a stream depends on
 *   (seed, stream, i) alone, so a GPU shader can later make the very same noise in place.
 * - Normals: Box–Muller. `Math.log`/`Math.cos` are not specified to the last bit and do differ
 *   between engines (V8's fdlibm port, SpiderMonkey, JavaScriptCore's libm), so the log, cos and
 *   sin here are our own, built from +, −, ×, ÷ and `Math.sqrt`, which IEEE 754 rounds exactly
 *   the same way everywhere. Same seed → same Float32Array bits in Node, Chromium, Firefox,
 *   Safari and Web Workers.
 *
 * Layout: block `b` of stream `s` is Philox(counter = [b lo, b hi, s, 0], key = [seed lo, seed hi]);
 * its four words make one Box–Muller pair, written to `out[2b]` and `out[2b + 1]`.
 */

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const TWO_32 = 4294967296;

/** Philox4x32-10 of one counter block under one key: four uint32 words. */
export function philox4x32(counter: readonly number[], key: readonly number[]): [number, number, number, number] {
  let c0 = counter[0] >>> 0;
  let c1 = counter[1] >>> 0;
  let c2 = counter[2] >>> 0;
  let c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi0 = mulhi(M0, c0);
    const lo1 = Math.imul(M1, c2) >>> 0;
    const hi1 = mulhi(M1, c2);
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** High 32 bits of a 32×32-bit product, from 16-bit halves (every partial sum is exact in a double). */
function mulhi(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const low = aLo * bLo;
  const mid1 = aHi * bLo + (low >>> 16);
  const mid2 = aLo * bHi + (mid1 % 65536);
  return (aHi * bHi + Math.floor(mid1 / 65536) + Math.floor(mid2 / 65536)) >>> 0;
}

/**
 * `count` standard normal values for `seed` (a safe integer ≥ 0) on stream `stream` (the
 * initial latents use stream 0; schedulers that add noise per step use stream 1 + step).
 */
export function randn(seed: number, count: number, stream = 0): Float32Array {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`randn: seed must be a safe integer ≥ 0, got ${seed}`);
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`randn: count must be an integer ≥ 0, got ${count}`);
  if (!Number.isInteger(stream) || stream < 0 || stream >= TWO_32) throw new RangeError(`randn: stream must be a uint32, got ${stream}`);
  const key = [seed % TWO_32, Math.floor(seed / TWO_32)];
  const out = new Float32Array(count);
  const blocks = Math.ceil(count / 2);
  for (let b = 0; b < blocks; b++) {
    const [x0, x1, x2, x3] = philox4x32([b % TWO_32, Math.floor(b / TWO_32), stream, 0], key);
    // Two 53-bit integers: u ∈ (0, 1] (so log(u) is finite) and v ∈ [0, 1).
    const uBits = (x0 >>> 5) * 67108864 + (x1 >>> 6) + 1;
    const vBits = (x2 >>> 5) * 67108864 + (x3 >>> 6);
    const radius = Math.sqrt(-2 * logOfDyadic(uBits));
    const [cos, sin] = cosSinOfTurn(vBits);
    out[2 * b] = radius * cos;
    if (2 * b + 1 < count) out[2 * b + 1] = radius * sin;
  }
  return out;
}

const TWO_52 = 4503599627370496;
const SQRT2 = 1.4142135623730951;
// ln 2 split so that e·LN2_HI is exact for |e| < 2^11 (fdlibm's constants).
const LN2_HI = 6.93147180369123816490e-1;
const LN2_LO = 1.90821492927058770002e-10;

/** ln(k / 2^53) for an integer 1 ≤ k ≤ 2^53, with basic arithmetic only. */
function logOfDyadic(k: number): number {
  // k / 2^53 = f · 2^e with f = m / 2^52 ∈ [1, 2] after p exact doublings and e = −1 − p.
  let e = -1;
  let m = k;
  while (m < TWO_52) {
    m *= 2;
    e--;
  }
  let f = m / TWO_52;
  if (f > SQRT2) {
    f /= 2;
    e++;
  }
  // ln f = 2·atanh(s), s = (f − 1)/(f + 1), |s| ≤ 0.1716: the series is below 1e-18 by s^23.
  const s = (f - 1) / (f + 1);
  const s2 = s * s;
  let series = 1 / 23;
  for (let n = 21; n >= 1; n -= 2) series = 1 / n + s2 * series;
  return e * LN2_HI + (e * LN2_LO + 2 * s * series);
}

const HALF_PI = 1.5707963267948966;
/** 1/n! for n = 0…21, by division only (exactly reproducible). */
const INV_FACT: number[] = (() => {
  const out = [1];
  for (let n = 1; n <= 21; n++) out.push(out[n - 1] / n);
  return out;
})();

/** [cos 2πv, sin 2πv] for v = j / 2^53, 0 ≤ j < 2^53, by quadrant and Taylor series. */
function cosSinOfTurn(j: number): [number, number] {
  const v4 = j / 2251799813685248; // 4v ∈ [0, 4), exact
  const quadrant = Math.floor(v4);
  const x = (v4 - quadrant) * HALF_PI; // [0, π/2)
  const x2 = x * x;
  let c = INV_FACT[20];
  for (let n = 18; n >= 0; n -= 2) c = INV_FACT[n] - x2 * c;
  let s = INV_FACT[21];
  for (let n = 19; n >= 1; n -= 2) s = INV_FACT[n] - x2 * s;
  s *= x;
  switch (quadrant) {
    case 0:
      return [c, s];
    case 1:
      return [-s, c];
    case 2:
      return [-c, -s];
    default:
      return [s, -c];
  }
}
