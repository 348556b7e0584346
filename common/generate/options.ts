/** `generate()` options: defaults and the checks that give one-line errors naming the field. */
import { badInput } from '../errors.ts';
import { resolveSchedulerName } from './schedulers/index.ts';
import type { SchedulerName } from './schedulers/types.ts';

export const GENERATE_LIMITS = {
  maxPromptChars: 1000,
  maxSteps: 150,
  maxGuidanceScale: 30,
  /** Largest width or height in pixels. */
  maxSide: 2048,
} as const;

export interface StepEvent {
  /** Steps done so far, 1…steps. */
  step: number;
  steps: number;
  /** The UNet timestep of the step just taken. */
  timestep: number;
  /**
   * The latents after this step ([1, C, H/f, W/f]); read-only — the loop never writes to it again.
   * Absent on a device-resident loop, whose latents stay on the GPU (`deviceResident: false` gives them).
   */
  latents?: Float32Array;
}

export interface GenerateOptions {
  prompt: string;
  /** Default: none ("" for SD 1.x/2.x guidance; zeros for SDXL when its pipeline forces zeros). */
  negativePrompt?: string;
  /** Default 50 (diffusers), 4 for LCM. */
  steps?: number;
  /** Classifier-free guidance; ≤ 1 runs the UNet on the prompt alone. Default 7.5 (8.5 for LCM, diffusers' defaults). */
  guidanceScale?: number;
  /** Default: the pipeline's scheduler_config.json `_class_name`. */
  scheduler?: SchedulerName;
  /** Noise seed, a safe integer ≥ 0. Default: random (returned in the result). */
  seed?: number;
  /** Pixels, multiples of 8 (the VAE's factor). Default: the UNet's fixed size, else 512. */
  width?: number;
  height?: number;
  /** Initial noise, standard normal, [1, C, H/f, W/f]; scaled by the scheduler's initNoiseSigma as diffusers does. */
  latents?: Float32Array;
  onStep?: (event: StepEvent) => void;
  /** Aborts between steps with a FuseloadError of code `aborted`. */
  signal?: AbortSignal;
  /**
   * On sessions that keep tensors on their device (WebGPU), run the whole loop there and read back
   * only the image. Default true; false runs it on the CPU, reading every step back.
   */
  deviceResident?: boolean;
}

export interface ResolvedOptions {
  prompt: string;
  negativePrompt: string | undefined;
  steps: number;
  guidanceScale: number;
  scheduler: SchedulerName;
  seed: number;
  width: number;
  height: number;
  latents: Float32Array | undefined;
  onStep: ((event: StepEvent) => void) | undefined;
  signal: AbortSignal | undefined;
  deviceResident: boolean;
}

export interface OptionDefaults {
  schedulerConfig: unknown;
  /** Pixels per latent cell. */
  vaeScaleFactor: number;
  /** The UNet's fixed latent size, when its graph declares one. */
  latentWidth?: number;
  latentHeight?: number;
  latentChannels: number;
}

export function resolveOptions(options: GenerateOptions, defaults: OptionDefaults): ResolvedOptions {
  if (!options || typeof options !== 'object') throw badInput('options', 'must be an object with at least a prompt');
  const prompt = text('prompt', options.prompt, true);
  const negativePrompt = options.negativePrompt === undefined ? undefined : text('negativePrompt', options.negativePrompt, false);
  const scheduler = resolveSchedulerName(defaults.schedulerConfig, options.scheduler);
  const steps = options.steps ?? (scheduler === 'lcm' ? 4 : 50);
  if (!Number.isInteger(steps) || steps < 1 || steps > GENERATE_LIMITS.maxSteps) {
    throw badInput('steps', `must be an integer from 1 to ${GENERATE_LIMITS.maxSteps}, got ${show(steps)}`);
  }
  const guidanceScale = options.guidanceScale ?? (scheduler === 'lcm' ? 8.5 : 7.5);
  if (typeof guidanceScale !== 'number' || !Number.isFinite(guidanceScale) || guidanceScale < 0 || guidanceScale > GENERATE_LIMITS.maxGuidanceScale) {
    throw badInput('guidanceScale', `must be a number from 0 to ${GENERATE_LIMITS.maxGuidanceScale}, got ${show(guidanceScale)}`);
  }
  const seed = options.seed ?? randomSeed();
  if (!Number.isSafeInteger(seed) || seed < 0) throw badInput('seed', `must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, got ${show(seed)}`);
  const f = defaults.vaeScaleFactor;
  const width = options.width ?? (defaults.latentWidth ? defaults.latentWidth * f : 512);
  const height = options.height ?? (defaults.latentHeight ? defaults.latentHeight * f : 512);
  for (const [field, v, fixed] of [['width', width, defaults.latentWidth], ['height', height, defaults.latentHeight]] as const) {
    if (!Number.isInteger(v) || v < f || v % f !== 0 || v > GENERATE_LIMITS.maxSide) {
      throw badInput(field, `must be a multiple of ${f} from ${f} to ${GENERATE_LIMITS.maxSide}, got ${show(v)}`);
    }
    if (fixed !== undefined && v !== fixed * f) throw badInput(field, `this UNet takes ${fixed * f} only (its graph fixes the latent size), got ${v}`);
  }
  let latents: Float32Array | undefined;
  if (options.latents !== undefined) {
    const want = defaults.latentChannels * (height / f) * (width / f);
    if (!(options.latents instanceof Float32Array)) throw badInput('latents', 'must be a Float32Array');
    if (options.latents.length !== want) {
      throw badInput('latents', `must hold ${want} values ([1, ${defaults.latentChannels}, ${height / f}, ${width / f}]), got ${options.latents.length}`);
    }
    if (!options.latents.every(Number.isFinite)) throw badInput('latents', 'must be finite numbers');
    latents = options.latents;
  }
  if (options.onStep !== undefined && typeof options.onStep !== 'function') throw badInput('onStep', 'must be a function');
  const signal = options.signal;
  if (signal !== undefined && (signal === null || typeof signal !== 'object' || typeof signal.aborted !== 'boolean')) {
    throw badInput('signal', 'must be an AbortSignal');
  }
  if (options.deviceResident !== undefined && typeof options.deviceResident !== 'boolean') throw badInput('deviceResident', 'must be true or false');
  return { prompt, negativePrompt, steps, guidanceScale, scheduler, seed, width, height, latents, onStep: options.onStep, signal, deviceResident: options.deviceResident ?? true };
}

function text(field: string, v: unknown, required: boolean): string {
  if (typeof v !== 'string') throw badInput(field, `must be a string, got ${v === null ? 'null' : typeof v}`);
  if (required && v.trim() === '') throw badInput(field, 'must not be empty');
  if (v.length > GENERATE_LIMITS.maxPromptChars) {
    throw badInput(field, `has ${v.length} characters, more than the ${GENERATE_LIMITS.maxPromptChars} allowed`);
  }
  return v;
}

function randomSeed(): number {
  const c = (globalThis as { crypto?: { getRandomValues?(a: Uint32Array): Uint32Array } }).crypto;
  if (c?.getRandomValues) return c.getRandomValues(new Uint32Array(1))[0];
  return Math.floor(Math.random() * 2 ** 32);
}

function show(v: unknown): string {
  return typeof v === 'string' ? `"${v.slice(0, 20)}"` : String(v);
}
