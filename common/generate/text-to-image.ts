/**
 * Text to image, runtime-neutral: diffusers' Stable Diffusion loop (SD 1.x/2.x, SDXL, LCM,
 * SD-Turbo) over any sessions with onnxruntime's shape — onnxruntime-web in a browser or a
 * worker, onnxruntime-node on a server.
 *
 *   prompt ─ tokenizer ─ text_encoder(s) ─┐
 *   seed ─ randn × initNoiseSigma ─ latents ─ [scaleModelInput ─ unet (+ guidance) ─ scheduler.step] × steps
 *                                      └─ latents / scaling_factor ─ vae_decoder ─ RGBA
 *
 * Latents only ever change in a scheduler step, and every session call goes through `hooks.run`.
 * On an engine whose sessions keep tensors on their device (WebGPU), the loop runs there
 * (device/loop.ts): text embeddings, latents and the noise prediction never leave the GPU, each
 * scheduler step runs as a small graph of the same coefficients `scheduler.step` uses here, and
 * the decoded image is the one readback.
 */
import { badInput, FuseloadError } from '../errors.ts';
import { denoiseOnDevice } from './device/loop.ts';
import { defaultCall, DeviceRun, type SessionCall } from './device/run.ts';
import { type DeviceFeeds, type DeviceTensor, isDeviceTensor, type SessionDevice } from './device/types.ts';
import { fixedDim, floatFeed, floatOutput, inputName, intFeed, outputName, timestepFeed, type SessionLike } from './feeds.ts';
import { randn } from './noise.ts';
import { resolveOptions, type GenerateOptions, type ResolvedOptions } from './options.ts';
import { createScheduler } from './schedulers/index.ts';
import type { Scheduler, SchedulerName } from './schedulers/types.ts';
import type { PromptTokenizer } from './tokenizer.ts';
import { guidanceEmbedding, type TextState, textTensor, timeIds, unetInputs, type UnetInputs, unetLayout } from './unet.ts';

export type { SessionLike } from './feeds.ts';
export type { GenerateOptions, StepEvent } from './options.ts';
export type { LoopRole } from './device/run.ts';
export { guidanceEmbedding } from './unet.ts';

export type PartRole = 'text_encoder' | 'text_encoder_2' | 'unet' | 'vae_decoder';

export interface TextToImageParts {
  text_encoder: SessionLike;
  unet: SessionLike;
  vae_decoder: SessionLike;
  /** SDXL's second encoder (CLIP ViT-bigG with projection): its penultimate states join the first's, its `text_embeds` pool. */
  text_encoder_2?: SessionLike;
  tokenizer: PromptTokenizer;
  /** SDXL's `tokenizer_2` (pads with "!"); default: `tokenizer`. */
  tokenizer_2?: PromptTokenizer;
  /** `scheduler/scheduler_config.json`, parsed. */
  schedulerConfig: unknown;
  /** `vae_decoder/config.json` scaling_factor; default 0.18215 (SD 1.x/2.x; SDXL's is 0.13025). */
  vaeScalingFactor?: number;
  /** Pixels per latent cell, 2^(len(block_out_channels) − 1); default 8. */
  vaeScaleFactor?: number;
  /** SDXL (model_index.json `force_zeros_for_empty_prompt`, default true): no negative prompt → zero embeddings. */
  forceZerosForEmptyPrompt?: boolean;
}

export interface GenerateHooks {
  /** Clock for `timings`, in ms. Default `performance.now`. */
  now?: () => number;
  /**
   * Every session call goes through here (tracing, counting). On a device-resident loop `keep` is
   * set: the feeds may hold device tensors, the outputs named in `keep` stay on the device and
   * only those and `read` are computed; the loop's own graphs come through as `scheduler` and
   * `conditioning`. Default: `keep ? session.runDevice(feeds, keep, read) : session.run(feeds)`.
   */
  run?: SessionCall;
}

export interface GenerateResult {
  image: { width: number; height: number; data: Uint8ClampedArray /* RGBA */ };
  seed: number;
  steps: number;
  scheduler: SchedulerName;
  guidanceScale: number;
  /** Whether the prompt or negative prompt was longer than the tokenizer's window and was cut (as diffusers does). */
  promptTruncated: boolean;
  /** UNet calls made: steps with one batch-2 call, 2 × steps with a batch-1 UNet, steps without guidance. */
  unetCalls: number;
  /** Whether the loop kept its tensors on the engine's device (WebGPU) and read back only the image. */
  deviceResident: boolean;
  timings: { textMs: number; denoiseMs: number; decodeMs: number; totalMs: number };
}

export async function generateImage(parts: TextToImageParts, options: GenerateOptions, hooks: GenerateHooks = {}): Promise<GenerateResult> {
  const now = hooks.now ?? defaultNow;
  const call = hooks.run ?? defaultCall;
  const started = now();

  const unet = unetInputs(parts);
  const vaeScaleFactor = parts.vaeScaleFactor ?? 8;
  if (!Number.isInteger(vaeScaleFactor) || vaeScaleFactor < 1) throw badInput('vaeScaleFactor', `must be an integer ≥ 1, got ${vaeScaleFactor}`);
  const scalingFactor = parts.vaeScalingFactor ?? 0.18215;
  if (!Number.isFinite(scalingFactor) || scalingFactor <= 0) throw badInput('vaeScalingFactor', `must be a number > 0, got ${scalingFactor}`);
  const o = resolveOptions(options, {
    schedulerConfig: parts.schedulerConfig,
    vaeScaleFactor,
    latentChannels: unet.channels,
    latentHeight: fixedDim(parts.unet, unet.sample, 2),
    latentWidth: fixedDim(parts.unet, unet.sample, 3),
  });
  const scheduler = createScheduler(parts.schedulerConfig, o.steps, { name: o.scheduler });
  // LCM-distilled UNets take guidance as an embedding (timestep_cond) and run without an unconditional pass.
  const guided = o.guidanceScale > 1 && !unet.timestepCond;
  throwIfAborted(o, 'before the text encoder');

  const device = o.deviceResident ? residentDevice(parts, scheduler) : null;
  const run = device ? new DeviceRun(device, call) : null;
  try {
    const cond = await encodePrompt(parts, o.prompt, call, run);
    const uncond = guided ? await encodeNegative(parts, o, cond, call, run) : undefined;
    const textDone = now();

    const lh = o.height / vaeScaleFactor;
    const lw = o.width / vaeScaleFactor;
    const shape = [1, unet.channels, lh, lw];
    const count = unet.channels * lh * lw;
    const noise = o.latents ?? randn(o.seed, count);

    let latents: Float32Array | DeviceTensor;
    let unetCalls: number;
    if (run) {
      const denoised = await denoiseOnDevice({ parts, unet, shape, cond, uncond, o, scheduler, run, noise, scalingFactor, throwIfAborted: (when) => throwIfAborted(o, when) });
      latents = denoised.vaeInput;
      unetCalls = denoised.unetCalls;
    } else {
      let x: Float32Array = new Float32Array(count);
      for (let i = 0; i < count; i++) x[i] = noise[i] * scheduler.initNoiseSigma;
      const denoiser = new Denoiser(parts, unet, shape, cond, uncond, o, call);
      for (let i = 0; i < scheduler.timesteps.length; i++) {
        throwIfAborted(o, `after ${i} of ${o.steps} steps`);
        const timestep = scheduler.timesteps[i];
        const modelOutput = await denoiser.predict(scheduler.scaleModelInput(x, i), timestep);
        const stepNoise = scheduler.needsNoise(i) ? randn(o.seed, count, 1 + i) : undefined;
        x = scheduler.step(modelOutput, i, x, stepNoise);
        o.onStep?.({ step: i + 1, steps: o.steps, timestep, latents: x });
      }
      latents = x;
      unetCalls = denoiser.calls;
    }
    throwIfAborted(o, `after ${o.steps} steps, before the VAE`);
    const denoised = now();

    const image = await decode(parts, latents, shape, scalingFactor, o, vaeScaleFactor, call, run);
    const done = now();
    return {
      image,
      seed: o.seed,
      steps: o.steps,
      scheduler: scheduler.name,
      guidanceScale: o.guidanceScale,
      promptTruncated: cond.truncated || (uncond?.truncated ?? false),
      unetCalls,
      deviceResident: !!run,
      timings: { textMs: textDone - started, denoiseMs: denoised - textDone, decodeMs: done - denoised, totalMs: done - started },
    };
  } finally {
    // However the image ends (done, aborted, failed), nothing it held stays on the device.
    run?.dispose();
  }
}

/**
 * The device the whole loop can run on: the UNet's and the VAE decoder's (they must share it),
 * when every step is linear (dynamic thresholding is not) — else null, and the loop runs on the CPU.
 */
function residentDevice(parts: TextToImageParts, scheduler: Scheduler): SessionDevice | null {
  const device = parts.unet.device;
  if (!device || !parts.unet.runDevice || parts.vae_decoder.device !== device || !parts.vae_decoder.runDevice) return null;
  for (let i = 0; i < scheduler.timesteps.length; i++) if (scheduler.linearStep(i).threshold) return null;
  return device;
}

/** The session can hand its outputs over on the run's device. */
function onDevice(session: SessionLike, run: DeviceRun | null): run is DeviceRun {
  return !!run && session.device === run.device && !!session.runDevice;
}

// ------------------------------------------------------------------------- text

type Call = SessionCall;

async function encodePrompt(parts: TextToImageParts, prompt: string, call: Call, run: DeviceRun | null): Promise<TextState> {
  if (!parts.text_encoder_2) {
    const { hidden, truncated } = await runEncoder('text_encoder', parts.text_encoder, parts.tokenizer, prompt, call, false, run);
    return { hidden, truncated };
  }
  // SDXL: both encoders' penultimate hidden states, side by side per token; the second one's pool.
  const first = await runEncoder('text_encoder', parts.text_encoder, parts.tokenizer, prompt, call, true, run);
  const second = await runEncoder('text_encoder_2', parts.text_encoder_2, parts.tokenizer_2 ?? parts.tokenizer, prompt, call, true, run);
  const tokens = parts.tokenizer.maxLength;
  if ((parts.tokenizer_2 ?? parts.tokenizer).maxLength !== tokens) {
    throw new FuseloadError('shape-mismatch', 'tokenizer_2: its max length differs from tokenizer\'s');
  }
  if (isDeviceTensor(first.hidden) || isDeviceTensor(second.hidden)) {
    const joined = await run!.concat([textTensor(first.hidden, tokens), textTensor(second.hidden, tokens)], 2, 'float32');
    run!.release(first.hidden, second.hidden);
    return { hidden: joined, pooled: second.pooled, truncated: first.truncated || second.truncated };
  }
  const d1 = first.hidden.length / tokens;
  const d2 = second.hidden.length / tokens;
  const hidden = new Float32Array(tokens * (d1 + d2));
  for (let t = 0; t < tokens; t++) {
    hidden.set(first.hidden.subarray(t * d1, (t + 1) * d1), t * (d1 + d2));
    hidden.set(second.hidden.subarray(t * d2, (t + 1) * d2), t * (d1 + d2) + d1);
  }
  return { hidden, pooled: second.pooled, truncated: first.truncated || second.truncated };
}

async function encodeNegative(parts: TextToImageParts, o: ResolvedOptions, cond: TextState, call: Call, run: DeviceRun | null): Promise<TextState> {
  if (parts.text_encoder_2 && o.negativePrompt === undefined && (parts.forceZerosForEmptyPrompt ?? true)) {
    return { hidden: new Float32Array(elements(cond.hidden)), pooled: cond.pooled && new Float32Array(elements(cond.pooled)), truncated: false };
  }
  return encodePrompt(parts, o.negativePrompt ?? '', call, run);
}

function elements(t: Float32Array | DeviceTensor): number {
  return isDeviceTensor(t) ? t.dims.reduce((a, b) => a * b, 1) : t.length;
}

async function runEncoder(
  role: 'text_encoder' | 'text_encoder_2',
  session: SessionLike,
  tokenizer: PromptTokenizer,
  prompt: string,
  call: Call,
  penultimate: boolean,
  run: DeviceRun | null,
): Promise<{ hidden: Float32Array | DeviceTensor; pooled?: Float32Array | DeviceTensor; truncated: boolean }> {
  const ids = inputName(session, role, 'input_ids', 0);
  const declared = fixedDim(session, ids, 1);
  if (declared !== undefined && declared !== tokenizer.maxLength) {
    throw new FuseloadError('shape-mismatch', `${role}: takes ${declared} tokens, the tokenizer makes ${tokenizer.maxLength}`);
  }
  const encoding = tokenizer.encode(prompt);
  const feeds: DeviceFeeds = { [ids]: intFeed(session, role, ids, encoding.ids, [1, tokenizer.maxLength]) };
  // CLIP in diffusers runs without a mask (all ones): feed that where an export asks for one.
  if (session.inputNames.includes('attention_mask')) {
    feeds.attention_mask = intFeed(session, role, 'attention_mask', new Int32Array(tokenizer.maxLength).fill(1), [1, tokenizer.maxLength]);
  }
  // The penultimate layer (SDXL) is the highest-but-one `hidden_states.N`; without those, last_hidden_state.
  const layers = session.outputNames
    .map((n) => /^hidden_states\.(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const name = penultimate && layers.length >= 2 ? `hidden_states.${layers[layers.length - 2]}` : outputName(session, role, 'last_hidden_state');
  const pooledName = role === 'text_encoder_2' ? (session.outputNames.includes('text_embeds') ? 'text_embeds' : session.outputNames[0]) : undefined;

  if (onDevice(session, run)) {
    // The states stay on the device for every UNet call; only these outputs are computed.
    const outputs = await run.run(role, session, feeds, pooledName && pooledName !== name ? [name, pooledName] : [name]);
    const hidden = outputs[name];
    const pooled = pooledName === undefined ? undefined : outputs[pooledName];
    const values = isDeviceTensor(hidden) ? hidden.dims.reduce((a, b) => a * b, 1) : hidden.data.length;
    if (values % tokenizer.maxLength !== 0) {
      throw new FuseloadError('shape-mismatch', `${role}: output "${name}" has ${values} values, not a multiple of ${tokenizer.maxLength} tokens`);
    }
    const asState = (t: typeof hidden) => (isDeviceTensor(t) ? t : floatOutput({ t }, role, 't').values);
    return { hidden: asState(hidden), pooled: pooled && asState(pooled), truncated: encoding.truncated };
  }

  const outputs = await call(role, session, feeds);
  const { values } = floatOutput(outputs, role, name);
  if (values.length % tokenizer.maxLength !== 0) {
    throw new FuseloadError('shape-mismatch', `${role}: output "${name}" has ${values.length} values, not a multiple of ${tokenizer.maxLength} tokens`);
  }
  const pooled = pooledName === undefined ? undefined : floatOutput(outputs, role, pooledName).values;
  return { hidden: values, pooled, truncated: encoding.truncated };
}

// ------------------------------------------------------------------------- UNet

/** One UNet evaluation per step, with classifier-free guidance as one batch-2 call or two batch-1 calls. */
class Denoiser {
  calls = 0;
  readonly #count: number;
  readonly #timeIds: Float32Array;
  readonly #guidanceEmbedding: Float32Array | undefined;
  readonly #static = new Map<string, DeviceFeeds>();

  constructor(
    readonly parts: TextToImageParts,
    readonly unet: UnetInputs,
    readonly shape: number[],
    readonly cond: TextState,
    readonly uncond: TextState | undefined,
    readonly o: ResolvedOptions,
    readonly call: Call,
  ) {
    this.#count = shape[1] * shape[2] * shape[3];
    this.#timeIds = timeIds(o.width, o.height);
    this.#guidanceEmbedding = unet.timestepCond && guidanceEmbedding(o.guidanceScale - 1, unet.timestepCond.dim);
  }

  async predict(input: Float32Array, timestep: number): Promise<Float32Array> {
    let both: Float32Array;
    switch (unetLayout(this.unet, !!this.uncond)) {
      case 'one':
        return this.#run([input], [this.cond], timestep);
      case 'first':
        return (await this.#run([input, input], [this.cond, this.cond], timestep)).subarray(0, this.#count);
      case 'two': {
        const u = await this.#run([input], [this.uncond!], timestep);
        const c = await this.#run([input], [this.cond], timestep);
        both = new Float32Array(2 * this.#count);
        both.set(u);
        both.set(c, this.#count);
        break;
      }
      case 'pair':
        both = await this.#run([input, input], [this.uncond!, this.cond], timestep);
        break;
    }
    const g = this.o.guidanceScale;
    const out = new Float32Array(this.#count);
    for (let i = 0; i < this.#count; i++) {
      const u = both[i];
      out[i] = u + g * (both[this.#count + i] - u);
    }
    return out;
  }

  async #run(samples: Float32Array[], texts: TextState[], timestep: number): Promise<Float32Array> {
    const s = this.parts.unet;
    const b = samples.length;
    const [, c, h, w] = this.shape;
    const feeds: DeviceFeeds = {
      ...this.#conditioning(texts),
      [this.unet.sample]: floatFeed(s, 'unet', this.unet.sample, concat(samples), [b, c, h, w]),
      [this.unet.timestep]: timestepFeed(s, 'unet', this.unet.timestep, timestep, b),
    };
    const outputs = await this.call('unet', s, feeds);
    this.calls++;
    return floatOutput(outputs, 'unet', this.unet.out, b * this.#count).values;
  }

  /** The inputs that stay the same every step (text, pooled text, time ids, guidance embedding), built once per batch layout. */
  #conditioning(texts: TextState[]): DeviceFeeds {
    const key = texts.map((t) => (t === this.cond ? 'c' : 'u')).join('');
    const cached = this.#static.get(key);
    if (cached) return cached;
    const s = this.parts.unet;
    const b = texts.length;
    const tokens = this.parts.tokenizer.maxLength;
    const hidden = concat(texts.map((t) => cpu(t.hidden)));
    const feeds: DeviceFeeds = { [this.unet.hidden]: floatFeed(s, 'unet', this.unet.hidden, hidden, [b, tokens, hidden.length / b / tokens]) };
    if (this.unet.timestepCond && this.#guidanceEmbedding) {
      const e = this.#guidanceEmbedding;
      feeds[this.unet.timestepCond.name] = floatFeed(s, 'unet', this.unet.timestepCond.name, concat(texts.map(() => e)), [b, e.length]);
    }
    if (this.unet.textEmbeds) {
      const pooled = texts.map((t) => t.pooled);
      if (pooled.some((p) => !p)) throw new FuseloadError('unsupported', 'text_encoder_2: gave no pooled text_embeds for the UNet');
      const values = pooled.map((p) => cpu(p!));
      feeds[this.unet.textEmbeds] = floatFeed(s, 'unet', this.unet.textEmbeds, concat(values), [b, values[0].length]);
    }
    if (this.unet.timeIds) {
      feeds[this.unet.timeIds] = floatFeed(s, 'unet', this.unet.timeIds, concat(texts.map(() => this.#timeIds)), [b, 6]);
    }
    this.#static.set(key, feeds);
    return feeds;
  }
}

// ------------------------------------------------------------------------- VAE

async function decode(
  parts: TextToImageParts,
  latents: Float32Array | DeviceTensor,
  shape: number[],
  scalingFactor: number,
  o: ResolvedOptions,
  vaeScaleFactor: number,
  call: Call,
  run: DeviceRun | null,
): Promise<GenerateResult['image']> {
  const s = parts.vae_decoder;
  const input = inputName(s, 'vae_decoder', 'latent_sample', 0);
  const name = outputName(s, 'vae_decoder', 'sample');
  let outputs: DeviceFeeds;
  if (isDeviceTensor(latents)) {
    // Scaled by 1/scaling_factor in the last step's graph already; the image is the one readback.
    outputs = await run!.run('vae_decoder', s, { [input]: latents }, [], [name]);
    run!.release(latents);
  } else {
    const scaled = new Float32Array(latents.length);
    for (let i = 0; i < latents.length; i++) scaled[i] = latents[i] / scalingFactor;
    outputs = await call('vae_decoder', s, { [input]: floatFeed(s, 'vae_decoder', input, scaled, shape) });
  }
  const { values, dims } = floatOutput(outputs, 'vae_decoder', name, 3 * o.width * o.height);
  if (dims.length === 4 && (dims[2] !== o.height || dims[3] !== o.width)) {
    throw new FuseloadError(
      'shape-mismatch',
      `vae_decoder: made ${dims[3]}×${dims[2]} from ${shape[3]}×${shape[2]} latents, expected ${o.width}×${o.height} (vaeScaleFactor ${vaeScaleFactor})`,
    );
  }
  return { width: o.width, height: o.height, data: toRgba(values, o.width, o.height) };
}

/** [1, 3, H, W] in [−1, 1] → RGBA bytes: clamp((x + 1) / 2, 0, 1) · 255, rounded. */
export function toRgba(chw: Float32Array, width: number, height: number): Uint8ClampedArray {
  const plane = width * height;
  const out = new Uint8ClampedArray(plane * 4);
  for (let ch = 0; ch < 3; ch++) {
    const base = ch * plane;
    for (let i = 0, o = ch; i < plane; i++, o += 4) {
      const v = chw[base + i] / 2 + 0.5;
      out[o] = Math.round((v < 0 ? 0 : v > 1 ? 1 : v) * 255);
    }
  }
  for (let o = 3; o < out.length; o += 4) out[o] = 255;
  return out;
}

// ------------------------------------------------------------------------- helpers

function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A prompt state the CPU loop holds (never a device tensor there). */
function cpu(t: Float32Array | DeviceTensor): Float32Array {
  if (isDeviceTensor(t)) throw new FuseloadError('engine', 'generate: a device tensor reached the CPU loop');
  return t;
}

function throwIfAborted(o: ResolvedOptions, when: string): void {
  if (o.signal?.aborted) throw new FuseloadError('aborted', `generate: aborted ${when}`, { cause: o.signal.reason });
}

function defaultNow(): number {
  return typeof performance !== 'undefined' ? performance.now() : Date.now();
}
