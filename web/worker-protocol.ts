/**
 * The messages between `createWorkerLoader` (worker-client.ts, the page) and the loader in its
 * Web Worker (worker.ts). Plain structured-cloneable data only: callbacks become events
 * (`progress`, `step`, `warn`), an AbortSignal becomes an `abort` message, an error its name, code
 * and message.
 */
import type { CacheInfo } from './idb-store.ts';
import type { Role } from '../common/manifest.ts';
import type { Feeds, GenerateOptions, GenerateResult, LoadPipelineOptions, LoraOverlay, PipelineInfo, ProgressEvent } from '../common/pipeline.ts';
import type { StepEvent } from '../common/generate/options.ts';

/** What the worker's BrowserLoader is made with (BrowserLoaderOptions without its callback). */
export interface WorkerInit {
  dbName?: string;
  budgetBytes?: number;
  memoryBudgetBytes?: number;
  inMemoryLoadBytes?: number;
  wasmPaths?: string;
  concurrency?: number;
  /** BrowserLoaderOptions.filesOnDisk: downloads too large for the memory tier go to OPFS files (default true). */
  filesOnDisk?: boolean;
}

/** A session's metadata, so a proxy can say what it takes without asking the worker. */
export interface SessionShape {
  inputNames: string[];
  outputNames: string[];
  inputTypes?: Record<string, string>;
  inputDims?: Record<string, (number | string)[]>;
}

export interface LoadedPipeline {
  handle: number;
  info: PipelineInfo;
  sessions: Partial<Record<Role, SessionShape>>;
}

/** Calls and what each resolves to. */
export interface Calls {
  load: { args: { options: Omit<LoadPipelineOptions, 'onProgress' | 'signal'>; progress: boolean }; result: LoadedPipeline };
  run: { args: { handle: number; feeds: Feeds }; result: Feeds };
  sessionRun: { args: { handle: number; role: Role; feeds: Feeds }; result: Feeds };
  generate: { args: { handle: number; options: Omit<GenerateOptions, 'onStep' | 'signal'>; steps: boolean }; result: GenerateResult };
  setLoras: { args: { handle: number; loras: LoraOverlay[] }; result: PipelineInfo };
  /** Pipeline.verified(), and the info as it is then (a refetched shard changes its sources). */
  verified: { args: { handle: number }; result: PipelineInfo };
  dispose: { args: { handle: number }; result: void };
  cacheInfo: { args: Record<string, never>; result: CacheInfo };
  clearCache: { args: Record<string, never>; result: void };
  clearMemory: { args: Record<string, never>; result: void };
  flush: { args: Record<string, never>; result: void };
}

export type Op = keyof Calls;

export type ToWorker =
  | { type: 'init'; options: WorkerInit }
  | { [K in Op]: { type: 'call'; id: number; op: K; args: Calls[K]['args'] } }[Op]
  | { type: 'abort'; id: number };

export interface WireError {
  name: string;
  code?: string;
  message: string;
}

export type FromWorker =
  | { type: 'result'; id: number; value: unknown }
  | { type: 'error'; id: number; error: WireError }
  | { type: 'progress'; id: number; events: ProgressEvent[] }
  | { type: 'step'; id: number; event: StepEvent }
  | { type: 'warn'; message: string };

/** The buffers of these typed arrays, to transfer instead of copy (never a WebAssembly or shared memory). */
export function transferables(values: Iterable<{ data?: unknown } | undefined>): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const v of values) {
    const data = v?.data;
    if (!ArrayBuffer.isView(data)) continue;
    const buffer = data.buffer;
    // A view of part of a buffer may share it with something still in use: copied, not moved.
    if (buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === buffer.byteLength) out.add(buffer);
  }
  return [...out];
}
