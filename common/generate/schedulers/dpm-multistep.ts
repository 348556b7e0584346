/**
 * DPM-Solver++ multistep (Lu et al. 2022), diffusers' DPMSolverMultistepScheduler: "DPM++ 2M"
 * with the defaults (solver_order 2, dpmsolver++, midpoint, lower_order_final), and what a
 * config may ask besides — order 1 or 3, heun, Karras σ, the SDE variant (sde-dpmsolver++).
 * The solver integrates the data prediction x₀ in λ = log(α/σ); its history makes it stateful,
 * so steps must be taken in order.
 */
import { FuseloadError } from '../../errors.ts';
import type { SchedulerConfig } from './config.ts';
import { applyLinearStep, type LinearStep } from './linear.ts';
import {
  arange,
  interpIndex,
  karrasSigmas,
  linspace,
  noiseSchedule,
  requirePrediction,
  roundHalfEven,
  sigmaToT,
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
  /** x₀ predictions of the last `order − 1` steps, newest first. */
  readonly #history: Float32Array[] = [];
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

  /** Order 2 reads the last step's x₀, order 3 the last two. */
  get historyLength(): number {
    return this.#order - 1;
  }

  needsNoise(): boolean {
    return this.#algorithm === 'sde-dpmsolver++';
  }

  modelInputScale(): number {
    return 1;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    if (stepIndex !== this.#next) throw new RangeError(`dpm++2m: step ${stepIndex} taken out of order (expected ${this.#next})`);
    const c = this.linearStep(stepIndex);
    if (c.noise !== 0 && !noise) throw new RangeError(`dpm++2m: step ${stepIndex} needs noise (sde-dpmsolver++)`);
    const { next, denoised } = applyLinearStep(c, sample, modelOutput, this.#history, noise);
    this.#history.unshift(denoised);
    this.#history.length = Math.min(this.#history.length, this.historyLength);
    this.#next++;
    return next;
  }

  /**
   * Step i: the data prediction x₀ = (x − σ_t·m)/α_t (epsilon), m (sample) or α_t·x − σ_t·m (v),
   * then the solver's update over the last one to three x₀, newest first m0, m1, m2.
   */
  linearStep(stepIndex: number): LinearStep {
    const n = this.timesteps.length;
    if (!Number.isInteger(stepIndex) || stepIndex < 0 || stepIndex >= n) throw new RangeError(`dpm++2m: step ${stepIndex} is outside 0…${n - 1}`);
    const { alpha, sigma: s } = alphaSigma(this.sigmas[stepIndex]);
    const denoise =
      this.#prediction === 'epsilon' ? { sample: 1 / alpha, model: -s / alpha } : this.#prediction === 'sample' ? { sample: 0, model: 1 } : { sample: alpha, model: -s };
    const threshold = this.#threshold ? { threshold: this.#threshold } : {};
    const lowerOrderFinal = stepIndex === n - 1 && (this.#eulerAtFinal || (this.#lowerOrderFinal && n < 15) || this.#finalZero);
    const lowerOrderSecond = stepIndex === n - 2 && this.#lowerOrderFinal && n < 15;
    // Steps taken at lower order so far (diffusers' lower_order_nums), before this one.
    const lowerOrderNums = Math.min(stepIndex, this.#order);
    const sde = this.#algorithm === 'sde-dpmsolver++';
    const { t, s0, lambdaS0, h } = this.#span(stepIndex);
    // x' = a·x + b·m0 + c·D1 (+ d·D2) + e·noise, D1 and D2 the divided differences of x₀.
    const a = sde ? (t.sigma / s0.sigma) * Math.exp(-h) : t.sigma / s0.sigma;
    const b = sde ? t.alpha * (1 - Math.exp(-2 * h)) : -(t.alpha * (Math.exp(-h) - 1));
    const e = sde ? t.sigma * Math.sqrt(1 - Math.exp(-2 * h)) : 0;
    const step = (m0: number, history: number[]): LinearStep => ({ denoise, ...threshold, sample: a, denoised: m0, model: 0, history, noise: e });

    if (this.#order === 1 || lowerOrderNums < 1 || lowerOrderFinal) return step(b, []);

    const s1 = alphaSigma(this.sigmas[stepIndex - 1]);
    const lambdaS1 = Math.log(s1.alpha) - Math.log(s1.sigma);
    const r0 = (lambdaS0 - lambdaS1) / h;
    if (this.#order === 2 || lowerOrderNums < 2 || lowerOrderSecond) {
      const c = sde
        ? this.#heun
          ? t.alpha * ((1 - Math.exp(-2 * h)) / (-2 * h) + 1)
          : 0.5 * (t.alpha * (1 - Math.exp(-2 * h)))
        : this.#heun
          ? t.alpha * ((Math.exp(-h) - 1) / h + 1)
          : -0.5 * (t.alpha * (Math.exp(-h) - 1));
      // D1 = (m0 − m1)/r0
      return step(b + c / r0, [-c / r0]);
    }

    const s2 = alphaSigma(this.sigmas[stepIndex - 2]);
    const lambdaS2 = Math.log(s2.alpha) - Math.log(s2.sigma);
    const r1 = (lambdaS1 - lambdaS2) / h;
    const c = sde ? t.alpha * ((1 - Math.exp(-2 * h)) / (-2 * h) + 1) : t.alpha * ((Math.exp(-h) - 1) / h + 1);
    const d = sde ? t.alpha * ((1 - Math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5) : -(t.alpha * ((Math.exp(-h) - 1 + h) / (h * h) - 0.5));
    // D10 = (m0 − m1)/r0, D11 = (m1 − m2)/r1, D1 = D10 + r0/(r0+r1)·(D10 − D11), D2 = (D10 − D11)/(r0+r1):
    // c·D1 + d·D2 = c·D10 + k·(D10 − D11) with k = (c·r0 + d)/(r0 + r1).
    const k = (c * r0 + d) / (r0 + r1);
    return step(b + (c + k) / r0, [-(c + k) / r0 - k / r1, k / r1]);
  }

  /** The λ-step from step i to i+1, and the target's α and σ. */
  #span(i: number) {
    const t = alphaSigma(this.sigmas[i + 1]);
    const s0 = alphaSigma(this.sigmas[i]);
    const lambdaT = Math.log(t.alpha) - Math.log(t.sigma);
    const lambdaS0 = Math.log(s0.alpha) - Math.log(s0.sigma);
    return { t, s0, lambdaS0, h: lambdaT - lambdaS0 };
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
