/**
 * The denoising loop with every tensor on the engine's device (WebGPU):
 *
 *   noise ─(upload, once)─ [x = σ₀·noise, model_in = s₀·x] ─┐
 *   text states (left there by the encoder) ─ batched once ─┤
 *        ┌──────────────────────────────────────────────────┘
 *        └─ [unet(model_in, t, text) → u] ─ [guidance + scheduler step + next model_in] × steps ─ vae_in
 *
 * Each bracket is one session run on the device; a step's scalars (guidance, the scheduler's
 * coefficients, the next input scale) go in as one small float vector, its tensors stay there.
 * The VAE's output, read back by the caller, is the only copy from the device.
 */
import { FuseloadError } from '../../errors.ts';
import { inputName, timestepFeed, type SessionLike } from '../feeds.ts';
import { randn } from '../noise.ts';
import type { ResolvedOptions } from '../options.ts';
import type { Scheduler } from '../schedulers/types.ts';
import type { TextToImageParts } from '../text-to-image.ts';
import { guidanceEmbedding, pooledTensor, type TextState, textTensor, timeIds, unetLayout, type UnetInputs, type UnetLayout } from '../unet.ts';
import type { DeviceRun, LoopTensor } from './run.ts';
import { type FloatType, STEP, stepGraph, type StepGraph, stepGraphKey, type StepGraphSpec, stepInputs, type StepValues } from './step-graph.ts';
import type { DeviceFeeds, DeviceTensor } from './types.ts';

export interface DeviceDenoise {
  parts: TextToImageParts;
  unet: UnetInputs;
  /** [1, C, H, W] of the latents. */
  shape: number[];
  cond: TextState;
  uncond: TextState | undefined;
  o: ResolvedOptions;
  scheduler: Scheduler;
  run: DeviceRun;
  /** The initial noise, standard normal. */
  noise: Float32Array;
  scalingFactor: number;
  throwIfAborted(when: string): void;
}

/** Graph specs to graphs: pure, so made once per spec for the page or process. */
const graphs = new Map<string, StepGraph>();

/** The element type a session declares for an input, as the device graphs make it. */
export function deviceFloatType(session: SessionLike, role: string, input: string): FloatType {
  const type = session.inputTypes?.[input] ?? 'float32';
  if (type === 'float32' || type === 'float16') return type;
  throw new FuseloadError('unsupported', `${role}: input "${input}" is ${type}; this loop feeds float32 or float16`);
}

/** Runs the steps on the device; returns the VAE decoder's input (latents / scaling factor), held by `run`. */
export async function denoiseOnDevice(d: DeviceDenoise): Promise<{ vaeInput: DeviceTensor; unetCalls: number }> {
  const { parts, unet, shape, o, scheduler, run } = d;
  const s = parts.unet;
  const layout = unetLayout(unet, !!d.uncond);
  const modelBatch = layout === 'first' || layout === 'pair' ? 2 : 1;
  const sampleType = deviceFloatType(s, 'unet', unet.sample);
  const vaeType = deviceFloatType(parts.vae_decoder, 'vae_decoder', inputName(parts.vae_decoder, 'vae_decoder', 'latent_sample', 0));
  const conditioning = await unetConditioning(d, layout);
  const count = shape[1] * shape[2] * shape[3];
  const steps = scheduler.timesteps.length;

  // The initial noise goes up once; the first graph scales it and makes the first UNet input.
  let out = await runStep(
    run,
    { unet: 'none', unetType: 'float32', history: 0, noise: false, clip: false, keepSample: true, keepDenoised: false, next: { batch: modelBatch, type: sampleType } },
    { [STEP.sample]: { type: 'float32', dims: shape, data: d.noise } },
    { initScale: scheduler.initNoiseSigma, guidance: o.guidanceScale, nextScale: scheduler.modelInputScale(0) },
  );
  let x = out[STEP.out.sample] as DeviceTensor;
  let modelIn = out[STEP.out.next] as DeviceTensor;
  const history: DeviceTensor[] = [];
  let unetCalls = 0;

  for (let i = 0; i < steps; i++) {
    d.throwIfAborted(`after ${i} of ${o.steps} steps`);
    const timestep = scheduler.timesteps[i];
    const predictions: DeviceTensor[] = [];
    for (const feeds of conditioning) {
      const outputs = await run.run('unet', s, { ...feeds, [unet.sample]: modelIn, [unet.timestep]: timestepFeed(s, 'unet', unet.timestep, timestep, modelBatch) }, [unet.out]);
      unetCalls++;
      predictions.push(outputs[unet.out] as DeviceTensor);
    }
    run.release(modelIn);

    const c = scheduler.linearStep(i);
    const last = i === steps - 1;
    const keepDenoised = scheduler.historyLength > 0 && !last;
    const spec: StepGraphSpec = {
      unet: layout,
      unetType: floatType(predictions[0]),
      history: c.history.length,
      noise: c.noise !== 0,
      clip: c.clip !== undefined,
      keepSample: !last,
      keepDenoised,
      ...(last ? { vae: { type: vaeType } } : { next: { batch: modelBatch, type: sampleType } }),
    };
    const feeds: DeviceFeeds = { [STEP.sample]: x };
    if (layout === 'two') [feeds[STEP.unet[1]], feeds[STEP.unet[2]]] = predictions;
    else feeds[STEP.unet[0]] = predictions[0];
    c.history.forEach((_, j) => (feeds[STEP.history(j)] = history[j]));
    // Per-step noise comes from the same counter-based stream as on the CPU, uploaded as it is made.
    if (spec.noise) feeds[STEP.noise] = { type: 'float32', dims: shape, data: randn(o.seed, count, 1 + i) };
    out = await runStep(run, spec, feeds, {
      step: c,
      guidance: o.guidanceScale,
      ...(last ? { outScale: d.scalingFactor } : { nextScale: scheduler.modelInputScale(i + 1) }),
    });
    run.release(x, ...predictions);
    if (keepDenoised) {
      history.unshift(out[STEP.out.denoised] as DeviceTensor);
      while (history.length > scheduler.historyLength) run.release(history.pop());
    }
    x = out[STEP.out.sample] as DeviceTensor;
    modelIn = out[STEP.out.next] as DeviceTensor;
    o.onStep?.({ step: i + 1, steps: o.steps, timestep });
  }
  run.release(...history);
  for (const feeds of conditioning) run.release(...Object.values(feeds));
  return { vaeInput: out[STEP.out.vae] as DeviceTensor, unetCalls };
}

async function runStep(run: DeviceRun, spec: StepGraphSpec, feeds: DeviceFeeds, values: StepValues): Promise<DeviceFeeds> {
  const key = stepGraphKey(spec);
  let graph = graphs.get(key);
  if (!graph) graphs.set(key, (graph = stepGraph(spec)));
  const session = await run.graph(key, () => graph.graph);
  const keep: string[] = [];
  if (spec.keepSample) keep.push(STEP.out.sample);
  if (spec.keepDenoised) keep.push(STEP.out.denoised);
  if (spec.next) keep.push(STEP.out.next);
  if (spec.vae) keep.push(STEP.out.vae);
  return run.run('scheduler', session, { ...feeds, ...stepInputs(graph, values) }, keep);
}

/**
 * The UNet's inputs that stay the same every step, per call of a step, batched on the device once:
 * text states, SDXL's pooled text and time ids, LCM's guidance embedding.
 */
async function unetConditioning(d: DeviceDenoise, layout: UnetLayout): Promise<DeviceFeeds[]> {
  const { parts, unet, cond, uncond, o, run } = d;
  const s = parts.unet;
  const tokens = parts.tokenizer.maxLength;
  const calls: TextState[][] = layout === 'one' ? [[cond]] : layout === 'first' ? [[cond, cond]] : layout === 'pair' ? [[uncond!, cond]] : [[uncond!], [cond]];
  const hiddenType = deviceFloatType(s, 'unet', unet.hidden);
  const result: DeviceFeeds[] = [];
  for (const texts of calls) {
    const feeds: DeviceFeeds = { [unet.hidden]: await run.concat(texts.map((t) => textTensor(t.hidden, tokens)), 0, hiddenType) };
    if (unet.timestepCond) {
      const e = guidanceEmbedding(o.guidanceScale - 1, unet.timestepCond.dim);
      feeds[unet.timestepCond.name] = await run.concat(texts.map((): LoopTensor => ({ type: 'float32', dims: [1, e.length], data: e })), 0, deviceFloatType(s, 'unet', unet.timestepCond.name));
    }
    if (unet.textEmbeds) {
      if (texts.some((t) => !t.pooled)) throw new FuseloadError('unsupported', 'text_encoder_2: gave no pooled text_embeds for the UNet');
      feeds[unet.textEmbeds] = await run.concat(texts.map((t) => pooledTensor(t.pooled!)), 0, deviceFloatType(s, 'unet', unet.textEmbeds));
    }
    if (unet.timeIds) {
      const ids = timeIds(o.width, o.height);
      feeds[unet.timeIds] = await run.concat(texts.map((): LoopTensor => ({ type: 'float32', dims: [1, 6], data: ids })), 0, deviceFloatType(s, 'unet', unet.timeIds));
    }
    result.push(feeds);
  }
  // The encoders' own outputs are batched copies now (or are those very tensors, still in use).
  const inUse = new Set(result.flatMap((f) => Object.values(f)));
  for (const t of [cond, uncond]) if (t) for (const v of [t.hidden, t.pooled]) if (!inUse.has(v as DeviceTensor)) run.release(v);
  return result;
}

function floatType(t: DeviceTensor): FloatType {
  if (t.type === 'float32' || t.type === 'float16') return t.type;
  throw new FuseloadError('unsupported', `unet: its output is ${t.type}; expected float32 or float16`);
}
