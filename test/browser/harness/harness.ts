/**
 * The page the Chromium tests drive: `window.harness` wraps the browser runtime so a test
 * can load, run and inspect with one `page.evaluate` and get plain JSON back.
 */
import { createStore, get, getMany, set } from 'idb-keyval';
import { sampleFeeds } from '../../../common/sample-input.ts';
import type { Device, GenerateOptions, LoraOverlay, PipelineInfo, ProgressEvent } from '../../../common/pipeline.ts';
import { createLoader, type Loader } from '../../../common/loader/index.ts';
import { MemoryStore } from '../../../common/store.ts';
import { type BrowserLoader, createBrowserLoader, createOrtEngine, persist, webgpuAdapter } from '../../../web/index.ts';

export interface HarnessLoad {
  origin: string;
  model: string;
  tag?: string;
  fingerprint?: string;
  device?: Device;
  /** Reuse the page's loader (memory tier and pipeline cache) instead of a fresh one. */
  reuse?: boolean;
  budgetBytes?: number;
  /** Parallel blob downloads (the loader's default when absent). */
  concurrency?: number;
  /** Diagnostics: a MemoryStore as the persistent tier, to time a load without IndexedDB writes. */
  memoryStore?: boolean;
  /** Abort once a download event for `file` reports at least `loaded` bytes. */
  abortWhen?: { file: string; loaded: number };
  /** Return the progress events (default true; the bench turns them off). */
  keepEvents?: boolean;
  /** Run the sample model on these feeds and return the output. */
  run?: { seed: number; width: number; height: number };
  /** Load-time LoRA overlays. */
  loras?: LoraOverlay[];
  /** With memoryStore: weights of at least this many elements merge on onnxruntime (0: all of them). */
  overlayOrtMinElements?: number;
  /** Run these components' sessions (a pipeline's `sessions[role]`) on these feeds. */
  components?: Record<string, Record<string, { type: string; dims: number[]; data: number[] }>>;
  /** Generate on a text-to-image pipeline (latents as a plain array). */
  generate?: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'> & { latents?: number[] };
}

export interface HarnessResult {
  ok: boolean;
  /** ms from the call until every blob was in memory, verified (the first `session` event). */
  blobsReadyMs?: number;
  /** ms from the call until every store write behind the load had finished (`loader.flush()`). */
  storedMs?: number;
  error?: { name: string; code?: string; message: string };
  info?: Omit<PipelineInfo, 'manifest'>;
  output?: { dims: number[]; data: number[] };
  /** Per component run: output name → values. */
  componentOutputs?: Record<string, Record<string, number[]>>;
  /** What generate() gave: RGBA bytes, size, UNet calls and the steps reported. */
  image?: { width: number; height: number; rgba: number[]; unetCalls: number; steps: number[] };
  events: ProgressEvent[];
  warnings: string[];
  ms: number;
}

let shared: BrowserLoader | null = null;
const warnings: string[] = [];

function loaderFor(options: HarnessLoad): Loader {
  const warn = (m: string) => void warnings.push(m);
  if (options.memoryStore) {
    return createLoader({ engine: createOrtEngine(), store: new MemoryStore(), concurrency: options.concurrency, warn, overlayOrtMinElements: options.overlayOrtMinElements });
  }
  const make = () => createBrowserLoader({ budgetBytes: options.budgetBytes, concurrency: options.concurrency, warn });
  if (!options.reuse) return make();
  shared ??= make();
  return shared;
}

async function load(options: HarnessLoad): Promise<HarnessResult> {
  const events: ProgressEvent[] = [];
  warnings.length = 0;
  const controller = new AbortController();
  const started = performance.now();
  let blobsReadyMs: number | undefined;
  const loader = loaderFor(options);
  try {
    const p = await loader.loadPipeline({
      origin: options.origin,
      model: options.model,
      tag: options.tag,
      fingerprint: options.fingerprint,
      device: options.device,
      loras: options.loras,
      signal: controller.signal,
      onProgress: (e) => {
        events.push(e);
        if (e.phase === 'session' && blobsReadyMs === undefined) blobsReadyMs = performance.now() - started;
        const when = options.abortWhen;
        if (when && e.phase === 'download' && e.file === when.file && e.loaded >= when.loaded) controller.abort(new Error('test abort'));
      },
    });
    const { manifest: _manifest, ...info } = p.info;
    let output: HarnessResult['output'];
    if (options.run) {
      const out = await p.run(sampleFeeds(options.run));
      const image = out.image;
      output = { dims: [...image.dims], data: Array.from(image.data as Float32Array) };
    }
    let componentOutputs: HarnessResult['componentOutputs'];
    if (options.components) {
      componentOutputs = {};
      for (const [role, feeds] of Object.entries(options.components)) {
        const session = p.sessions[role as keyof typeof p.sessions];
        if (!session) throw new Error(`harness: no ${role} session`);
        const typed = Object.fromEntries(
          Object.entries(feeds).map(([name, t]) => [name, { type: t.type, dims: t.dims, data: t.type === 'int32' ? Int32Array.from(t.data) : Float32Array.from(t.data) }]),
        );
        const out = await session.run(typed);
        componentOutputs[role] = Object.fromEntries(Object.entries(out).map(([name, t]) => [name, Array.from(t.data as Float32Array)]));
      }
    }
    let image: HarnessResult['image'];
    if (options.generate) {
      const steps: number[] = [];
      const { latents, ...rest } = options.generate;
      const r = await p.generate({ ...rest, ...(latents ? { latents: Float32Array.from(latents) } : {}), onStep: (e) => void steps.push(e.step) });
      image = { width: r.image.width, height: r.image.height, rgba: Array.from(r.image.data), unetCalls: r.unetCalls, steps };
    }
    const ms = performance.now() - started;
    if (!options.reuse) await p.dispose();
    // Store writes finish behind the load; tests inspect IndexedDB after them.
    await loader.flush();
    const storedMs = performance.now() - started;
    return { ok: true, info, output, componentOutputs, image, events: options.keepEvents === false ? [] : events, warnings: [...warnings], ms, blobsReadyMs, storedMs };
  } catch (e) {
    await loader.flush();
    const err = e as Error & { code?: string };
    return { ok: false, error: { name: err.name, code: err.code, message: err.message }, events, warnings: [...warnings], ms: performance.now() - started };
  }
}

/** Baselines for test/bench/browser-load.ts: the same bytes without the loader. Each returns ms. */
const bench = {
  /** The best a page does with bare fetch: every URL at once, whole bodies. */
  async bareFetch(urls: string[]): Promise<number> {
    const t = performance.now();
    const bodies = await Promise.all(urls.map((u) => fetch(u, { cache: 'no-store' }).then((r) => r.arrayBuffer())));
    if (bodies.some((b) => b.byteLength === 0)) throw new Error('empty body');
    return performance.now() - t;
  },
  /** Bare fetch plus one SHA-256 per body: the least any verifying loader must do. */
  async fetchAndHash(urls: string[]): Promise<number> {
    const t = performance.now();
    await Promise.all(urls.map(async (u) => crypto.subtle.digest('SHA-256', await (await fetch(u, { cache: 'no-store' })).arrayBuffer())));
    return performance.now() - t;
  },
  /** The same records read straight from the loader's IndexedDB database. */
  async idbRead(digests: string[]): Promise<number> {
    const db = createStore('fuseload', 'blobs');
    const t = performance.now();
    const values = await getMany<Uint8Array>(digests.map((d) => `blob:${d}`), db);
    if (values.some((v) => !v)) throw new Error('idbRead: a blob is missing');
    return performance.now() - t;
  },
  /** The same reads plus one SHA-256 per record as it arrives: the least a verifying warm loader must do. */
  async idbReadAndHash(digests: string[]): Promise<number> {
    const db = createStore('fuseload', 'blobs');
    const t = performance.now();
    await Promise.all(
      digests.map(async (d) => {
        const value = await get<Uint8Array>(`blob:${d}`, db);
        if (!value) throw new Error('idbReadAndHash: a blob is missing');
        await crypto.subtle.digest('SHA-256', value as Uint8Array<ArrayBuffer>);
      }),
    );
    return performance.now() - t;
  },
  /** Fills the Cache API with the blobs (as transformers.js and others cache models). */
  async cacheApiFill(urls: string[]): Promise<void> {
    const cache = await caches.open('fuseload-bench');
    await Promise.all(urls.map(async (u) => cache.put(u, await fetch(u, { cache: 'no-store' }))));
  },
  /** Reads them back as ArrayBuffers, which is what a loader on the Cache API does when warm. */
  async cacheApiRead(urls: string[]): Promise<number> {
    const cache = await caches.open('fuseload-bench');
    const t = performance.now();
    const bodies = await Promise.all(urls.map(async (u) => (await cache.match(u))!.arrayBuffer()));
    if (bodies.some((b) => !b)) throw new Error('cacheApiRead: a blob is missing');
    return performance.now() - t;
  },
};

const harness = {
  load,
  bench,
  webgpuAdapter,
  persist,
  async cacheInfo() {
    return (shared ?? createBrowserLoader()).store.info();
  },
  async clearCache() {
    await (shared ?? createBrowserLoader()).store.clear();
  },
  /** Flips one byte of a stored blob, as disk corruption or a meddling extension would. */
  async tamper(digest: string) {
    const db = createStore('fuseload', 'blobs');
    const loader = createBrowserLoader();
    const bytes = await loader.store.get(digest as `sha256:${string}`);
    if (!bytes) throw new Error(`tamper: ${digest} is not in IndexedDB`);
    const copy = bytes.slice();
    copy[copy.length >> 1] ^= 0xff;
    await set(`blob:${digest}`, copy, db);
  },
};

declare global {
  interface Window {
    harness: typeof harness;
  }
}
window.harness = harness;
document.title = 'harness ready';
