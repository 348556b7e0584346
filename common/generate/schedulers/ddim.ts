/** DDIM (Song et al. 2020), diffusers' DDIMScheduler; η = 0 (deterministic) unless asked. */
import { badInput } from '../../errors.ts';
import type { SchedulerConfig } from './config.ts';
import { applyLinearStep, type LinearStep } from './linear.ts';
import {
  linspace,
  noiseSchedule,
  requirePrediction,
  roundHalfEven,
  spacedTimesteps,
  TIMESTEP_SPACINGS,
  type PredictionType,
} from './schedule.ts';
import type { Scheduler } from './types.ts';

export class DdimScheduler implements Scheduler {
  readonly name = 'ddim' as const;
  readonly timesteps: readonly number[];
  readonly initNoiseSigma = 1;
  readonly #alphasCumprod: Float64Array;
  readonly #finalAlphaCumprod: number;
  readonly #stride: number;
  readonly #prediction: PredictionType;
  readonly #clip: { range: number } | null;
  readonly #threshold: { ratio: number; max: number } | null;
  readonly #eta: number;

  constructor(config: SchedulerConfig, steps: number, eta = 0) {
    this.#prediction = requirePrediction(config);
    const schedule = noiseSchedule(config, false);
    const T = schedule.numTrainTimesteps;
    if (steps > T) throw badInput('steps', `DDIM takes at most num_train_timesteps (${T}) steps, got ${steps}`);
    const spacing = config.oneOf('timestep_spacing', TIMESTEP_SPACINGS);
    this.timesteps =
      spacing === 'linspace'
        ? linspace(0, T - 1, steps).map(roundHalfEven).reverse()
        : spacedTimesteps(spacing, steps, T, config.integer('steps_offset', 0, T));
    if (this.timesteps[0] > T - 1) throw badInput('scheduler_config.json', `steps_offset puts the first timestep at ${this.timesteps[0]}, past ${T - 1}`);
    this.#alphasCumprod = schedule.alphasCumprod;
    this.#finalAlphaCumprod = config.boolean('set_alpha_to_one') ? 1 : schedule.alphasCumprod[0];
    // diffusers steps back by T // steps whatever the spacing.
    this.#stride = Math.floor(T / steps);
    this.#threshold = config.boolean('thresholding')
      ? { ratio: config.number('dynamic_thresholding_ratio'), max: config.number('sample_max_value') }
      : null;
    this.#clip = !this.#threshold && config.boolean('clip_sample') ? { range: config.number('clip_sample_range') } : null;
    if (!Number.isFinite(eta) || eta < 0) throw new RangeError(`ddim: eta must be ≥ 0, got ${eta}`);
    this.#eta = eta;
  }

  readonly historyLength = 0;

  needsNoise(): boolean {
    return this.#eta > 0;
  }

  modelInputScale(): number {
    return 1;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  linearStep(stepIndex: number): LinearStep {
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`ddim: step ${stepIndex} is outside 0…${this.timesteps.length - 1}`);
    const prev = t - this.#stride;
    const alphaT = this.#alphasCumprod[t];
    const alphaPrev = prev >= 0 ? this.#alphasCumprod[prev] : this.#finalAlphaCumprod;
    const betaT = 1 - alphaT;
    const sqrtA = Math.sqrt(alphaT);
    const sqrtB = Math.sqrt(betaT);
    // x₀ = p·x + q·m and ε = r·x + s·m for each parameterisation (ε from the unclipped x₀, as diffusers does).
    const [p, q, r, s] =
      this.#prediction === 'epsilon'
        ? [1 / sqrtA, -sqrtB / sqrtA, 0, 1]
        : this.#prediction === 'sample'
          ? [0, 1, 1 / sqrtB, -sqrtA / sqrtB]
          : [sqrtA, -sqrtB, sqrtB, sqrtA];
    // σ_t(η) of DDIM eq. 16.
    const variance = ((1 - alphaPrev) / betaT) * (1 - alphaT / alphaPrev);
    const std = this.#eta * Math.sqrt(variance);
    const direction = Math.sqrt(1 - alphaPrev - std * std);
    return {
      denoise: { sample: p, model: q },
      ...(this.#threshold ? { threshold: this.#threshold } : this.#clip ? { clip: this.#clip.range } : {}),
      // x' = √ᾱ_prev·x₀ + direction·ε + std·noise
      sample: direction * r,
      denoised: Math.sqrt(alphaPrev),
      model: direction * s,
      history: [],
      noise: std,
    };
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const c = this.linearStep(stepIndex);
    if (c.noise > 0 && !noise) throw new RangeError(`ddim: step ${stepIndex} needs noise (eta > 0)`);
    return applyLinearStep(c, sample, modelOutput, [], noise).next;
  }
}
