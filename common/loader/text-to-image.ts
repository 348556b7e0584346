/**
 * The `text-to-image` kind: a pipeline's sessions and assets handed to the generation loop
 * (common/generate). Owned by the kind, not by the loader or the server. Assets were fetched
 * and verified by the loader with every other blob; here they are only parsed, once.
 */
import { badInput, FuseloadError } from '../errors.ts';
import { generateImage, type TextToImageParts } from '../generate/text-to-image.ts';
import { createPromptTokenizer, readTokenizerAssets } from '../generate/tokenizer.ts';
import { vaeSettings } from '../generate/vae-config.ts';
import type { Role } from '../manifest.ts';
import type { EngineSession, GenerateOptions, GenerateResult } from '../pipeline.ts';

export interface Generator {
  generate(options: GenerateOptions): Promise<GenerateResult>;
}

export function createGenerator(model: string, sessions: Partial<Record<Role, EngineSession>>, assets: Map<string, Uint8Array>): Generator {
  let parts: Promise<{ parts: TextToImageParts; size?: number }> | null = null;
  const text = (path: string) => {
    const bytes = assets.get(path);
    return bytes ? new TextDecoder().decode(bytes) : undefined;
  };
  const json = (path: string): unknown => {
    const body = text(path);
    if (body === undefined) return undefined;
    try {
      return JSON.parse(body);
    } catch {
      throw badInput(`${model}/${path}`, 'is not valid JSON');
    }
  };
  async function prepare() {
    const denoiser = sessions.unet ?? sessions.transformer;
    if (!sessions.text_encoder || !denoiser || !sessions.vae_decoder) throw new FuseloadError('bad-input', `${model}: a text-to-image pipeline needs text_encoder, unet and vae_decoder sessions`);
    const read = async (path: string) => assets.get(path) ?? null;
    const tokenizer = createPromptTokenizer(await readTokenizerAssets(read, 'tokenizer'), { folder: `${model}/tokenizer` });
    const hasSecond = [...assets.keys()].some((p) => p.startsWith('tokenizer_2/'));
    const tokenizer_2 = hasSecond ? createPromptTokenizer(await readTokenizerAssets(read, 'tokenizer_2'), { folder: `${model}/tokenizer_2` }) : undefined;
    const vae = vaeSettings(json('vae_decoder/config.json'), `${model}/vae_decoder/config.json`);
    const index = (json('model_index.json') ?? {}) as Record<string, unknown>;
    const unetConfig = (json('unet/config.json') ?? {}) as Record<string, unknown>;
    const schedulerConfig = json('scheduler/scheduler_config.json');
    if (schedulerConfig === undefined) throw badInput(model, 'has no scheduler/scheduler_config.json');
    const sampleSize = typeof unetConfig.sample_size === 'number' && Number.isInteger(unetConfig.sample_size) ? unetConfig.sample_size : undefined;
    return {
      parts: {
        text_encoder: sessions.text_encoder,
        ...(sessions.text_encoder_2 ? { text_encoder_2: sessions.text_encoder_2 } : {}),
        unet: denoiser,
        vae_decoder: sessions.vae_decoder,
        tokenizer,
        ...(tokenizer_2 ? { tokenizer_2 } : {}),
        schedulerConfig,
        vaeScalingFactor: vae.vaeScalingFactor,
        vaeScaleFactor: vae.vaeScaleFactor,
        ...(typeof index.force_zeros_for_empty_prompt === 'boolean' ? { forceZerosForEmptyPrompt: index.force_zeros_for_empty_prompt } : {}),
      },
      // diffusers' default image size: unet.config.sample_size × the VAE's factor.
      size: sampleSize ? sampleSize * vae.vaeScaleFactor : undefined,
    };
  }
  return {
    async generate(options) {
      parts ??= prepare();
      parts.catch(() => (parts = null));
      const { parts: p, size } = await parts;
      const sized = size && options && typeof options === 'object' ? { ...options, width: options.width ?? size, height: options.height ?? size } : options;
      return generateImage(p, sized);
    },
  };
}
