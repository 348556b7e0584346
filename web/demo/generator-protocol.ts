/**
 * Messages between the demo page and its generator worker (generator-worker.ts). The worker
 * owns the loader, the IndexedDB cache and onnxruntime, so the page stays responsive and paints
 * every step while a picture is made; every message names the request it belongs to.
 */
import type { GenerateOptions, GenerateResult, LoadPipelineOptions, PipelineInfo, ProgressEvent, Provider } from '../../common/pipeline.ts';
import type { CacheInfo, WebGpuAdapterReport } from '../index.ts';

export type LoadRequest = Pick<LoadPipelineOptions, 'origin' | 'model' | 'tag' | 'fingerprint' | 'loras' | 'device'>;

export type ToWorker =
  | { id: number; type: 'generate'; load: LoadRequest; options: Omit<GenerateOptions, 'onStep' | 'signal' | 'latents'> }
  | { id: number; type: 'cache-info' }
  | { id: number; type: 'clear-cache' }
  | { id: number; type: 'adapter' };

export interface Generated {
  result: GenerateResult;
  info: PipelineInfo;
  /** Milliseconds from the request to a loaded pipeline. */
  loadMs: number;
  /** Milliseconds from the request to the end of the last download. */
  transferMs: number;
}

export interface SerializedError {
  name: string;
  message: string;
  code?: string;
}

export type FromWorker =
  | { id: number; type: 'progress'; event: ProgressEvent }
  | { id: number; type: 'loaded'; provider: Provider }
  | { id: number; type: 'step'; step: number; steps: number; latents?: Float32Array }
  | { id: number; type: 'done'; value: Generated | CacheInfo | WebGpuAdapterReport | null }
  | { id: number; type: 'error'; error: SerializedError };
