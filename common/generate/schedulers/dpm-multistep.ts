/**
 * DPM-Solver++ multistep (Lu et al. 2022), diffusers' DPMSolverMultistepScheduler: "DPM++ 2M"
 * with the defaults (solver_order 2, dpmsolver++, midpoint, lower_order_final), and what a
 * config may ask besides — order 1 or 3, heun, Karras σ, the SDE variant (sde-dpmsolver++).
 * The solver integrates the data prediction x₀ in λ = log(α/σ); its history makes it stateful,
 * so steps must be taken in order.
 */
import { FuseloadError } from '../../errors.ts';
import type { SchedulerConfig } from './config.ts';
import {
  arange,
  interpIndex,
  karrasSigmas,
  linspace,
  noiseSchedule,
  requireLength,
  requirePrediction,
  roundHalfEven,
  sigmaToT,
  thresholdSample,
  TIMESTEP_SPACINGS,
  trainingSigmas,
  type PredictionType,
} from './schedule.ts';
import type { Scheduler } from './types.ts';

type Algorithm = 'dpmsolver++' | 'sde-dpmsolver++';

const f32 = Math.fround;

export class DpmMultistepScheduler implements Scheduler {
  readonly name = 'dpm++2m' as const;
  readonly timesteps: readonly number[];
  readonly sigmas: readonly number[];
  readonly initNoiseSigma = 1;
  readonly #prediction: PredictionType;
  readonly #algorithm: Algorithm;
  readonly #order: number;
  readonly #heun: boolean;
  readonly #lowerOrderFinal: boolean;
  readonly #eulerAtFinal: boolean;
  readonly #finalZero: boolean;
  readonly #threshold: { ratio: number; max: number } | null;
  /** x₀ predictions of the last `order` steps, newest last. */
  readonly #history: Float32Array[] = [];
  #lowerOrderNums = 0;
  #next = 0;

  constructor(config: SchedulerConfig, steps: number) {
    config.requireOff('use_exponential_sigmas', 'use_beta_sigmas', 'use_lu_lambdas', 'use_flow_sigmas', 'use_dynamic_shifting');
    if (config.has('variance_type')) {
      throw new FuseloadError('unsupported', 'scheduler_config.json: variance_type (a UNet that predicts its variance) is not supported');
    }
    this.#prediction = requirePrediction(config);
    const algorithm = config.oneOf('algorithm_type', ['dpmsolver++', 'sde-dpmsolver++', 'deis', 'dpmsolver', 'sde-dpmsolver'] as const);
    if (algorithm === 'dpmsolver' || algorithm === 'sde-dpmsolver') {
      throw new FuseloadError('unsupported', `scheduler_config.json: algorithm_type ${algorithm} is not supported (use dpmsolver++ or sde-dpmsolver++)`);
    }
    this.#algorithm = algorithm === 'deis' ? 'dpmsolver++' : algorithm; // diffusers does the same
    const solverType = config.oneOf('solver_type', ['midpoint', 'heun', 'logrho', 'bh1', 'bh2'] as const);
    this.#heun = solverType === 'heun';
    this.#order = config.integer('solver_order', 1, 3);
    this.#lowerOrderFinal = config.boolean('lower_order_final');
    this.#eulerAtFinal = config.boolean('euler_at_final');
    const finalSigmas = config.oneOf('final_sigmas_type', ['zero', 'sigma_min'] as const);
    this.#finalZero = finalSigmas === 'zero';
    this.#threshold = config.boolean('thresholding')
      ? { ratio: config.number('dynamic_thresholding_ratio'), max: config.number('sample_max_value') }
      : null;

    const schedule = noiseSchedule(config, true);
    const T = schedule.numTrainTimesteps;
    const ac = schedule.alphasCumprod;
    // λ_min clipping (for the cosine schedule): the last timestep whose λ is above it.
    const lambdaMin = config.number('lambda_min_clipped', (n) => !Number.isNaN(n) && n < Infinity, 'a number');
    let clipped = 0;
    while (clipped < T && lambdaOf(ac[T - 1 - clipped]) < lambdaMin) clipped++;
    const lastTimestep = T - clipped;
    const spacing = config.oneOf('timestep_spacing', TIMESTEP_SPACINGS);
    const offset = config.integer('steps_offset', 0, T);
    let timesteps: number[];
    switch (spacing) {
      case 'linspace':
        timesteps = linspace(0, lastTimestep - 1, steps + 1).map(roundHalfEven).reverse().slice(0, -1);
        break;
      case 'leading': {
        const ratio = Math.floor(lastTimestep / (steps + 1));
        timesteps = Array.from({ length: steps }, (_, i) => (steps - i) * ratio + offset);
        break;
      }
      case 'trailing':
        timesteps = arange(lastTimestep, 0, -T / steps).map((t) => roundHalfEven(t) - 1);
        break;
    }
    const train = trainingSigmas(schedule);
    let sigmas: number[];
    if (config.boolean('use_karras_sigmas')) {
      const logSigmas = train.map(Math.log);
      sigmas = karrasSigmas(train[0], train[T - 1], steps);
      const round = config.oneOf('beta_schedule', ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const) !== 'squaredcos_cap_v2';
      timesteps = sigmas.map((s) => sigmaToT(s, logSigmas)).map((t) => (round ? roundHalfEven(t) : t));
      // The UNet is fed int64 timesteps in diffusers: the cosine schedule's fractions truncate.
      timesteps = timesteps.map(Math.trunc);
    } else {
      sigmas = timesteps.map((t) => interpIndex(t, train));
    }
    const last = this.#finalZero ? 0 : Math.sqrt((1 - ac[0]) / ac[0]);
    this.sigmas = [...sigmas, last].map(f32);
    this.timesteps = timesteps;
  }

  needsNoise(): boolean {
    return this.#algorithm === 'sde-dpmsolver++';
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    requireLength('model output', modelOutput, sample.length);
    if (stepIndex !== this.#next) throw new RangeError(`dpm++2m: step ${stepIndex} taken out of order (expected ${this.#next})`);
    const n = this.timesteps.length;
    const sde = this.#algorithm === 'sde-dpmsolver++';
    if (sde) {
      if (!noise) throw new RangeError(`dpm++2m: step ${stepIndex} needs noise (sde-dpmsolver++)`);
      requireLength('noise', noise, sample.length);
    }
    const lowerOrderFinal =
      stepIndex === n - 1 && (this.#eulerAtFinal || (this.#lowerOrderFinal && n < 15) || this.#finalZero);
    const lowerOrderSecond = stepIndex === n - 2 && this.#lowerOrderFinal && n < 15;

    this.#history.push(this.#dataPrediction(modelOutput, sample, this.sigmas[stepIndex]));
    if (this.#history.length > this.#order) this.#history.shift();

    let out: Float32Array;
    if (this.#order === 1 || this.#lowerOrderNums < 1 || lowerOrderFinal) out = this.#firstOrder(stepIndex, sample, noise);
    else if (this.#order === 2 || this.#lowerOrderNums < 2 || lowerOrderSecond) out = this.#secondOrder(stepIndex, sample, noise);
    else out = this.#thirdOrder(stepIndex, sample, noise);

    if (this.#lowerOrderNums < this.#order) this.#lowerOrderNums++;
    this.#next++;
    return out;
  }

  #dataPrediction(modelOutput: Float32Array, sample: Float32Array, sigma: number): Float32Array {
    const { alpha, sigma: s } = alphaSigma(sigma);
    const x0 = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) {
      const m = modelOutput[i];
      x0[i] = this.#prediction === 'epsilon' ? (sample[i] - s * m) / alpha : this.#prediction === 'sample' ? m : alpha * sample[i] - s * m;
    }
    if (this.#threshold) thresholdSample(x0, this.#threshold.ratio, this.#threshold.max);
    return x0;
  }

  /** The λ-step from step i to i+1, and the target's α and σ. */
  #span(i: number) {
    const t = alphaSigma(this.sigmas[i + 1]);
    const s0 = alphaSigma(this.sigmas[i]);
    const lambdaT = Math.log(t.alpha) - Math.log(t.sigma);
    const lambdaS0 = Math.log(s0.alpha) - Math.log(s0.sigma);
    return { t, s0, lambdaS0, h: lambdaT - lambdaS0 };
  }

  #firstOrder(i: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const { t, s0, h } = this.#span(i);
    const d0 = this.#history[this.#history.length - 1];
    const out = new Float32Array(sample.length);
    if (this.#algorithm === 'dpmsolver++') {
      const a = t.sigma / s0.sigma;
      const b = -(t.alpha * (Math.exp(-h) - 1));
      for (let k = 0; k < out.length; k++) out[k] = a * sample[k] + b * d0[k];
    } else {
      const a = (t.sigma / s0.sigma) * Math.exp(-h);
      const b = t.alpha * (1 - Math.exp(-2 * h));
      const c = t.sigma * Math.sqrt(1 - Math.exp(-2 * h));
      for (let k = 0; k < out.length; k++) out[k] = a * sample[k] + b * d0[k] + c * noise![k];
    }
    return out;
  }

  #secondOrder(i: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const { t, s0, lambdaS0, h } = this.#span(i);
    const s1 = alphaSigma(this.sigmas[i - 1]);
    const lambdaS1 = Math.log(s1.alpha) - Math.log(s1.sigma);
    const r0 = (lambdaS0 - lambdaS1) / h;
    const m0 = this.#history[this.#history.length - 1];
    const m1 = this.#history[this.#history.length - 2];
    const out = new Float32Array(sample.length);
    let a: number, b: number, c: number, e = 0;
    if (this.#algorithm === 'dpmsolver++') {
      a = t.sigma / s0.sigma;
      b = -(t.alpha * (Math.exp(-h) - 1));
      c = this.#heun ? t.alpha * ((Math.exp(-h) - 1) / h + 1) : -0.5 * (t.alpha * (Math.exp(-h) - 1));
    } else {
      a = (t.sigma / s0.sigma) * Math.exp(-h);
      b = t.alpha * (1 - Math.exp(-2 * h));
      c = this.#heun ? t.alpha * ((1 - Math.exp(-2 * h)) / (-2 * h) + 1) : 0.5 * (t.alpha * (1 - Math.exp(-2 * h)));
      e = t.sigma * Math.sqrt(1 - Math.exp(-2 * h));
    }
    for (let k = 0; k < out.length; k++) {
      const d1 = (1 / r0) * (m0[k] - m1[k]);
      out[k] = a * sample[k] + b * m0[k] + c * d1 + (e ? e * noise![k] : 0);
    }
    return out;
  }

  #thirdOrder(i: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const { t, s0, lambdaS0, h } = this.#span(i);
    const s1 = alphaSigma(this.sigmas[i - 1]);
    const s2 = alphaSigma(this.sigmas[i - 2]);
    const lambdaS1 = Math.log(s1.alpha) - Math.log(s1.sigma);
    const lambdaS2 = Math.log(s2.alpha) - Math.log(s2.sigma);
    const r0 = (lambdaS0 - lambdaS1) / h;
    const r1 = (lambdaS1 - lambdaS2) / h;
    const [m2, m1, m0] = this.#history.slice(-3);
    let a: number, b: number, c: number, d: number, e = 0;
    if (this.#algorithm === 'dpmsolver++') {
      a = t.sigma / s0.sigma;
      b = -(t.alpha * (Math.exp(-h) - 1));
      c = t.alpha * ((Math.exp(-h) - 1) / h + 1);
      d = -(t.alpha * ((Math.exp(-h) - 1 + h) / (h * h) - 0.5));
    } else {
      a = (t.sigma / s0.sigma) * Math.exp(-h);
      b = t.alpha * (1 - Math.exp(-2 * h));
      c = t.alpha * ((1 - Math.exp(-2 * h)) / (-2 * h) + 1);
      d = t.alpha * ((1 - Math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5);
      e = t.sigma * Math.sqrt(1 - Math.exp(-2 * h));
    }
    const out = new Float32Array(sample.length);
    for (let k = 0; k < out.length; k++) {
      const d10 = (1 / r0) * (m0[k] - m1[k]);
      const d11 = (1 / r1) * (m1[k] - m2[k]);
      const d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11);
      const d2 = (1 / (r0 + r1)) * (d10 - d11);
      out[k] = a * sample[k] + b * m0[k] + c * d1 + d * d2 + (e ? e * noise![k] : 0);
    }
    return out;
  }
}

/** VP α_t = 1/√(σ²+1), σ_t = σ·α_t for a k-diffusion σ. */
function alphaSigma(sigma: number): { alpha: number; sigma: number } {
  const alpha = 1 / Math.sqrt(sigma * sigma + 1);
  return { alpha, sigma: sigma * alpha };
}

/** λ = log √ᾱ − log √(1 − ᾱ). */
function lambdaOf(alphaCumprod: number): number {
  return Math.log(Math.sqrt(alphaCumprod)) - Math.log(Math.sqrt(1 - alphaCumprod));
}
