/**
 * What the demo page reads at start (`catalog.json` beside it): where the artifacts are
 * served, the model's tags, the LoRAs a user can overlay at load time, and what to offer in
 * the generator (example prompts, sizes, defaults). Written by `npm start`
 * (tools/dev/prepare.ts); no Node or DOM imports, so both sides share it.
 */
import type { SchedulerName } from '../../common/generate/schedulers/types.ts';

export interface DemoTag {
  tag: string;
  /** `sha256:<hex>` of the manifest the tag pointed at when published. */
  fingerprint: string;
  /** LoRAs merged into this artifact at build time (empty for the base). */
  merged: { name: string; scale: number }[];
}

export interface DemoLora {
  name: string;
  /** `sha256:<hex>`: the LoRA file, served as a blob by the origin. */
  digest: string;
  /** Bytes of the file, for the page's accounting of where bytes came from. */
  size: number;
  /** Key layout the build recognised (kohya, peft, diffusers, …). */
  format: string;
  defaultScale: number;
  /** PEFT only: adapter_config.json's lora_alpha, which is not in the safetensors file. */
  alpha?: number;
  /** What it does to the picture, in words. */
  style?: string;
}

export interface DemoDefaults {
  prompt: string;
  negativePrompt: string;
  steps: number;
  guidanceScale: number;
  /** The pipeline's own scheduler (scheduler_config.json). */
  scheduler: SchedulerName;
  seed: number;
}

export interface DemoCatalog {
  /** The artifact origin (the edge worker); the page's `?origin=` overrides it. */
  origin: string;
  model: string;
  tags: DemoTag[];
  loras: DemoLora[];
  /** The image size the model was trained at (and the page's default). */
  width: number;
  height: number;
  /** Square sides the page offers, in pixels; the first is the trained size. */
  sizes: number[];
  /** Example prompts, in the grammar the model was trained on. */
  prompts: string[];
  defaults: DemoDefaults;
  /** The words the model knows, for the hint under the prompt box. */
  vocabulary?: { colors: string[]; shapes: string[]; sizes: string[]; positions: string[]; grammar: string };
}

/** The page's path under the Vite root, and the catalog's path beside it. */
export const DEMO_PAGE_PATH = '/web/demo/';
export const DEMO_CATALOG_PATH = '/web/demo/catalog.json';
