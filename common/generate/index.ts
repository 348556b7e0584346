/**
 * Text to image, written once for every runtime (no Node or DOM imports): schedulers configured
 * from diffusers' scheduler_config.json, seeded noise that is the same bits everywhere, the CLIP
 * prompt tokenizer, and the denoising loop over onnxruntime-shaped sessions.
 */
export { generateImage, guidanceEmbedding, toRgba } from './text-to-image.ts';
export type { GenerateHooks, GenerateResult, PartRole, TextToImageParts } from './text-to-image.ts';
export { GENERATE_LIMITS } from './options.ts';
export type { GenerateOptions, StepEvent } from './options.ts';
export { describeInputs } from './feeds.ts';
export type { InputMetadataLike, SessionLike } from './feeds.ts';
export { readTextToImageAssets } from './assets.ts';
export type { ReadAsset, TextToImageAssets } from './assets.ts';
export { philox4x32, randn } from './noise.ts';
export { clipTokenizerJson, createPromptTokenizer, readTokenizerAssets } from './tokenizer.ts';
export type { PromptEncoding, PromptTokenizer, PromptTokenizerOptions, TokenizerAssets } from './tokenizer.ts';
export { vaeSettings } from './vae-config.ts';
export {
  createScheduler,
  isSchedulerName,
  resolveSchedulerName,
  SCHEDULER_CLASS,
  SCHEDULER_NAMES,
  schedulerNameForClass,
} from './schedulers/index.ts';
export type { CreateSchedulerOptions, Scheduler, SchedulerName } from './schedulers/index.ts';
