/**
 * What the demo page reads at start (`catalog.json` beside it): where the artifacts are
 * served, the model's tags and the LoRAs a user can overlay at load time. Written by
 * `npm start` (tools/dev/prepare.ts); no Node or DOM imports, so both sides share it.
 */

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
}

export interface DemoCatalog {
  /** The artifact origin (the edge worker); the page's `?origin=` overrides it. */
  origin: string;
  model: string;
  tags: DemoTag[];
  loras: DemoLora[];
  /** Image size the page generates (the sample wants multiples of 4). */
  width: number;
  height: number;
}

/** The page's path under the Vite root, and the catalog's path beside it. */
export const DEMO_PAGE_PATH = '/web/demo/';
export const DEMO_CATALOG_PATH = '/web/demo/catalog.json';
