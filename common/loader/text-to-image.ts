/**
 * The `text-to-image` kind: a pipeline's sessions and assets handed to the generation loop
 * (common/generate, docs/generation.md). Owned by the kind, not by the loader or the server.
 * Assets were fetched and verified by the loader with every other blob; here they are parsed, once.
 */
import { FuseloadError } from '../errors.ts';
import { readTextToImageAssets, type TextToImageAssets } from '../generate/assets.ts';
import { vaeSettings } from '../generate/vae-config.ts';
import { generateImage } from '../generate/text-to-image.ts';
import type { Role } from '../manifest.ts';
import type { EngineSession, GenerateOptions, GenerateResult } from '../pipeline.ts';

export interface Generator {
  generate(options: GenerateOptions): Promise<GenerateResult>;
}

/**
 * diffusers' default image side for a pipeline: `unet/config.json`'s sample_size × the VAE's
 * factor (`vae_decoder/config.json`); undefined when the configs do not say (or cannot be read).
 */
export function nativeImageSize(assets: Map<string, Uint8Array>): number | undefined {
  const json = (path: string): unknown => {
    const bytes = assets.get(path);
    return bytes ? JSON.parse(new TextDecoder().decode(bytes)) : undefined;
  };
  try {
    const sampleSize = (json('unet/config.json') as { sample_size?: unknown } | undefined)?.sample_size;
    if (typeof sampleSize !== 'number' || !Number.isInteger(sampleSize) || sampleSize <= 0) return undefined;
    return sampleSize * vaeSettings(json('vae_decoder/config.json')).vaeScaleFactor;
  } catch {
    return undefined;
  }
}

/** `size`: the pipeline's native image side (`nativeImageSize`, as the loader put it in `PipelineInfo.imageSize`), the default width and height. */
export function createGenerator(model: string, sessions: Partial<Record<Role, EngineSession>>, assets: Map<string, Uint8Array>, size?: number): Generator {
  let prepared: Promise<TextToImageAssets> | null = null;
  const prepare = () => readTextToImageAssets(async (path) => assets.get(path) ?? null, { secondTokenizer: !!sessions.text_encoder_2 });
  return {
    async generate(options) {
      const text_encoder = sessions.text_encoder;
      const unet = sessions.unet ?? sessions.transformer;
      const vae_decoder = sessions.vae_decoder;
      if (!text_encoder || !unet || !vae_decoder) throw new FuseloadError('bad-input', `${model}: a text-to-image pipeline needs text_encoder, unet and vae_decoder sessions`);
      prepared ??= prepare();
      prepared.catch(() => (prepared = null));
      const parsed = await prepared;
      const sized = size && options && typeof options === 'object' ? { ...options, width: options.width ?? size, height: options.height ?? size } : options;
      return generateImage({ ...parsed, text_encoder, unet, vae_decoder, ...(sessions.text_encoder_2 ? { text_encoder_2: sessions.text_encoder_2 } : {}) }, sized);
    },
  };
}
