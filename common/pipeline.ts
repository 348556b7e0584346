/**
 * The one interface both runtimes implement (browser: onnxruntime-web on WebGPU → WASM;
 * Node: onnxruntime-node on CUDA → CPU). Like onnxruntime's js/common: the shape lives
 * here, each runtime supplies an Engine and a BlobStore behind it.
 */
import type { Digest } from './digest.ts';
import { FuseloadError } from './errors.ts';
import type { AnyManifest, PipelineKind, Role } from './manifest.ts';
import type { DeviceSession } from './generate/device/types.ts';
import type { GenerateOptions, GenerateResult } from './generate/text-to-image.ts';

export type { GenerateOptions, GenerateResult } from './generate/text-to-image.ts';

export type Device = 'auto' | 'webgpu' | 'wasm' | 'cuda' | 'cpu';

/** What an execution provider is called in `p.info.provider`. */
export type Provider = 'webgpu' | 'wasm' | 'cuda' | 'cpu';

export type ProgressPhase = 'manifest' | 'download' | 'verify' | 'store' | 'session' | 'overlay' | 'step';

/** Enough for any progress bar: per file, plus `aggregate` over the whole load. */
export interface ProgressEvent {
  phase: ProgressPhase;
  /** A digest, or a tag/manifest key for the manifest phase. */
  file: string;
  loaded: number;
  total: number;
  aggregate?: { loaded: number; total: number };
  /** The component a `session` or `overlay` event is about. */
  component?: Role;
  /** `step` events (generation): the step just finished, of `steps`. */
  step?: number;
  steps?: number;
}

/** A LoRA applied at load time on top of a clean base artifact. */
export interface LoraOverlay {
  /** The LoRA blob's digest (fetched from `<origin>/blobs/sha256/<hex>`)… */
  digest?: Digest | string;
  /** …or a URL to the safetensors file. */
  url?: string;
  scale: number;
  /**
   * PEFT: the adapter_config.json lora_alpha (it is not inside the safetensors file); kohya
   * and diffusers files carry their own or default to rank. Applies to modules with no alpha tensor.
   */
  alpha?: number;
}

export interface LoadPipelineOptions {
  /** Where artifacts are served: the edge worker, a bucket's public URL, any static origin. */
  origin: string;
  model: string;
  /** Resolve a tag (may be stale; the manifest is checked against its digest)… */
  tag?: string;
  /** …or pin the fingerprint (64 hex or sha256:<hex>); with a warm cache this needs no network. */
  fingerprint?: string;
  loras?: LoraOverlay[];
  device?: Device;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export type CacheSource = 'memory' | 'store' | 'network';

export interface ComponentInfo {
  /** The execution provider this component's session runs on. */
  provider: Provider;
  /** Providers tried before it and why each was passed over, in order. */
  fallbacks: { provider: Provider; reason: string }[];
}

export interface PipelineInfo {
  fingerprint: Digest;
  /** The manifest as published (schema 1 or 2). */
  manifest: AnyManifest;
  /** What the pipeline does: `graph` (one plain model, `run`) or `text-to-image` (`generate`). */
  kind: PipelineKind;
  /** The execution provider of the main component (`model`, or the UNet / transformer). */
  provider: Provider;
  /** Every component's fallbacks, in load order, naming the component. */
  fallbacks: { provider: Provider; reason: string; component?: Role }[];
  /** Per component: the provider it runs on and why others were passed over. */
  components: Partial<Record<Role, ComponentInfo>>;
  /** Where each blob came from on this load. */
  sources: Record<Digest, CacheSource>;
  /** Bytes that crossed the network on this load. */
  bytesFetched: number;
  /** Overlays applied at load time, with their resolved digests and matched keys per component. */
  overlays: { digest: Digest; scale: number; matched: number; components: Partial<Record<Role, number>> }[];
  /** True when the pipeline came whole from the in-memory pipeline cache. */
  fromPipelineCache: boolean;
  /**
   * A text-to-image pipeline's native image side (diffusers' default: `unet` sample_size × the VAE's
   * factor), what `generate` makes when no width or height is given; absent when its configs do not say.
   */
  imageSize?: number;
  /**
   * Per component whose session switches LoRAs without being rebuilt (docs/architecture.md,
   * "Switching LoRAs without a new session"): how many weights the current overlays feed
   * merged (`fed`) and how many ride on a LoRA branch (`branched`). Absent on a pipeline built
   * by merging into copies of the shards (a new session per overlay set).
   */
  loraSwitch?: Partial<Record<Role, { fed: number; branched: number }>>;
}

/** Input and output tensors, runtime-neutral (onnxruntime's Tensor has this shape). */
export interface TensorLike {
  type: string;
  dims: readonly number[];
  data: Float32Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;
}

export type Feeds = Record<string, TensorLike>;

export interface Pipeline {
  readonly info: PipelineInfo;
  /** One session per component, by role (like transformers.js' `sessions[role]`). */
  readonly sessions: Readonly<Partial<Record<Role, EngineSession>>>;
  /** Runs the one graph of a `graph` pipeline. */
  run(feeds: Feeds): Promise<Feeds>;
  /** Prompt in, picture out, on a `text-to-image` pipeline (docs/generation.md). */
  generate(options: GenerateOptions): Promise<GenerateResult>;
  /**
   * Switches this pipeline to other load-time LoRAs or scales (`[]`: the base) on the same
   * sessions: merged weights and branch factors are rewritten in place, after the runs in
   * flight, and `info.overlays` follows. Fails with `unsupported` on a pipeline whose sessions
   * were built by merging into shard copies (load it again with `loras` instead).
   */
  setLoras(loras: LoraOverlay[]): Promise<void>;
  /**
   * Resolves once every blob the sessions were built from has matched its digest. A load hands
   * weight shards to the engine while their hashes are still running and resolves once the
   * sessions are built (docs/architecture.md, "Verified beside the sessions"); `run`, `generate`,
   * `setLoras` and every `sessions[role]` call wait for this first, so no unverified byte produces
   * output. A shard that did not match is dropped from the cache and fetched again, and the
   * sessions are rebuilt from it before this resolves (`info.sources` then says `network` for
   * it); wrong a second time, this and every call reject with `digest-mismatch`.
   */
  verified(): Promise<void>;
  dispose(): Promise<void>;
}

/**
 * External data as onnxruntime takes it: `path` is the bare hex the graph's `location` names.
 * `data` is a Blob only for an engine with `externalDataBlobs` (a stored shard's handle, unread).
 */
export interface ExternalDataFile {
  path: string;
  data: Uint8Array | Blob;
}

/** `data` as bytes, for code that reads them (a Blob is a store's handle, for an engine with `externalDataBlobs` only); `what` names it. */
export function needBytes(data: Uint8Array | Blob | undefined, what: string): Uint8Array {
  if (data instanceof Uint8Array) return data;
  throw new FuseloadError('engine', `${what}: ${data ? 'a Blob handle' : 'missing'} where its bytes were needed (only an engine with externalDataBlobs takes a handle)`);
}

/** The bytes of external data, for code that reads them (LoRA merges, engines without `externalDataBlobs`). */
export const externalBytes = (file: ExternalDataFile): Uint8Array => needBytes(file.data, `external data ${file.path}`);

export interface EngineSession {
  run(feeds: Feeds): Promise<Feeds>;
  release(): Promise<void>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Element type per input ('float32', 'float16', 'int32', 'int64', …), where the engine knows it. */
  readonly inputTypes?: Readonly<Record<string, string>>;
  /** Declared dims per input (numbers, or names for symbolic ones), where the engine knows them. */
  readonly inputDims?: Readonly<Record<string, readonly (number | string)[]>>;
  /** Where the engine keeps tensors on a device (WebGPU): runs whose outputs stay there (common/generate/device/types.ts). */
  readonly runDevice?: DeviceSession['runDevice'];
  /** That device: sessions with the same one pass device tensors to each other. */
  readonly device?: DeviceSession['device'];
}

/**
 * How a provider takes a weight fed on every run (an overridable initializer), which decides
 * how load-time LoRAs are switched on it (common/loader/switch.ts):
 * `in-place` — read where it lies (onnxruntime-node on CPU); `device` — a device tensor made
 * once, read on every run without an upload (WebGPU); `copied` — copied on every run (WASM into
 * its heap, CUDA to the GPU), so LoRAs ride on small branch factors instead.
 */
export type WeightFeeding = 'in-place' | 'device' | 'copied';

/** One per runtime. `create` tries providers in order and reports every fallback. */
export interface Engine {
  /**
   * How `provider` takes fed weights; absent (or null) means the engine does not say, and
   * load-time LoRAs are merged into shard copies for a new session, as before switching existed.
   */
  weightFeeding?(provider: Provider): WeightFeeding | null;
  /** The providers `device` stands for, in the order they are tried. */
  providers(device: Device): Provider[];
  /**
   * True when `create` takes external data as a Blob and reads it a tensor at a time (onnxruntime-web's
   * JSPI build): the loader then hands over stored weight shards as the store's handles, unread, and
   * downloads them into Blobs (docs/architecture.md, "Large pipelines and onnxruntime-web").
   */
  readonly externalDataBlobs?: boolean;
  create(
    graph: Uint8Array,
    externalData: ExternalDataFile[],
    provider: Provider,
    /** What the caller asked for: an engine may pass a provider over under 'auto' only. */
    device?: Device,
  ): Promise<EngineSession>;
}
