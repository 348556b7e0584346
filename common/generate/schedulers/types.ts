/** What every scheduler offers the denoising loop. */
import type { LinearStep } from './linear.ts';

export type { LinearStep } from './linear.ts';

export type SchedulerName = 'euler' | 'euler-ancestral' | 'ddim' | 'dpm++2m' | 'lcm';

export const SCHEDULER_NAMES: readonly SchedulerName[] = ['euler', 'euler-ancestral', 'ddim', 'dpm++2m', 'lcm'];

/**
 * One denoising schedule, fixed at creation for a number of steps (diffusers' `set_timesteps`).
 * Steps are addressed by index 0…steps−1 and must be taken in that order (multistep solvers
 * keep their history); every call returns a fresh array and never writes into its inputs.
 *
 * `scaleModelInput` and `step` are the CPU recipe of `modelInputScale` and `linearStep`, the same
 * numbers a device runs as a small graph (schedulers/linear.ts).
 */
export interface Scheduler {
  readonly name: SchedulerName;
  /** The UNet's timestep for each step (integers, except Euler with `linspace` spacing or continuous time). */
  readonly timesteps: readonly number[];
  /** Scale of the initial noise: latents = randn × initNoiseSigma. */
  readonly initNoiseSigma: number;
  /** Whether `step(…, stepIndex, …)` needs fresh standard-normal noise of the sample's size. */
  needsNoise(stepIndex: number): boolean;
  /** The UNet's input for this step (Euler-family divide by √(σ²+1); the others return `sample`). */
  scaleModelInput(sample: Float32Array, stepIndex: number): Float32Array;
  /** The UNet's input is modelInputScale(i) · sample (Euler-family 1/√(σ²+1), else 1). */
  modelInputScale(stepIndex: number): number;
  /** Step i as scalar coefficients (pure in i: steps may be asked for in any order). */
  linearStep(stepIndex: number): LinearStep;
  /** How many earlier steps' data predictions a step may read (DPM++ multistep: order − 1; else 0). */
  readonly historyLength: number;
  /** The sample after this step, from the UNet's (guided) output. */
  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise?: Float32Array): Float32Array;
}
