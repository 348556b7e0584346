/** Option parsers shared by the subcommands: commander turns their errors into one line naming the flag. */
import { InvalidArgumentError } from 'commander';

/** An integer in [min, max]. */
export const intIn = (name: string, min: number, max: number) => (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}]`);
  return n;
};

/** An integer ≥ 1. */
export const positiveInt = (name: string) => (value: string): number => {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer`);
  return n;
};

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** A byte count of at least `min`: `1048576`, `64MiB`, `64M`, `10GiB` (binary units). */
export const byteCount = (name: string, min = 1) => (value: string): number => {
  const m = /^(\d+)\s*([KMGT])?(?:i?B)?$/i.exec(value.trim());
  const n = m ? Number(m[1]) * UNITS[(m[2] ?? '').toUpperCase()] : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a byte count of at least ${min}, e.g. 1048576 or 64MiB (got "${value}")`);
  return n;
};
