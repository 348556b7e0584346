/**
 * The noise schedule and the small numeric helpers diffusers' schedulers share, ported so the
 * numbers match: betas, alphas and their cumulative product are float32 in diffusers (torch
 * float32 tensors, cumprod accumulated in double on CPU), so they are rounded to float32 here.
 */
import type { SchedulerConfig } from './config.ts';

const f32 = Math.fround;

export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;
export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample'] as const;
export const TIMESTEP_SPACINGS = ['linspace', 'leading', 'trailing'] as const;
export type PredictionType = (typeof PREDICTION_TYPES)[number];
export type TimestepSpacing = (typeof TIMESTEP_SPACINGS)[number];

export interface NoiseSchedule {
  numTrainTimesteps: number;
  /** ᾱ_t for t = 0…T−1 (float32 values). Shared between schedulers of one config: read-only. */
  alphasCumprod: Float64Array;
}

/**
 * ᾱ from `num_train_timesteps`, `beta_*`, `trained_betas` and `rescale_betas_zero_snr`.
 * `floorTerminal`: the sigma-based schedulers (Euler, DPM) then set ᾱ_T−1 = 2^−24 so σ stays finite.
 */
export function noiseSchedule(config: SchedulerConfig, floorTerminal: boolean): NoiseSchedule {
  const T = config.integer('num_train_timesteps', 1, 100_000);
  const trained = config.trainedBetas(T);
  const schedule = trained ? null : config.oneOf('beta_schedule', BETA_SCHEDULES);
  const range =
    schedule && schedule !== 'squaredcos_cap_v2'
      ? [config.number('beta_start', (n) => n >= 0 && n < 1, 'in [0, 1)'), config.number('beta_end', (n) => n >= 0 && n < 1, 'in [0, 1)')]
      : null;
  const rescale = config.boolean('rescale_betas_zero_snr');
  // The same few configs come back on every image: their schedules are made once (trained betas are not keyed).
  const key = trained ? null : `${T}|${schedule}|${range}|${rescale}|${floorTerminal}`;
  const known = key === null ? undefined : schedules.get(key);
  if (known) return known;

  let betas = trained?.map(f32) ?? null;
  if (!betas) {
    if (schedule === 'squaredcos_cap_v2') {
      betas = cosineBetas(T);
    } else {
      const [start, end] = range!;
      betas =
        schedule === 'linear'
          ? linspace(start, end, T).map(f32)
          : linspace(Math.sqrt(start), Math.sqrt(end), T).map((b) => f32(f32(b) * f32(b)));
    }
  }
  if (rescale) betas = rescaleZeroTerminalSnr(betas);
  const alphasCumprod = new Float64Array(T);
  let acc = 1;
  for (let t = 0; t < T; t++) {
    acc *= f32(1 - betas[t]);
    alphasCumprod[t] = f32(acc);
  }
  if (floorTerminal && rescale) alphasCumprod[T - 1] = 2 ** -24;
  const made: NoiseSchedule = { numTrainTimesteps: T, alphasCumprod };
  if (key !== null) {
    if (schedules.size >= 32) schedules.delete(schedules.keys().next().value!);
    schedules.set(key, made);
  }
  return made;
}

const schedules = new Map<string, NoiseSchedule>();

/** Glide's cosine schedule (`betas_for_alpha_bar`, max β 0.999). */
function cosineBetas(T: number): number[] {
  const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  const out: number[] = [];
  for (let i = 0; i < T; i++) out.push(f32(Math.min(1 - alphaBar((i + 1) / T) / alphaBar(i / T), 0.999)));
  return out;
}

/** Lin et al. 2023, Algorithm 1: shift and scale √ᾱ so the last step has zero SNR. */
function rescaleZeroTerminalSnr(betas: number[]): number[] {
  const sqrtBar: number[] = [];
  let acc = 1;
  for (const b of betas) {
    acc *= 1 - b;
    sqrtBar.push(Math.sqrt(acc));
  }
  const first = sqrtBar[0];
  const last = sqrtBar[sqrtBar.length - 1];
  const bar = sqrtBar.map((s) => ((s - last) * first) / (first - last)).map((s) => s * s);
  return bar.map((a, i) => f32(1 - (i === 0 ? a : a / bar[i - 1])));
}

/** σ_t = √((1 − ᾱ_t) / ᾱ_t) over the training timesteps (ascending in t). */
export function trainingSigmas(schedule: NoiseSchedule): readonly number[] {
  let sigmas = sigmasOf.get(schedule);
  if (!sigmas) sigmasOf.set(schedule, (sigmas = Array.from(schedule.alphasCumprod, (a) => f32(Math.sqrt((1 - a) / a)))));
  return sigmas;
}

const sigmasOf = new WeakMap<NoiseSchedule, readonly number[]>();

/** numpy.linspace(start, stop, num, endpoint): start + i·step, the endpoint written exactly. */
export function linspace(start: number, stop: number, num: number, endpoint = true): number[] {
  const div = endpoint ? num - 1 : num;
  const step = div > 0 ? (stop - start) / div : 0;
  const out: number[] = [];
  for (let i = 0; i < num; i++) out.push(start + i * step);
  if (endpoint && num > 1) out[num - 1] = stop;
  return out;
}

/** numpy.arange(start, stop, step) for a negative or positive float step. */
export function arange(start: number, stop: number, step: number): number[] {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(start + i * step);
  return out;
}

/** numpy.round: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** numpy.interp(x, [0, 1, …, n−1], ys): linear between integer knots, clamped at the ends. */
export function interpIndex(x: number, ys: readonly number[]): number {
  if (x <= 0) return ys[0];
  if (x >= ys.length - 1) return ys[ys.length - 1];
  const i = Math.floor(x);
  const w = x - i;
  return ys[i] + w * (ys[i + 1] - ys[i]);
}

/** The inference timesteps of the shared `timestep_spacing` rule (Table 2 of Lin et al. 2023). */
export function spacedTimesteps(spacing: TimestepSpacing, steps: number, T: number, stepsOffset: number): number[] {
  switch (spacing) {
    case 'linspace':
      return linspace(0, T - 1, steps).reverse();
    case 'leading': {
      const ratio = Math.floor(T / steps);
      return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + stepsOffset);
    }
    case 'trailing':
      return arange(T, 0, -T / steps).map((t) => roundHalfEven(t) - 1);
  }
}

/** Karras et al. 2022 (ρ = 7) σ ramp from σ_max down to σ_min. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, steps: number): number[] {
  const rho = 7;
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return linspace(0, 1, steps).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/** The (fractional) training timestep of a σ, by interpolating log σ (diffusers' `_sigma_to_t`). */
export function sigmaToT(sigma: number, logSigmas: readonly number[]): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  let low = 0;
  for (let i = 0; i < logSigmas.length; i++) if (logSigma - logSigmas[i] >= 0) low = i;
  low = Math.min(low, logSigmas.length - 2);
  const lo = logSigmas[low];
  const hi = logSigmas[low + 1];
  const w = Math.min(1, Math.max(0, (lo - logSigma) / (lo - hi)));
  return (1 - w) * low + w * (low + 1);
}

export function requirePrediction(config: SchedulerConfig): PredictionType {
  return config.oneOf('prediction_type', PREDICTION_TYPES);
}

/**
 * Imagen's dynamic thresholding of a predicted x₀ (one image): s = the `ratio` quantile of |x|
 * (torch.quantile, linear), clamped to [1, max]; x ← clamp(x, −s, s) / s. Works in place.
 */
export function thresholdSample(x: Float32Array, ratio: number, maxValue: number): void {
  const sorted = Float64Array.from(x, Math.abs).sort();
  const pos = ratio * (sorted.length - 1);
  const i = Math.floor(pos);
  const q = i + 1 < sorted.length ? sorted[i] + (pos - i) * (sorted[i + 1] - sorted[i]) : sorted[i];
  const s = Math.min(maxValue, Math.max(1, q));
  for (let k = 0; k < x.length; k++) x[k] = Math.min(s, Math.max(-s, x[k])) / s;
}

/** Clamp in place to [−range, range]. */
export function clipSample(x: Float32Array, range: number): void {
  for (let k = 0; k < x.length; k++) x[k] = Math.min(range, Math.max(-range, x[k]));
}

export function requireLength(what: string, a: Float32Array, n: number): void {
  if (a.length !== n) throw new RangeError(`scheduler step: ${what} has ${a.length} values, the sample ${n}`);
}
