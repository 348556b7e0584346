/**
 * A scheduler step as scalar coefficients. Every deterministic step of these schedulers is
 * linear in its tensors once its scalars are known, so each scheduler says step i as
 *
 *   d  = clip(p·x + q·ε)                                   the data prediction x̂₀ ("denoised")
 *   x' = a·x + b·d + c·ε + Σⱼ hⱼ·d₍ᵢ₋₁₋ⱼ₎ + e·noise          the sample after the step
 *
 * with x the sample, ε the (guided) model output and d₍ᵢ₋₁₋ⱼ₎ the data predictions of earlier
 * steps (DPM-Solver++ multistep). `applyLinearStep` is that recipe on the CPU; the same numbers
 * run as a small graph on a device (common/generate/device/step-graph.ts), so both are one recipe.
 * Only Imagen's dynamic thresholding (a quantile of d) is not linear: a step with `threshold`
 * runs on the CPU alone.
 */
import { clipSample, requireLength, thresholdSample } from './schedule.ts';

export interface LinearStep {
  /** d = p·x + q·ε. */
  denoise: { sample: number; model: number };
  /** clip_sample: d ← clamp(d, −clip, clip). */
  clip?: number;
  /** Dynamic thresholding of d (not linear: CPU only). */
  threshold?: { ratio: number; max: number };
  /** a, b, c of x' = a·x + b·d + c·ε + … */
  sample: number;
  denoised: number;
  model: number;
  /** hⱼ: the coefficients of the previous steps' d, newest first. */
  history: readonly number[];
  /** e: the fresh standard-normal noise's coefficient (0: the step takes none). */
  noise: number;
}

/** A step that uses neither d nor anything but x and ε (the coefficient form's defaults). */
export function linearStep(fields: Partial<LinearStep> & Pick<LinearStep, 'sample'>): LinearStep {
  return { denoise: { sample: 0, model: 0 }, denoised: 0, model: 0, history: [], noise: 0, ...fields };
}

/**
 * The CPU recipe of one step: x' and d (kept by multistep schedulers for the next steps).
 * `history` holds the earlier steps' d, newest first, at least as many as the step reads.
 */
export function applyLinearStep(
  step: LinearStep,
  sample: Float32Array,
  model: Float32Array,
  history: readonly Float32Array[] = [],
  noise?: Float32Array,
): { next: Float32Array; denoised: Float32Array } {
  const n = sample.length;
  requireLength('model output', model, n);
  const { sample: p, model: q } = step.denoise;
  const denoised = new Float32Array(n);
  for (let i = 0; i < n; i++) denoised[i] = p * sample[i] + q * model[i];
  if (step.threshold) thresholdSample(denoised, step.threshold.ratio, step.threshold.max);
  else if (step.clip !== undefined) clipSample(denoised, step.clip);
  if (history.length < step.history.length) throw new RangeError(`scheduler step: reads ${step.history.length} earlier steps, has ${history.length}`);
  if (step.noise !== 0) {
    if (!noise) throw new RangeError('scheduler step: needs noise');
    requireLength('noise', noise, n);
  }
  const { sample: a, denoised: b, model: c, noise: e } = step;
  const h = step.history;
  const next = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = a * sample[i] + b * denoised[i] + c * model[i];
    for (let j = 0; j < h.length; j++) v += h[j] * history[j][i];
    if (e !== 0) v += e * noise![i];
    next[i] = v;
  }
  return { next, denoised };
}
