/** What the loop needs from `vae_decoder/config.json` (diffusers' AutoencoderKL config). */
import { badInput } from '../errors.ts';

export interface VaeSettings {
  /** Latents are divided by this before decoding (`scaling_factor`; default 0.18215). */
  vaeScalingFactor: number;
  /** Pixels per latent cell: 2^(len(block_out_channels) − 1), default 8. */
  vaeScaleFactor: number;
}

export function vaeSettings(config: unknown, file = 'vae_decoder/config.json'): VaeSettings {
  if (config === undefined || config === null) return { vaeScalingFactor: 0.18215, vaeScaleFactor: 8 };
  if (typeof config !== 'object' || Array.isArray(config)) throw badInput(file, 'must be a JSON object');
  const c = config as Record<string, unknown>;
  const scaling = c.scaling_factor ?? 0.18215;
  if (typeof scaling !== 'number' || !Number.isFinite(scaling) || scaling <= 0) throw badInput(file, `scaling_factor must be a number > 0, got ${String(scaling)}`);
  const blocks = c.block_out_channels;
  if (blocks !== undefined && (!Array.isArray(blocks) || blocks.length < 1 || blocks.length > 8)) {
    throw badInput(file, 'block_out_channels must be a list of 1 to 8 channel counts');
  }
  return { vaeScalingFactor: scaling, vaeScaleFactor: blocks ? 2 ** (blocks.length - 1) : 8 };
}
