/** DDIM (Song et al. 2020), diffusers' DDIMScheduler; η = 0 (deterministic) unless asked. */
import { badInput } from '../../errors.ts';
import type { SchedulerConfig } from './config.ts';
import {
  clipSample,
  linspace,
  noiseSchedule,
  requireLength,
  requirePrediction,
  roundHalfEven,
  spacedTimesteps,
  thresholdSample,
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

  needsNoise(): boolean {
    return this.#eta > 0;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    requireLength('model output', modelOutput, sample.length);
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`ddim: step ${stepIndex} is outside 0…${this.timesteps.length - 1}`);
    const prev = t - this.#stride;
    const alphaT = this.#alphasCumprod[t];
    const alphaPrev = prev >= 0 ? this.#alphasCumprod[prev] : this.#finalAlphaCumprod;
    const betaT = 1 - alphaT;
    const sqrtA = Math.sqrt(alphaT);
    const sqrtB = Math.sqrt(betaT);

    const x0 = new Float32Array(sample.length);
    const eps = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) {
      const m = modelOutput[i];
      const x = sample[i];
      switch (this.#prediction) {
        case 'epsilon':
          x0[i] = (x - sqrtB * m) / sqrtA;
          eps[i] = m;
          break;
        case 'sample':
          x0[i] = m;
          eps[i] = (x - sqrtA * m) / sqrtB;
          break;
        case 'v_prediction':
          x0[i] = sqrtA * x - sqrtB * m;
          eps[i] = sqrtA * m + sqrtB * x;
          break;
      }
    }
    if (this.#threshold) thresholdSample(x0, this.#threshold.ratio, this.#threshold.max);
    else if (this.#clip) clipSample(x0, this.#clip.range);

    // σ_t(η) of DDIM eq. 16.
    const variance = ((1 - alphaPrev) / betaT) * (1 - alphaT / alphaPrev);
    const std = this.#eta * Math.sqrt(variance);
    if (std > 0) {
      if (!noise) throw new RangeError(`ddim: step ${stepIndex} needs noise (eta > 0)`);
      requireLength('noise', noise, sample.length);
    }
    const direction = Math.sqrt(1 - alphaPrev - std * std);
    const sqrtPrev = Math.sqrt(alphaPrev);
    const out = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) {
      out[i] = sqrtPrev * x0[i] + direction * eps[i] + (std > 0 ? std * noise![i] : 0);
    }
    return out;
  }
}
