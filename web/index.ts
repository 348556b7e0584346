/**
 * The browser entry: `loadPipeline` with an IndexedDB cache, Web Locks across tabs and
 * onnxruntime-web on WebGPU → WASM. The cache logic itself is common/loader (shared with Node).
 *
 *   import { loadPipeline } from 'fuseload/web';
 *   const p = await loadPipeline({ origin, model: 'sample', tag: 'latest' });
 *   const out = await p.run(feeds); // p.info.provider, p.info.fallbacks, p.info.sources
 */
import { createLoader, type Loader } from '../common/loader/index.ts';
import type { LoadPipelineOptions, Pipeline } from '../common/pipeline.ts';
import { type CacheInfo, IdbStore } from './idb-store.ts';
import { withWebLock } from './locks.ts';
import { createOrtEngine } from './ort-engine.ts';

export type { CacheInfo, CachedBlob } from './idb-store.ts';
export { IdbStore } from './idb-store.ts';
export { createOrtEngine, webgpuAdapter, type WebGpuAdapterReport } from './ort-engine.ts';
export { withWebLock } from './locks.ts';
export type * from '../common/pipeline.ts';

export interface BrowserLoaderOptions {
  /** IndexedDB database name (default `fuseload`). */
  dbName?: string;
  /** Cache budget in bytes; least recently used blobs are evicted past it (default: the browser's quota). */
  budgetBytes?: number;
  /** Where ORT's .wasm/.mjs files are served (default `/ort/` on this origin). */
  wasmPaths?: string;
  /** Parallel blob downloads (default 4). */
  concurrency?: number;
  warn?: (message: string) => void;
}

export interface BrowserLoader extends Loader {
  readonly store: IdbStore;
}

export function createBrowserLoader(options: BrowserLoaderOptions = {}): BrowserLoader {
  const store = new IdbStore({ dbName: options.dbName, budgetBytes: options.budgetBytes });
  const loader = createLoader({
    engine: createOrtEngine({ wasmPaths: options.wasmPaths }),
    store,
    withLock: withBlobLock,
    // IndexedDB writes compete with downloads and hashing for the same cores: write once the blobs are in.
    deferStoreWrites: true,
    concurrency: options.concurrency,
    warn: options.warn,
  });
  return Object.assign(loader, { store });
}

/**
 * `withWebLock` that says when it would have to wait (`onContended`, before waiting), so the
 * loader releases the store writes it holds back first: no two tabs wait on each other.
 */
async function withBlobLock<T>(name: string, fn: () => Promise<T>, onContended?: () => void): Promise<T> {
  const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined;
  if (!locks) {
    onContended?.(); // the per-page fallback queue cannot tell: never hold writes back there
    return withWebLock(name, fn);
  }
  if (onContended) {
    const busy = Symbol('busy');
    const got = await locks.request(name, { mode: 'exclusive', ifAvailable: true }, (lock) => (lock ? fn() : busy));
    if (got !== busy) return got as T;
    onContended();
  }
  return withWebLock(name, fn);
}

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
