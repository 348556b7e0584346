/**
 * The browser entry: `loadPipeline` with an IndexedDB cache, Web Locks across tabs and
 * onnxruntime-web on WebGPU → WASM. The cache logic itself is common/loader (shared with Node).
 *
 *   import { loadPipeline } from 'fuseload/web';
 *   const p = await loadPipeline({ origin, model: 'sample', tag: 'latest' });
 *   const out = await p.run(feeds); // p.info.provider, p.info.fallbacks, p.info.sources
 *
 * `createWorkerLoader()` gives the same surface with all of it in a Web Worker (worker-client.ts).
 */
import type { LoadPipelineOptions, Pipeline } from '../common/pipeline.ts';
import { type BrowserLoader, type BrowserLoaderOptions, createBrowserLoader } from './browser-loader.ts';
import type { CacheInfo } from './idb-store.ts';

export { type BrowserLoader, type BrowserLoaderOptions, createBrowserLoader } from './browser-loader.ts';
export type { CacheInfo, CachedBlob } from './idb-store.ts';
export { IdbStore } from './idb-store.ts';
export { createOrtEngine, hasJspi, type OrtBuild, type OrtEngine, type OrtEngineOptions, webgpuAdapter, type WebGpuAdapterReport } from './ort-engine.ts';
export { withWebLock } from './locks.ts';
export { createWorkerLoader, type WorkerLoader, type WorkerLoaderOptions } from './worker-client.ts';
export type * from '../common/pipeline.ts';

let defaultLoader: BrowserLoader | null = null;
let defaultOptions: BrowserLoaderOptions = {};

/** Settings for the loader behind the module-level functions; call before the first load. */
export function configure(options: BrowserLoaderOptions): void {
  if (defaultLoader) throw new Error('fuseload: configure() must come before the first loadPipeline()');
  defaultOptions = options;
}

function loader(): BrowserLoader {
  defaultLoader ??= createBrowserLoader(defaultOptions);
  return defaultLoader;
}

export function loadPipeline(options: LoadPipelineOptions): Promise<Pipeline> {
  return loader().loadPipeline(options);
}

/** What IndexedDB holds: blob count, bytes, and each blob with its last use. */
export function cacheInfo(): Promise<CacheInfo> {
  return loader().store.info();
}

/** Empties IndexedDB and the memory tier. */
export async function clearCache(): Promise<void> {
  await loader().clearMemory();
  await loader().store.clear();
}

/** Asks the browser not to evict our storage under pressure; only on an explicit call. */
export async function persist(): Promise<boolean> {
  return (await navigator.storage?.persist?.()) ?? false;
}
