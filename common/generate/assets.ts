/**
 * The small files a text-to-image pipeline needs besides its graphs, read by their diffusers
 * paths through the caller's `read` (the loader's verified, cached blob path):
 * scheduler/scheduler_config.json, tokenizer/ (and tokenizer_2/ for SDXL), vae_decoder/config.json
 * (scaling_factor; absent → SD 1.x defaults) and model_index.json (force_zeros_for_empty_prompt).
 */
import { badInput } from '../errors.ts';
import type { TextToImageParts } from './text-to-image.ts';
import { createPromptTokenizer, readTokenizerAssets } from './tokenizer.ts';
import { vaeSettings } from './vae-config.ts';

export type ReadAsset = (path: string) => Promise<Uint8Array | string | null>;

export type TextToImageAssets = Pick<
  TextToImageParts,
  'tokenizer' | 'tokenizer_2' | 'schedulerConfig' | 'vaeScalingFactor' | 'vaeScaleFactor' | 'forceZerosForEmptyPrompt'
>;

export async function readTextToImageAssets(read: ReadAsset, options: { secondTokenizer?: boolean } = {}): Promise<TextToImageAssets> {
  const json = async (path: string): Promise<unknown> => {
    const got = await read(path);
    if (got === null) return undefined;
    try {
      return JSON.parse(typeof got === 'string' ? got : new TextDecoder().decode(got));
    } catch {
      throw badInput(path, 'is not valid JSON');
    }
  };
  const schedulerConfig = await json('scheduler/scheduler_config.json');
  if (schedulerConfig === undefined) throw badInput('scheduler/scheduler_config.json', 'is missing from the pipeline');
  const modelIndex = (await json('model_index.json')) as Record<string, unknown> | undefined;
  const tokenizer = createPromptTokenizer(await readTokenizerAssets(read, 'tokenizer'));
  // SDXL names tokenizer_2 in model_index.json; without one, ask for it only when told to.
  const wantsSecond = options.secondTokenizer ?? Boolean(modelIndex && 'tokenizer_2' in modelIndex);
  const tokenizer_2 = wantsSecond ? createPromptTokenizer(await readTokenizerAssets(read, 'tokenizer_2'), { folder: 'tokenizer_2' }) : undefined;
  const force = modelIndex?.force_zeros_for_empty_prompt;
  return {
    tokenizer,
    ...(tokenizer_2 ? { tokenizer_2 } : {}),
    schedulerConfig,
    ...vaeSettings(await json('vae_decoder/config.json')),
    ...(typeof force === 'boolean' ? { forceZerosForEmptyPrompt: force } : {}),
  };
}
