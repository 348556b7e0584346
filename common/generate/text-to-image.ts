/**
 * Text to image, runtime-neutral: diffusers' Stable Diffusion loop (SD 1.x/2.x, SDXL, LCM,
 * SD-Turbo) over any sessions with onnxruntime's shape — onnxruntime-web in a browser or a
 * worker, onnxruntime-node on a server.
 *
 *   prompt ─ tokenizer ─ text_encoder(s) ─┐
 *   seed ─ randn × initNoiseSigma ─ latents ─ [scaleModelInput ─ unet (+ guidance) ─ scheduler.step] × steps
 *                                      └─ latents / scaling_factor ─ vae_decoder ─ RGBA
 *
 * Latents only ever change in `scheduler.step`, and every session call goes through `hooks.run`,
 * so an engine that keeps tensors on its device can take over those two places later.
 */
import { badInput, FuseloadError } from '../errors.ts';
import type { Feeds } from '../pipeline.ts';
import { fixedDim, floatFeed, floatOutput, inputName, intFeed, outputName, timestepFeed, type SessionLike } from './feeds.ts';
import { randn } from './noise.ts';
import { resolveOptions, type GenerateOptions, type ResolvedOptions } from './options.ts';
import { createScheduler } from './schedulers/index.ts';
import type { Scheduler, SchedulerName } from './schedulers/types.ts';
import type { PromptTokenizer } from './tokenizer.ts';

export type { SessionLike } from './feeds.ts';
export type { GenerateOptions, StepEvent } from './options.ts';

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
  /** Every session call goes through here (tracing, device-resident tensors). Default `session.run(feeds)`. */
  run?: (role: PartRole, session: SessionLike, feeds: Feeds) => Promise<Feeds>;
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
  timings: { textMs: number; denoiseMs: number; decodeMs: number; totalMs: number };
}

interface TextState {
  /** [1, L, D] per prompt. */
  hidden: Float32Array;
  /** SDXL's pooled embedding [1, P]. */
  pooled?: Float32Array;
  truncated: boolean;
}

export async function generateImage(parts: TextToImageParts, options: GenerateOptions, hooks: GenerateHooks = {}): Promise<GenerateResult> {
  const now = hooks.now ?? defaultNow;
  const call = hooks.run ?? ((_role, session, feeds) => session.run(feeds));
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

  const cond = await encodePrompt(parts, o.prompt, call);
  const uncond = guided ? await encodeNegative(parts, o, cond, call) : undefined;
  const textDone = now();

  const lh = o.height / vaeScaleFactor;
  const lw = o.width / vaeScaleFactor;
  const shape = [1, unet.channels, lh, lw];
  const count = unet.channels * lh * lw;
  const noise = o.latents ?? randn(o.seed, count);
  let latents: Float32Array = new Float32Array(count);
  for (let i = 0; i < count; i++) latents[i] = noise[i] * scheduler.initNoiseSigma;

  const denoiser = new Denoiser(parts, unet, shape, cond, uncond, o, call);
  for (let i = 0; i < scheduler.timesteps.length; i++) {
    throwIfAborted(o, `after ${i} of ${o.steps} steps`);
    const timestep = scheduler.timesteps[i];
    const modelOutput = await denoiser.predict(scheduler.scaleModelInput(latents, i), timestep);
    const stepNoise = scheduler.needsNoise(i) ? randn(o.seed, count, 1 + i) : undefined;
    latents = scheduler.step(modelOutput, i, latents, stepNoise);
    o.onStep?.({ step: i + 1, steps: o.steps, timestep, latents });
  }
  throwIfAborted(o, `after ${o.steps} steps, before the VAE`);
  const denoised = now();

  const image = await decode(parts, latents, shape, scalingFactor, o, vaeScaleFactor, call);
  const done = now();
  return {
    image,
    seed: o.seed,
    steps: o.steps,
    scheduler: scheduler.name,
    guidanceScale: o.guidanceScale,
    promptTruncated: cond.truncated || (uncond?.truncated ?? false),
    unetCalls: denoiser.calls,
    timings: { textMs: textDone - started, denoiseMs: denoised - textDone, decodeMs: done - denoised, totalMs: done - started },
  };
}

// ------------------------------------------------------------------------- text

type Call = NonNullable<GenerateHooks['run']>;

async function encodePrompt(parts: TextToImageParts, prompt: string, call: Call): Promise<TextState> {
  if (!parts.text_encoder_2) {
    const { hidden, truncated } = await runEncoder('text_encoder', parts.text_encoder, parts.tokenizer, prompt, call, false);
    return { hidden, truncated };
  }
  // SDXL: both encoders' penultimate hidden states, side by side per token; the second one's pool.
  const first = await runEncoder('text_encoder', parts.text_encoder, parts.tokenizer, prompt, call, true);
  const second = await runEncoder('text_encoder_2', parts.text_encoder_2, parts.tokenizer_2 ?? parts.tokenizer, prompt, call, true);
  const tokens = parts.tokenizer.maxLength;
  if ((parts.tokenizer_2 ?? parts.tokenizer).maxLength !== tokens) {
    throw new FuseloadError('shape-mismatch', 'tokenizer_2: its max length differs from tokenizer\'s');
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

async function encodeNegative(parts: TextToImageParts, o: ResolvedOptions, cond: TextState, call: Call): Promise<TextState> {
  if (parts.text_encoder_2 && o.negativePrompt === undefined && (parts.forceZerosForEmptyPrompt ?? true)) {
    return { hidden: new Float32Array(cond.hidden.length), pooled: cond.pooled && new Float32Array(cond.pooled.length), truncated: false };
  }
  return encodePrompt(parts, o.negativePrompt ?? '', call);
}

async function runEncoder(
  role: 'text_encoder' | 'text_encoder_2',
  session: SessionLike,
  tokenizer: PromptTokenizer,
  prompt: string,
  call: Call,
  penultimate: boolean,
): Promise<{ hidden: Float32Array; pooled?: Float32Array; truncated: boolean }> {
  const ids = inputName(session, role, 'input_ids', 0);
  const declared = fixedDim(session, ids, 1);
  if (declared !== undefined && declared !== tokenizer.maxLength) {
    throw new FuseloadError('shape-mismatch', `${role}: takes ${declared} tokens, the tokenizer makes ${tokenizer.maxLength}`);
  }
  const encoding = tokenizer.encode(prompt);
  const feeds: Feeds = { [ids]: intFeed(session, role, ids, encoding.ids, [1, tokenizer.maxLength]) };
  // CLIP in diffusers runs without a mask (all ones): feed that where an export asks for one.
  if (session.inputNames.includes('attention_mask')) {
    feeds.attention_mask = intFeed(session, role, 'attention_mask', new Int32Array(tokenizer.maxLength).fill(1), [1, tokenizer.maxLength]);
  }
  const outputs = await call(role, session, feeds);
  // The penultimate layer (SDXL) is the highest-but-one `hidden_states.N`; without those, last_hidden_state.
  const layers = session.outputNames
    .map((n) => /^hidden_states\.(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const name = penultimate && layers.length >= 2 ? `hidden_states.${layers[layers.length - 2]}` : outputName(session, role, 'last_hidden_state');
  const { values } = floatOutput(outputs, role, name);
  if (values.length % tokenizer.maxLength !== 0) {
    throw new FuseloadError('shape-mismatch', `${role}: output "${name}" has ${values.length} values, not a multiple of ${tokenizer.maxLength} tokens`);
  }
  let pooled: Float32Array | undefined;
  if (role === 'text_encoder_2') {
    const pooledName = session.outputNames.includes('text_embeds') ? 'text_embeds' : session.outputNames[0];
    pooled = floatOutput(outputs, role, pooledName).values;
  }
  return { hidden: values, pooled, truncated: encoding.truncated };
}

// ------------------------------------------------------------------------- UNet

interface UnetInputs {
  sample: string;
  timestep: string;
  hidden: string;
  out: string;
  channels: number;
  /** Fixed batch of the graph, when declared. */
  batch: number | undefined;
  timestepCond?: { name: string; dim: number };
  textEmbeds?: string;
  timeIds?: string;
}

function unetInputs(parts: TextToImageParts): UnetInputs {
  const s = parts.unet;
  const sample = inputName(s, 'unet', 'sample', 0);
  const known = new Set([sample, inputName(s, 'unet', 'timestep', 1), inputName(s, 'unet', 'encoder_hidden_states', 2)]);
  for (const extra of ['timestep_cond', 'text_embeds', 'time_ids']) if (s.inputNames.includes(extra)) known.add(extra);
  const unknown = s.inputNames.filter((n) => !known.has(n));
  if (unknown.length) throw new FuseloadError('unsupported', `unet: input "${unknown[0]}" is not one this loop feeds`);
  const batch = fixedDim(s, sample, 0);
  if (batch !== undefined && batch !== 1 && batch !== 2) {
    throw new FuseloadError('unsupported', `unet: its graph fixes the batch at ${batch}; the loop runs batch 1 or 2`);
  }
  if (s.inputNames.includes('text_embeds') && !parts.text_encoder_2) {
    throw new FuseloadError('unsupported', 'unet: takes text_embeds (SDXL) but the pipeline has no text_encoder_2');
  }
  return {
    sample,
    timestep: inputName(s, 'unet', 'timestep', 1),
    hidden: inputName(s, 'unet', 'encoder_hidden_states', 2),
    out: outputName(s, 'unet', 'out_sample'),
    channels: fixedDim(s, sample, 1) ?? 4,
    batch,
    timestepCond: s.inputNames.includes('timestep_cond') ? { name: 'timestep_cond', dim: fixedDim(s, 'timestep_cond', 1) ?? 256 } : undefined,
    textEmbeds: s.inputNames.includes('text_embeds') ? 'text_embeds' : undefined,
    timeIds: s.inputNames.includes('time_ids') ? 'time_ids' : undefined,
  };
}

/** One UNet evaluation per step, with classifier-free guidance as one batch-2 call or two batch-1 calls. */
class Denoiser {
  calls = 0;
  readonly #count: number;
  readonly #timeIds: Float32Array;
  readonly #guidanceEmbedding: Float32Array | undefined;
  readonly #static = new Map<string, Feeds>();

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
    // SDXL micro-conditioning: original size, crop top-left, target size (diffusers' defaults: the output size, no crop).
    this.#timeIds = Float32Array.from([o.height, o.width, 0, 0, o.height, o.width]);
    this.#guidanceEmbedding = unet.timestepCond && guidanceEmbedding(o.guidanceScale - 1, unet.timestepCond.dim);
  }

  async predict(input: Float32Array, timestep: number): Promise<Float32Array> {
    if (!this.uncond) {
      if (this.unet.batch === 2) return (await this.#run([input, input], [this.cond, this.cond], timestep)).subarray(0, this.#count);
      return this.#run([input], [this.cond], timestep);
    }
    let both: Float32Array;
    if (this.unet.batch === 1) {
      const u = await this.#run([input], [this.uncond], timestep);
      const c = await this.#run([input], [this.cond], timestep);
      both = new Float32Array(2 * this.#count);
      both.set(u);
      both.set(c, this.#count);
    } else {
      both = await this.#run([input, input], [this.uncond, this.cond], timestep);
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
    const feeds: Feeds = {
      ...this.#conditioning(texts),
      [this.unet.sample]: floatFeed(s, 'unet', this.unet.sample, concat(samples), [b, c, h, w]),
      [this.unet.timestep]: timestepFeed(s, 'unet', this.unet.timestep, timestep, b),
    };
    const outputs = await this.call('unet', s, feeds);
    this.calls++;
    return floatOutput(outputs, 'unet', this.unet.out, b * this.#count).values;
  }

  /** The inputs that stay the same every step (text, pooled text, time ids, guidance embedding), built once per batch layout. */
  #conditioning(texts: TextState[]): Feeds {
    const key = texts.map((t) => (t === this.cond ? 'c' : 'u')).join('');
    const cached = this.#static.get(key);
    if (cached) return cached;
    const s = this.parts.unet;
    const b = texts.length;
    const tokens = this.parts.tokenizer.maxLength;
    const hidden = concat(texts.map((t) => t.hidden));
    const feeds: Feeds = { [this.unet.hidden]: floatFeed(s, 'unet', this.unet.hidden, hidden, [b, tokens, hidden.length / b / tokens]) };
    if (this.unet.timestepCond && this.#guidanceEmbedding) {
      const e = this.#guidanceEmbedding;
      feeds[this.unet.timestepCond.name] = floatFeed(s, 'unet', this.unet.timestepCond.name, concat(texts.map(() => e)), [b, e.length]);
    }
    if (this.unet.textEmbeds) {
      const pooled = texts.map((t) => t.pooled);
      if (pooled.some((p) => !p)) throw new FuseloadError('unsupported', 'text_encoder_2: gave no pooled text_embeds for the UNet');
      feeds[this.unet.textEmbeds] = floatFeed(s, 'unet', this.unet.textEmbeds, concat(pooled as Float32Array[]), [b, pooled[0]!.length]);
    }
    if (this.unet.timeIds) {
      feeds[this.unet.timeIds] = floatFeed(s, 'unet', this.unet.timeIds, concat(texts.map(() => this.#timeIds)), [b, 6]);
    }
    this.#static.set(key, feeds);
    return feeds;
  }
}

/** LCM's guidance embedding of w (diffusers' get_guidance_scale_embedding): sin/cos of 1000·w at `dim` frequencies. */
export function guidanceEmbedding(w: number, dim: number): Float32Array {
  const half = Math.floor(dim / 2);
  const scale = Math.log(10000) / (half - 1);
  const out = new Float32Array(dim); // an odd dim is zero-padded
  for (let i = 0; i < half; i++) {
    const x = w * 1000 * Math.exp(-scale * i);
    out[i] = Math.sin(x);
    out[half + i] = Math.cos(x);
  }
  return out;
}

// ------------------------------------------------------------------------- VAE

async function decode(
  parts: TextToImageParts,
  latents: Float32Array,
  shape: number[],
  scalingFactor: number,
  o: ResolvedOptions,
  vaeScaleFactor: number,
  call: Call,
): Promise<GenerateResult['image']> {
  const s = parts.vae_decoder;
  const input = inputName(s, 'vae_decoder', 'latent_sample', 0);
  const scaled = new Float32Array(latents.length);
  for (let i = 0; i < latents.length; i++) scaled[i] = latents[i] / scalingFactor;
  const outputs = await call('vae_decoder', s, { [input]: floatFeed(s, 'vae_decoder', input, scaled, shape) });
  const name = outputName(s, 'vae_decoder', 'sample');
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
  for (let i = 0; i < plane; i++) {
    for (let ch = 0; ch < 3; ch++) {
      const v = Math.min(1, Math.max(0, chw[ch * plane + i] / 2 + 0.5));
      out[i * 4 + ch] = Math.round(v * 255);
    }
    out[i * 4 + 3] = 255;
  }
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

function throwIfAborted(o: ResolvedOptions, when: string): void {
  if (o.signal?.aborted) throw new FuseloadError('aborted', `generate: aborted ${when}`, { cause: o.signal.reason });
}

function defaultNow(): number {
  return typeof performance !== 'undefined' ? performance.now() : Date.now();
}
