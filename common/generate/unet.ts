/** What the loop feeds a UNet: its inputs by name, and the conditioning both loops (CPU, device) build. */
import { FuseloadError } from '../errors.ts';
import type { LoopTensor } from './device/run.ts';
import { type DeviceTensor, isDeviceTensor } from './device/types.ts';
import { fixedDim, inputName, outputName } from './feeds.ts';
import type { TextToImageParts } from './text-to-image.ts';

/** One prompt's encoding: on the CPU, or left on the device by its encoder. */
export interface TextState {
  /** [1, L, D]. */
  hidden: Float32Array | DeviceTensor;
  /** SDXL's pooled embedding [1, P]. */
  pooled?: Float32Array | DeviceTensor;
  truncated: boolean;
}

/** A prompt's [1, L, D] states as the device loop takes them. */
export function textTensor(t: Float32Array | DeviceTensor, tokens: number): LoopTensor {
  return isDeviceTensor(t) ? t : { type: 'float32', dims: [1, tokens, t.length / tokens], data: t };
}

/** SDXL's pooled [1, P] text as the device loop takes it. */
export function pooledTensor(t: Float32Array | DeviceTensor): LoopTensor {
  return isDeviceTensor(t) ? t : { type: 'float32', dims: [1, t.length], data: t };
}

export interface UnetInputs {
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

export function unetInputs(parts: TextToImageParts): UnetInputs {
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

/**
 * How a step evaluates the UNet: `one` batch-1 call on the prompt; `first`, a batch-2 graph fed
 * the prompt twice (its first row used); with guidance, `pair` (one batch-2 call, [uncond; cond])
 * or `two` (two batch-1 calls, a graph fixed at batch 1).
 */
export type UnetLayout = 'one' | 'first' | 'pair' | 'two';

export function unetLayout(unet: UnetInputs, guided: boolean): UnetLayout {
  if (!guided) return unet.batch === 2 ? 'first' : 'one';
  return unet.batch === 1 ? 'two' : 'pair';
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

/** SDXL micro-conditioning: original size, crop top-left, target size (diffusers' defaults: the output size, no crop). */
export function timeIds(width: number, height: number): Float32Array {
  return Float32Array.from([height, width, 0, 0, height, width]);
}
