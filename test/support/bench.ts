/**
 * What the benchmarks under test/bench/ share: how a figure is taken from rounds and printed.
 * (Not in test/bench/ itself: `npm run bench` runs every file there.)
 */

/** The middle value (the upper one of an even count): what every bench reports over its rounds. */
export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** `median [min–max]`, for the log. */
export const spread = (xs: readonly number[], digits = 2): string => `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]`;

/**
 * Each timed value over the mean of the baselines measured just before and just after it
 * (`refs` interleaves them: ref, x, ref, x, …, ref, so it has one more entry than `xs`).
 */
export function neighbourRatios(xs: readonly number[], refs: readonly number[]): number[] {
  if (refs.length !== xs.length + 1) throw new Error(`neighbourRatios: ${xs.length} values want ${xs.length + 1} baselines, not ${refs.length}`);
  return xs.map((x, r) => x / ((refs[r] + refs[r + 1]) / 2));
}

/** `--name <number>` from `args`, or `fallback` when it is absent or not a number. */
export const numberFlag = (args: readonly string[], name: string, fallback: number): number =>
  args.includes(name) ? Number(args[args.indexOf(name) + 1]) || fallback : fallback;
