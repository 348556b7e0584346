/**
 * Euler (Karras et al. 2022, Algorithm 2, without churn) — diffusers' EulerDiscreteScheduler —
 * and its ancestral variant (EulerAncestralDiscreteScheduler), which steps to σ_down and adds
 * σ_up-scaled noise.
 */
import type { SchedulerConfig } from './config.ts';
import { applyLinearStep, linearStep, type LinearStep } from './linear.ts';
import {
  interpIndex,
  karrasSigmas,
  linspace,
  noiseSchedule,
  requirePrediction,
  sigmaToT,
  spacedTimesteps,
  TIMESTEP_SPACINGS,
  trainingSigmas,
  type PredictionType,
  type TimestepSpacing,
} from './schedule.ts';
import type { Scheduler, SchedulerName } from './types.ts';

const f32 = Math.fround;

abstract class SigmaScheduler implements Scheduler {
  abstract readonly name: SchedulerName;
  readonly timesteps: readonly number[];
  /** σ for each step, then the σ the last step lands on (0 unless `final_sigmas_type` says otherwise). */
  readonly sigmas: readonly number[];
  readonly initNoiseSigma: number;

  constructor(
    timesteps: number[],
    sigmas: number[],
    spacing: TimestepSpacing,
    protected readonly prediction: PredictionType,
  ) {
    this.timesteps = timesteps;
    this.sigmas = sigmas;
    const maxSigma = Math.max(...sigmas);
    // diffusers: "linspace"/"trailing" start at σ_max; "leading" never reaches T−1, so √(σ²+1).
    this.initNoiseSigma = spacing === 'linspace' || spacing === 'trailing' ? maxSigma : Math.sqrt(maxSigma * maxSigma + 1);
  }

  readonly historyLength = 0;

  abstract needsNoise(stepIndex: number): boolean;
  abstract linearStep(stepIndex: number): LinearStep;

  modelInputScale(stepIndex: number): number {
    const sigma = this.sigmaAt(stepIndex);
    return 1 / Math.sqrt(sigma * sigma + 1);
  }

  scaleModelInput(sample: Float32Array, stepIndex: number): Float32Array {
    const scale = this.modelInputScale(stepIndex);
    const out = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) out[i] = sample[i] * scale;
    return out;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const c = this.linearStep(stepIndex);
    if (c.noise !== 0 && !noise) throw new RangeError(`${this.name}: step ${stepIndex} needs noise`);
    return applyLinearStep(c, sample, modelOutput, [], noise).next;
  }

  protected sigmaAt(stepIndex: number): number {
    if (!Number.isInteger(stepIndex) || stepIndex < 0 || stepIndex >= this.timesteps.length) {
      throw new RangeError(`${this.name}: step ${stepIndex} is outside 0…${this.timesteps.length - 1}`);
    }
    return this.sigmas[stepIndex];
  }

  /** x₀ = p·x + q·m at σ (k-diffusion's denoiser for each parameterisation). */
  protected denoise(sigma: number): LinearStep['denoise'] {
    switch (this.prediction) {
      case 'epsilon':
        return { sample: 1, model: -sigma };
      case 'v_prediction':
        return { sample: 1 / (sigma * sigma + 1), model: -sigma / Math.sqrt(sigma * sigma + 1) };
      case 'sample':
        return { sample: 0, model: 1 };
    }
  }

  /** The Euler step from σ to σ_to along d(x) = (x − x₀)/σ, plus `noise`·n: x' = x + (x − x₀)/σ · (σ_to − σ) + noise·n. */
  protected eulerStep(stepIndex: number, sigmaTo: number, noise: number): LinearStep {
    const sigma = this.sigmaAt(stepIndex);
    const k = (sigmaTo - sigma) / sigma;
    return linearStep({ denoise: this.denoise(sigma), sample: 1 + k, denoised: -k, noise });
  }
}

export class EulerScheduler extends SigmaScheduler {
  readonly name = 'euler' as const;

  constructor(config: SchedulerConfig, steps: number) {
    config.requireOff('use_exponential_sigmas', 'use_beta_sigmas');
    const prediction = requirePrediction(config);
    const spacing = config.oneOf('timestep_spacing', TIMESTEP_SPACINGS);
    const interpolation = config.oneOf('interpolation_type', ['linear', 'log_linear'] as const);
    const timestepType = config.oneOf('timestep_type', ['discrete', 'continuous'] as const);
    const finalSigmas = config.oneOf('final_sigmas_type', ['zero', 'sigma_min'] as const);
    const schedule = noiseSchedule(config, true);
    const T = schedule.numTrainTimesteps;
    const train = trainingSigmas(schedule);
    let timesteps = spacedTimesteps(spacing, steps, T, config.integer('steps_offset', 0, T)).map(f32);
    let sigmas =
      interpolation === 'linear'
        ? timesteps.map((t) => interpIndex(t, train))
        : // diffusers spans [σ_max, σ_min] in steps+1 values here, so the last step lands on σ_min.
          linspace(Math.log(train[T - 1]), Math.log(train[0]), steps + 1).map(Math.exp);
    if (config.boolean('use_karras_sigmas')) {
      const sigmaMin = config.optionalNumber('sigma_min') ?? sigmas[sigmas.length - 1];
      const sigmaMax = config.optionalNumber('sigma_max') ?? sigmas[0];
      sigmas = karrasSigmas(sigmaMin, sigmaMax, steps);
      const logSigmas = train.map(Math.log);
      timesteps = sigmas.map((s) => f32(sigmaToT(s, logSigmas)));
    }
    const last = finalSigmas === 'zero' ? 0 : Math.sqrt((1 - schedule.alphasCumprod[0]) / schedule.alphasCumprod[0]);
    sigmas = [...sigmas, last].map(f32);
    if (timestepType === 'continuous' && prediction === 'v_prediction') {
      timesteps = sigmas.slice(0, -1).map((s) => f32(0.25 * Math.log(s)));
    }
    super(timesteps, sigmas, spacing, prediction);
  }

  needsNoise(): boolean {
    return false;
  }

  linearStep(stepIndex: number): LinearStep {
    return this.eulerStep(stepIndex, this.sigmas[stepIndex + 1], 0);
  }
}

export class EulerAncestralScheduler extends SigmaScheduler {
  readonly name = 'euler-ancestral' as const;

  constructor(config: SchedulerConfig, steps: number) {
    const prediction = requirePrediction(config);
    const spacing = config.oneOf('timestep_spacing', TIMESTEP_SPACINGS);
    const schedule = noiseSchedule(config, true);
    const T = schedule.numTrainTimesteps;
    const train = trainingSigmas(schedule);
    const timesteps = spacedTimesteps(spacing, steps, T, config.integer('steps_offset', 0, T)).map(f32);
    const sigmas = [...timesteps.map((t) => interpIndex(t, train)), 0].map(f32);
    super(timesteps, sigmas, spacing, prediction);
  }

  needsNoise(stepIndex: number): boolean {
    return this.sigmas[stepIndex + 1] > 0;
  }

  linearStep(stepIndex: number): LinearStep {
    const sigma = this.sigmaAt(stepIndex);
    const sigmaTo = this.sigmas[stepIndex + 1];
    const sigmaUp = Math.sqrt((sigmaTo * sigmaTo * (sigma * sigma - sigmaTo * sigmaTo)) / (sigma * sigma));
    const sigmaDown = Math.sqrt(sigmaTo * sigmaTo - sigmaUp * sigmaUp);
    return this.eulerStep(stepIndex, sigmaDown, sigmaUp);
  }
}
