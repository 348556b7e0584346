/**
 * The Node runtime: the same `loadPipeline` and `Pipeline` as the browser, on the shared
 * loader, with a disk store under PIPELINE_STORE (cross-process locks, LRU budget) and
 * onnxruntime-node on CUDA → CPU.
 *
 *   import { loadPipeline } from 'fuseload/tools/runtime';
 *   const p = await loadPipeline({ origin, model: 'sd-tiny', tag: 'latest' });
 *   p.info.provider; // 'cuda' or 'cpu', with p.info.fallbacks saying why
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createLoader, type Loader } from '../../common/loader/index.ts';
import type { LoadPipelineOptions, Pipeline } from '../../common/pipeline.ts';
import { defaultMaxBytes, defaultStoreRoot, DiskStore, envBytes } from '../store/disk-store.ts';
import { fetchWithFiles } from './file-fetch.ts';
import { createFileLocks } from './locks.ts';
import { OrtNodeEngine, type OrtNodeEngineOptions } from './ort-engine.ts';

export { OrtNodeEngine } from './ort-engine.ts';
export { DiskStore, defaultStoreRoot } from '../store/disk-store.ts';
export type { LoadPipelineOptions, Pipeline, PipelineInfo } from '../../common/pipeline.ts';

export interface NodeRuntimeOptions {
  /** Store root; default PIPELINE_STORE or ~/.cache/fuseload. */
  storeRoot?: string;
  /** Blob byte budget (LRU); default PIPELINE_STORE_MAX_BYTES or unlimited. */
  maxBytes?: number;
  fetch?: typeof fetch;
  /** Parallel blob downloads (the loader's default when absent). */
  concurrency?: number;
  /** Bytes the memory tier keeps (LRU); default PIPELINE_MEMORY_MAX_BYTES or unlimited. */
  memoryBytes?: number;
  engine?: OrtNodeEngineOptions;
  warn?: (message: string) => void;
}

export interface NodeRuntime {
  loader: Loader;
  store: DiskStore;
  engine: OrtNodeEngine;
  loadPipeline(options: LoadPipelineOptions): Promise<Pipeline>;
  /** Waits for store writes still running behind loads (the loader stores behind). */
  flush(): Promise<void>;
}

export function createNodeRuntime(options: NodeRuntimeOptions = {}): NodeRuntime {
  const root = options.storeRoot ?? defaultStoreRoot();
  const warn = options.warn ?? ((m: string) => process.emitWarning(m, 'FuseloadWarning'));
  const store = new DiskStore(root, {
    maxBytes: options.maxBytes ?? defaultMaxBytes(),
    onCorrupt: (digest) => warn(`blob ${digest} in the disk store is corrupt; removed, fetching it again`),
  });
  const engine = new OrtNodeEngine({ fileOf: (bytes) => store.fileOf(bytes), ...options.engine });
  const loader = createLoader({
    engine,
    store,
    fetch: fetchWithFiles(options.fetch),
    withLock: createFileLocks(root, { warn }),
    concurrency: options.concurrency,
    memoryBudgetBytes: options.memoryBytes ?? envBytes('PIPELINE_MEMORY_MAX_BYTES'),
    warn,
  });
  return { loader, store, engine, loadPipeline: (o) => loader.loadPipeline(o), flush: () => loader.flush() };
}

let shared: NodeRuntime | null = null;

/** Loads with the process-wide runtime (PIPELINE_STORE), so pipelines are cached across calls. */
export function loadPipeline(options: LoadPipelineOptions): Promise<Pipeline> {
  shared ??= createNodeRuntime();
  return shared.loadPipeline(options);
}

/** Waits for the process-wide runtime's store writes (call before `process.exit`). */
export async function flush(): Promise<void> {
  await shared?.flush();
}

export interface CacheInfo {
  root: string;
  blobs: number;
  bytes: number;
  manifests: number;
  maxBytes: number | null;
}

export async function cacheInfo(root: string = defaultStoreRoot()): Promise<CacheInfo> {
  const store = new DiskStore(root);
  const { blobs, bytes } = await store.usage();
  const manifests = (await readdir(join(root, 'manifests', 'sha256')).catch(() => [] as string[])).filter((n) =>
    n.endsWith('.json'),
  ).length;
  return { root, blobs, bytes, manifests, maxBytes: defaultMaxBytes() ?? null };
}

/** Removes every blob and manifest (and the process-wide memory tier). Locks are left alone. */
export async function clearCache(root: string = defaultStoreRoot()): Promise<void> {
  if (shared && shared.store.root === root) await shared.loader.clearMemory();
  await rm(join(root, 'blobs'), { recursive: true, force: true });
  await rm(join(root, 'manifests'), { recursive: true, force: true });
}
