/**
 * `createBrowserLoader`: the common loader (common/loader) with the browser's parts — the
 * IndexedDB store, Web Locks across tabs, onnxruntime-web. The page's module-level functions
 * (index.ts) and the Web Worker (worker.ts) both make theirs here.
 */
import { createLoader, type Loader } from '../common/loader/index.ts';
import type { Engine } from '../common/pipeline.ts';
import { IdbStore } from './idb-store.ts';
import { withWebLock } from './locks.ts';
import { createOrtEngine } from './ort-engine.ts';
import type { OffThreadHasher } from '../common/loader/blobs.ts';
import { createWorkerHasher } from './worker-hasher.ts';

/** The browser's memory tier, by default: small pipelines stay whole, a large one is not held twice. */
export const DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024;

/**
 * The most weight bytes a load takes in memory, by default: an eighth of the device's memory
 * (`navigator.deviceMemory`, which Chromium caps at 8 GiB; 4 GiB where it is not given), and never
 * less than the memory tier. A load that fits works as the peers do — bytes in memory beside the
 * engine's copy, about twice the weights while the session is built — and is read and verified
 * once; a larger one (an SD-sized pipeline) works from files and handles, at about 1.3× (docs/architecture.md).
 */
export function defaultInMemoryLoadBytes(memoryBudgetBytes: number): number {
  const gib = (globalThis.navigator as (Navigator & { deviceMemory?: number }) | undefined)?.deviceMemory ?? 4;
  return Math.max(memoryBudgetBytes, (Math.min(gib, 8) * 1024 ** 3) / 8);
}

/** One pool of hashing workers per page or worker, shared by its loaders (made on the first loader). */
let hasher: OffThreadHasher | undefined | null = null;

export interface BrowserLoaderOptions {
  /** IndexedDB database name (default `fuseload`). */
  dbName?: string;
  /** Cache budget in bytes; least recently used blobs are evicted past it (default: the browser's quota). */
  budgetBytes?: number;
  /** Where ORT's .wasm/.mjs files are served (default `/ort/` on this origin). */
  wasmPaths?: string;
  /**
   * Parallel blob downloads (default: no limit of the loader's own). The browser's connection pool
   * already schedules them (six per origin on HTTP/1.1, one multiplexed connection on HTTP/2), and
   * a download allocates its buffer only when its first byte arrives; a count below that left
   * connections idle while the last shards waited (test/bench/browser-load.ts).
   */
  concurrency?: number;
  /**
   * Bytes of verified blobs kept in memory for later loads (LRU; default 256 MiB). Sessions hold
   * their own copies of the weights, so keeping every blob of a 2 GiB pipeline here too would
   * double what the page holds; what is dropped is read from IndexedDB again (a Blob read).
   */
  memoryBudgetBytes?: number;
  /**
   * The most weight bytes a load takes in memory (default `defaultInMemoryLoadBytes`: an eighth of
   * the device's memory, at least memoryBudgetBytes). Up to it, downloads come as bytes and stored
   * shards are read as bytes and given to onnxruntime-web, then hashed by the hashing workers once
   * the sessions are built (runs wait for the digests); past
   * it, downloads go into files (`filesOnDisk`) and shards are handed over as Blobs, never whole in
   * memory here.
   */
  inMemoryLoadBytes?: number;
  warn?: (message: string) => void;
  /**
   * Hash in Web Workers (default true; worker-hasher.ts): false hashes on the loader's thread with
   * WebCrypto, for a page that cannot start workers (a strict CSP) or to measure the difference.
   */
  hashInWorkers?: boolean;
  /** The engine (default onnxruntime-web's, `createOrtEngine({ wasmPaths })`); the worker wraps that one. */
  engine?: Engine;
  /** Every request the loader makes goes through this (default the page's `fetch`): e.g. one that adds an auth header. */
  fetch?: typeof fetch;
  /**
   * Downloads an engine reads as Blobs go into files of the Origin Private File System, which become
   * their IndexedDB records (default true; web/blob-files.ts): a cold load's shards are then in no
   * process's memory. False gathers them into Blobs in memory, which Chromium keeps in the browser process.
   */
  filesOnDisk?: boolean;
}

export interface BrowserLoader extends Loader {
  readonly store: IdbStore;
}

export function createBrowserLoader(options: BrowserLoaderOptions = {}): BrowserLoader {
  const store = new IdbStore({ dbName: options.dbName, budgetBytes: options.budgetBytes, filesOnDisk: options.filesOnDisk });
  const memoryBudgetBytes = options.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const loader = createLoader({
    engine: options.engine ?? createOrtEngine({ wasmPaths: options.wasmPaths, warn: options.warn }),
    store,
    fetch: options.fetch,
    withLock: withBlobLock,
    // IndexedDB writes compete with downloads and hashing for the same cores: write once the blobs are in.
    deferStoreWrites: true,
    concurrency: options.concurrency ?? Number.POSITIVE_INFINITY,
    memoryBudgetBytes,
    inMemoryLoadBytes: options.inMemoryLoadBytes ?? defaultInMemoryLoadBytes(memoryBudgetBytes),
    warn: options.warn,
    // WebCrypto hashes on the calling thread: the checks run in workers, beside session creation.
    hasher: options.hashInWorkers === false ? undefined : hasher === null ? (hasher = createWorkerHasher()) : hasher,
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
