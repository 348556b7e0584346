/**
 * Seeded noise: Philox4x32-10 against Random123's known answers, randn() bit for bit against an
 * independent Python port (noise_ref.py → noise-ref.json), and the statistics of N(0, 1).
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { philox4x32, randn } from '../../common/generate/noise.ts';

const ref = JSON.parse(readFileSync(new URL('../fixtures/generate/noise-ref.json', import.meta.url), 'utf8')) as {
  philox_kat: { ctr: number[]; key: number[]; out: number[] }[];
  randn: { seed: number; count: number; stream: number; bits: number[] }[];
};

const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe('philox4x32-10', () => {
  it('gives Random123\'s known answers', () => {
    expect(philox4x32([0, 0, 0, 0], [0, 0])).toEqual([0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    for (const k of ref.philox_kat) expect(philox4x32(k.ctr, k.key)).toEqual(k.out);
  });
});

describe('randn', () => {
  it('matches the independent Python port bit for bit', () => {
    for (const c of ref.randn) {
      expect(bitsOf(randn(c.seed, c.count, c.stream)), `seed ${c.seed} stream ${c.stream}`).toEqual(c.bits);
    }
  });

  it('is deterministic, and seeds and streams differ', () => {
    expect(bitsOf(randn(7, 1000))).toEqual(bitsOf(randn(7, 1000)));
    expect(bitsOf(randn(8, 16))).not.toEqual(bitsOf(randn(7, 16)));
    expect(bitsOf(randn(7, 16, 1))).not.toEqual(bitsOf(randn(7, 16, 0)));
  });

  it('is counter-based: a shorter draw is a prefix of a longer one (odd counts too)', () => {
    expect(bitsOf(randn(99, 7))).toEqual(bitsOf(randn(99, 4096).subarray(0, 7)));
  });

  describe('uses no engine-specific transcendental functions', () => {
    const saved = { log: Math.log, cos: Math.cos, sin: Math.sin, exp: Math.exp, pow: Math.pow };
    afterEach(() => Object.assign(Math, saved));
    it('runs with Math.log, cos, sin, exp and pow removed', () => {
      const expected = bitsOf(randn(5, 257));
      for (const k of Object.keys(saved)) {
        (Math as unknown as Record<string, unknown>)[k] = () => {
          throw new Error(`Math.${k} called`);
        };
      }
      expect(bitsOf(randn(5, 257))).toEqual(expected);
    });
  });

  it('is standard normal: mean ≈ 0, std ≈ 1, kurtosis ≈ 3, tails as N(0, 1)', () => {
    const n = 400_000;
    const z = randn(2024, n);
    let sum = 0;
    for (const x of z) sum += x;
    const mean = sum / n;
    let m2 = 0;
    let m4 = 0;
    let beyond2 = 0;
    for (const x of z) {
      const d = x - mean;
      m2 += d * d;
      m4 += d ** 4;
      if (Math.abs(x) > 2) beyond2++;
    }
    const variance = m2 / n;
    expect(Math.abs(mean)).toBeLessThan(0.006);
    expect(Math.abs(Math.sqrt(variance) - 1)).toBeLessThan(0.005);
    expect(Math.abs(m4 / n / variance ** 2 - 3)).toBeLessThan(0.05);
    expect(Math.abs(beyond2 / n - 0.0455)).toBeLessThan(0.002); // P(|Z| > 2) = 4.55 %
  });

  it('refuses a seed that is not a safe integer ≥ 0', () => {
    expect(() => randn(-1, 4)).toThrow(/seed/);
    expect(() => randn(1.5, 4)).toThrow(/seed/);
    expect(() => randn(2 ** 53, 4)).toThrow(/seed/);
  });
});
