/**
 * Latent Consistency Models (Luo et al. 2023), diffusers' LCMScheduler: timesteps are taken from
 * the distillation schedule (`original_inference_steps`), each step predicts x₀ through the
 * consistency boundary condition and re-noises it to the next timestep (not after the last).
 */
import { badInput } from '../../errors.ts';
import type { SchedulerConfig } from './config.ts';
import { applyLinearStep, type LinearStep } from './linear.ts';
import { linspace, noiseSchedule, requirePrediction, type PredictionType } from './schedule.ts';
import type { Scheduler } from './types.ts';

const SIGMA_DATA = 0.5;

export class LcmScheduler implements Scheduler {
  readonly name = 'lcm' as const;
  readonly timesteps: readonly number[];
  readonly initNoiseSigma = 1;
  readonly #alphasCumprod: Float64Array;
  readonly #finalAlphaCumprod: number;
  readonly #prediction: PredictionType;
  readonly #timestepScaling: number;
  readonly #clip: { range: number } | null;
  readonly #threshold: { ratio: number; max: number } | null;

  constructor(config: SchedulerConfig, steps: number) {
    this.#prediction = requirePrediction(config);
    const schedule = noiseSchedule(config, false);
    const T = schedule.numTrainTimesteps;
    const original = config.integer('original_inference_steps', 1, T);
    if (steps > original) {
      throw badInput('steps', `LCM takes at most original_inference_steps (${original}) steps, got ${steps}`);
    }
    const k = Math.floor(T / original);
    const origin = Array.from({ length: original }, (_, i) => (original - i) * k - 1);
    this.timesteps = linspace(0, origin.length, steps, false).map((x) => origin[Math.floor(x)]);
    this.#alphasCumprod = schedule.alphasCumprod;
    this.#finalAlphaCumprod = config.boolean('set_alpha_to_one') ? 1 : schedule.alphasCumprod[0];
    this.#timestepScaling = config.number('timestep_scaling');
    this.#threshold = config.boolean('thresholding')
      ? { ratio: config.number('dynamic_thresholding_ratio'), max: config.number('sample_max_value') }
      : null;
    this.#clip = !this.#threshold && config.boolean('clip_sample') ? { range: config.number('clip_sample_range') } : null;
  }

  readonly historyLength = 0;

  needsNoise(stepIndex: number): boolean {
    return stepIndex < this.timesteps.length - 1;
  }

  modelInputScale(): number {
    return 1;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  /** denoised = c_out·x₀ + c_skip·x; the next sample re-noises it to the next timestep: √ᾱ_prev·denoised + √(1−ᾱ_prev)·noise. */
  linearStep(stepIndex: number): LinearStep {
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`lcm: step ${stepIndex} is outside 0…${this.timesteps.length - 1}`);
    const last = stepIndex === this.timesteps.length - 1;
    const prev = last ? t : this.timesteps[stepIndex + 1];
    const alphaT = this.#alphasCumprod[t];
    const alphaPrev = prev >= 0 ? this.#alphasCumprod[prev] : this.#finalAlphaCumprod;
    const sqrtA = Math.sqrt(alphaT);
    const sqrtB = Math.sqrt(1 - alphaT);
    const scaled = t * this.#timestepScaling;
    const cSkip = SIGMA_DATA ** 2 / (scaled * scaled + SIGMA_DATA ** 2);
    const cOut = scaled / Math.sqrt(scaled * scaled + SIGMA_DATA ** 2);
    const denoise =
      this.#prediction === 'epsilon' ? { sample: 1 / sqrtA, model: -sqrtB / sqrtA } : this.#prediction === 'sample' ? { sample: 0, model: 1 } : { sample: sqrtA, model: -sqrtB };
    const renoise = last ? 1 : Math.sqrt(alphaPrev);
    return {
      denoise,
      ...(this.#threshold ? { threshold: this.#threshold } : this.#clip ? { clip: this.#clip.range } : {}),
      sample: renoise * cSkip,
      denoised: renoise * cOut,
      model: 0,
      history: [],
      noise: last ? 0 : Math.sqrt(1 - alphaPrev),
    };
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const c = this.linearStep(stepIndex);
    if (c.noise !== 0 && !noise) throw new RangeError(`lcm: step ${stepIndex} needs noise`);
    return applyLinearStep(c, sample, modelOutput, [], noise).next;
  }
}
