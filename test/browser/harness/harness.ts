/**
 * The page the Chromium tests drive: `window.harness` wraps the browser runtime so a test
 * can load, run and inspect with one `page.evaluate` and get plain JSON back.
 */
import { createStore, getMany, set } from 'idb-keyval';
import { type Digest, digestHex } from '../../../common/digest.ts';
import { sampleFeeds } from '../../../common/sample-input.ts';
import type { Device, Engine, GenerateOptions, LoraOverlay, Pipeline, PipelineInfo, ProgressEvent } from '../../../common/pipeline.ts';
import { createLoader, type Loader } from '../../../common/loader/index.ts';
import { MemoryStore } from '../../../common/store.ts';
import { createWorkerHasher } from '../../../web/worker-hasher.ts';
import { StallSafeBlob } from '../../../web/blob-reads.ts';
import { BlobFiles } from '../../../web/blob-files.ts';
import { type GenerateTimes, timeAlternating, timeGenerate } from '../../support/generate-replay.ts';
import { type BrowserLoader, createBrowserLoader, createOrtEngine, type OrtBuild, persist, webgpuAdapter } from '../../../web/index.ts';
// LoRA switching (test/browser/lora-switch.test.ts, test/bench/overlay.ts): `window.loraSwitch`.
import './lora-switch.ts';
// The loader in a Web Worker (test/browser/worker.test.ts): `window.workerHarness`.
import './worker-harness.ts';

export interface HarnessLoad {
  origin: string;
  model: string;
  tag?: string;
  fingerprint?: string;
  device?: Device;
  /** Reuse the page's loader (memory tier and pipeline cache) instead of a fresh one. */
  reuse?: boolean;
  /** With reuse: dispose the pipeline after all, so the next load builds it again (from the loader's memory tier). */
  dispose?: boolean;
  budgetBytes?: number;
  /** Parallel blob downloads (the loader's default when absent). */
  concurrency?: number;
  /** Diagnostics: a MemoryStore as the persistent tier, to time a load without IndexedDB writes. */
  memoryStore?: boolean;
  /**
   * Keep this pipeline open for the page's life, on a loader of its own (a MemoryStore, nothing
   * shared with other loads). onnxruntime-web keeps its WebGPU context, and every shader it
   * compiled, only while some session lives: a test that opens and disposes many WebGPU pipelines
   * holds one, or each would compile every shader again (12 s for the sample on SwiftShader).
   */
  hold?: boolean;
  /** Abort once a download event for `file` reports at least `loaded` bytes. */
  abortWhen?: { file: string; loaded: number };
  /** Return the progress events (default true; the bench turns them off). */
  keepEvents?: boolean;
  /** Diagnostics: false hashes on the loader's thread instead of in workers (BrowserLoaderOptions.hashInWorkers). */
  hashInWorkers?: boolean;
  /** Diagnostics: when each (phase, file) was first and last reported, in ms from the call (`result.timeline`). */
  timeline?: boolean;
  /**
   * Holds the tag's response back until the loader has begun reading every one of these blobs from
   * IndexedDB, or for a second (`result.tagHeld`: whether they were all begun first).
   */
  holdTagUntilRead?: string[];
  /** onnxruntime-web's build (default: the engine's own choice, JSPI where the browser has it). */
  ortBuild?: OrtBuild;
  /** False: downloads the engine reads as Blobs are gathered in memory, not in OPFS files (BrowserLoaderOptions.filesOnDisk). */
  filesOnDisk?: boolean;
  /** The loader's memory tier (BrowserLoaderOptions.memoryBudgetBytes): weights that do not fit it are downloaded as Blobs. */
  memoryBudgetBytes?: number;
  /** BrowserLoaderOptions.inMemoryLoadBytes: weights past it are downloaded into files and handed over as Blobs. */
  inMemoryLoadBytes?: number;
  /** Run the sample model on these feeds and return the output. */
  run?: { seed: number; width: number; height: number };
  /** Load-time LoRA overlays. */
  loras?: LoraOverlay[];
  /** With memoryStore: weights of at least this many elements merge on onnxruntime (0: all of them). */
  overlayOrtMinElements?: number;
  /** Run these components' sessions (a pipeline's `sessions[role]`) on these feeds. */
  components?: Record<string, Record<string, { type: string; dims: number[]; data: number[] }>>;
  /** Generate on a text-to-image pipeline (latents as a plain array). */
  generate?: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'> & {
    latents?: number[];
    /** Abort a first generate after this many steps, then generate again (the pipeline must still work). */
    abortAfterStep?: number;
  };
  /**
   * test/bench/generate.ts: time `images` generates (after `warmup` more), and the same session
   * calls as a bare loop; with `versus`, generate with these options and with `versus` in turn instead.
   */
  generateBench?: { options: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'>; images: number; warmup?: number; versus?: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'> };
}

/** The engine's device counters (WebGPU), zero on WASM. */
export interface DeviceCounters {
  readbacks: number;
  liveTensors: number;
}

export interface HarnessResult {
  ok: boolean;
  /** ms from the call until its blobs were handed to the engine (the first `session` event): weight shards may still be hashing. */
  blobsReadyMs?: number;
  /** ms from the call until loadPipeline resolved (sessions built); `ms` is until verified() too (and the runs asked for). */
  resolvedMs?: number;
  /** ms from the call until every store write behind the load had finished (`loader.flush()`). */
  storedMs?: number;
  error?: { name: string; code?: string; message: string };
  info?: Omit<PipelineInfo, 'manifest'>;
  output?: { dims: number[]; data: number[] };
  /** Per component run: output name → values. */
  componentOutputs?: Record<string, Record<string, number[]>>;
  /**
   * What generate() gave: RGBA bytes, size, UNet calls and the steps reported; the device's copies
   * back to the CPU during the generate, and how many more device tensors were held after it than
   * before (WebGPU; the pipeline's own, such as uploaded weights, are not the generate's).
   */
  image?: {
    width: number;
    height: number;
    rgba: number[];
    unetCalls: number;
    steps: number[];
    deviceResident: boolean;
    readbacks: number;
    heldAfter: number;
  };
  /** With abortAfterStep: how the first generate ended, and how many more device tensors were held after it than before. */
  aborted?: { code?: string; message: string; heldAfter: number };
  /** With generateBench: ms per image for generate and for the bare loop of its session calls, device readbacks per generate; or ms per image of each side of `versus`. */
  generateBench?: (GenerateTimes & { readbacks: number }) | { versus: { ms: number[]; versusMs: number[]; readbacks: number; versusReadbacks: number; deviceResident: boolean; versusDeviceResident: boolean } };
  /** The ORT build the engine ran, and what each external-data file it was given held (`Blob` or `Uint8Array`), per session in order. */
  engine?: {
    build: OrtBuild;
    externalData: ('File' | 'Blob' | 'Uint8Array')[][];
    /** Streams ORT opened on stored shards through StallSafeBlob while it built sessions (web/blob-reads.ts). */
    stallSafeStreams: number;
  };
  events: ProgressEvent[];
  /** With `holdTagUntilRead`: whether every blob named was being read from IndexedDB before the tag answered. */
  tagHeld?: { readFirst: boolean };
  /** With `timeline`: `<phase> <file prefix>` → [first, last] ms from the call. */
  timeline?: Record<string, [number, number]>;
  warnings: string[];
  ms: number;
}

let shared: BrowserLoader | null = null;
const warnings: string[] = [];
/** What the last fresh loader's engine was given (`HarnessResult.engine`). */
let engineSeen: NonNullable<HarnessResult['engine']> | null = null;

/** Streams of stored shards onnxruntime-web opened through StallSafeBlob (web/blob-reads.ts) while an engine built a session. */
const safeStreams = { watching: 0, count: 0 };
const safeStream = StallSafeBlob.prototype.stream;
StallSafeBlob.prototype.stream = function (this: StallSafeBlob) {
  if (safeStreams.watching > 0) safeStreams.count++;
  return safeStream.call(this);
};

/** The ORT engine, recording what kind of external data each session was made from. */
function recordingEngine(build: OrtBuild | undefined): Engine {
  const engine = createOrtEngine({ build });
  const seen: NonNullable<HarnessResult['engine']> = { build: engine.build, externalData: [], stallSafeStreams: 0 };
  engineSeen = seen;
  return {
    ...engine,
    providers: (device) => engine.providers(device),
    weightFeeding: (provider) => engine.weightFeeding!(provider),
    async create(graph, externalData, provider, device) {
      seen.externalData.push(externalData.map((f) => (f.data instanceof File ? 'File' : f.data instanceof Blob ? 'Blob' : 'Uint8Array')));
      const before = safeStreams.count;
      safeStreams.watching++;
      try {
        return await engine.create(graph, externalData, provider, device);
      } finally {
        safeStreams.watching--;
        seen.stallSafeStreams += safeStreams.count - before;
      }
    },
  };
}

function loaderFor(options: HarnessLoad): Loader {
  const warn = (m: string) => void warnings.push(m);
  if (options.memoryStore || options.hold) {
    return createLoader({ engine: createOrtEngine(), store: new MemoryStore(), concurrency: options.concurrency, warn, overlayOrtMinElements: options.overlayOrtMinElements });
  }
  const make = (fetch?: typeof globalThis.fetch) =>
    createBrowserLoader({ budgetBytes: options.budgetBytes, concurrency: options.concurrency, hashInWorkers: options.hashInWorkers, filesOnDisk: options.filesOnDisk, memoryBudgetBytes: options.memoryBudgetBytes, inMemoryLoadBytes: options.inMemoryLoadBytes, warn, engine: recordingEngine(options.ortBuild), fetch });
  if (options.holdTagUntilRead) return tagHolding(make, options.holdTagUntilRead);
  if (!options.reuse) return make();
  shared ??= make();
  return shared;
}

/** What the last load with `holdTagUntilRead` saw. */
let tagHeld: HarnessResult['tagHeld'];

/**
 * A loader whose requests for tags wait until it has asked IndexedDB for every blob in `digests`
 * (its store's `getBlob`, watched), or a second: what was read before the tag answered.
 */
function tagHolding(make: (fetch: typeof globalThis.fetch) => ReturnType<typeof createBrowserLoader>, digests: string[]): Loader {
  const waiting = new Set(digests);
  let allBegun!: () => void;
  const begun = new Promise<void>((resolve) => (allBegun = resolve));
  tagHeld = undefined;
  const loader = make(async (input, init) => {
    if (String(input instanceof Request ? input.url : input).includes('/tags/')) {
      const readFirst = await Promise.race([begun.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
      tagHeld = { readFirst };
    }
    return fetch(input, init);
  });
  const getBlob = loader.store.getBlob.bind(loader.store);
  loader.store.getBlob = (digest) => {
    waiting.delete(digest);
    if (waiting.size === 0) allBegun();
    return getBlob(digest);
  };
  return loader;
}

async function load(options: HarnessLoad): Promise<HarnessResult> {
  const events: ProgressEvent[] = [];
  const timeline: Record<string, [number, number]> = {};
  warnings.length = 0;
  const controller = new AbortController();
  const started = performance.now();
  let blobsReadyMs: number | undefined;
  engineSeen = null;
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
        if (options.timeline) {
          const key = `${e.phase} ${e.file.slice(0, 15)}`;
          const at = Math.round(performance.now() - started);
          timeline[key] = [timeline[key]?.[0] ?? at, at];
        }
        const when = options.abortWhen;
        if (when && e.phase === 'download' && e.file === when.file && e.loaded >= when.loaded) controller.abort(new Error('test abort'));
      },
    });
    const resolvedMs = performance.now() - started;
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
    let aborted: HarnessResult['aborted'];
    if (options.generate) {
      const { latents, abortAfterStep, ...rest } = options.generate;
      const opts = { ...rest, ...(latents ? { latents: Float32Array.from(latents) } : {}) };
      if (abortAfterStep !== undefined) {
        const controller = new AbortController();
        const live = deviceCounters(p).liveTensors;
        const e = await p
          .generate({ ...opts, signal: controller.signal, onStep: (s) => void (s.step === abortAfterStep && controller.abort(new Error('test abort'))) })
          .then((): Error & { code?: string } => new Error('generate was not aborted'), (err: unknown) => err as Error & { code?: string });
        aborted = { code: e.code, message: e.message, heldAfter: deviceCounters(p).liveTensors - live };
      }
      const steps: number[] = [];
      const before = deviceCounters(p);
      const r = await p.generate({ ...opts, onStep: (e) => void steps.push(e.step) });
      const after = deviceCounters(p);
      image = {
        width: r.image.width,
        height: r.image.height,
        rgba: Array.from(r.image.data),
        unetCalls: r.unetCalls,
        steps,
        deviceResident: r.deviceResident,
        readbacks: after.readbacks - before.readbacks,
        heldAfter: after.liveTensors - before.liveTensors,
      };
    }
    const generateBenchResult = options.generateBench ? await benchGenerate(p, options.generateBench) : undefined;
    // Runs wait for the digests themselves; a load without any waits here, so `ms` is always a verified pipeline's.
    // The info is read after: a shard refetched behind the load changes its sources.
    await p.verified();
    const { manifest: _manifest, ...info } = p.info;
    const ms = performance.now() - started;
    if ((!options.reuse && !options.hold) || options.dispose) await p.dispose();
    // Store writes finish behind the load; tests inspect IndexedDB after them.
    await loader.flush();
    const storedMs = performance.now() - started;
    return {
      ok: true,
      info,
      output,
      componentOutputs,
      image,
      aborted,
      generateBench: generateBenchResult,
      ...(engineSeen ? { engine: engineSeen } : {}),
      events: options.keepEvents === false ? [] : events,
      ...(options.timeline ? { timeline } : {}),
      ...(options.holdTagUntilRead ? { tagHeld } : {}),
      warnings: [...warnings],
      ms,
      blobsReadyMs,
      resolvedMs,
      storedMs,
    };
  } catch (e) {
    await loader.flush();
    const err = e as Error & { code?: string };
    return { ok: false, error: { name: err.name, code: err.code, message: err.message }, events, warnings: [...warnings], ms: performance.now() - started };
  }
}

function deviceCounters(p: Pipeline): DeviceCounters {
  const device = p.sessions.unet?.device;
  return { readbacks: device?.readbacks ?? 0, liveTensors: device?.liveTensors ?? 0 };
}

/** test/bench/generate.ts: generate() per image against the bare loop of its session calls, and the readbacks per image. */
async function benchGenerate(p: Pipeline, bench: NonNullable<HarnessLoad['generateBench']>): Promise<NonNullable<HarnessResult['generateBench']>> {
  const readbacks = async (options: GenerateOptions) => {
    const before = deviceCounters(p).readbacks;
    const r = await p.generate(options);
    return { readbacks: deviceCounters(p).readbacks - before, deviceResident: r.deviceResident };
  };
  if (bench.versus) {
    const a = await readbacks(bench.options);
    const b = await readbacks(bench.versus);
    const { aMs, bMs } = await timeAlternating(p, bench.options, bench.versus, bench.images, bench.warmup);
    return { versus: { ms: aMs, versusMs: bMs, readbacks: a.readbacks, versusReadbacks: b.readbacks, deviceResident: a.deviceResident, versusDeviceResident: b.deviceResident } };
  }
  const times = await timeGenerate(p, bench.options, bench.images, { warmup: bench.warmup });
  return { ...times, readbacks: (await readbacks(bench.options)).readbacks };
}

/** verifiedSession's hashing workers (made on its first call). */
let benchHasher: ReturnType<typeof createWorkerHasher> | null = null;

/**
 * A WASM session from blob bodies already in hand (`urls[0]`'s is the graph, each shard's path its
 * URL's last segment), released again: what the peers' paths end in. Returns when it was built.
 */
async function peerSession(urls: string[], bodies: Uint8Array[]): Promise<number> {
  const hex = (u: string) => u.slice(u.lastIndexOf('/') + 1);
  const session = await createOrtEngine().create(bodies[0], bodies.slice(1).map((data, i) => ({ path: hex(urls[i + 1]), data })), 'wasm', 'wasm');
  const built = performance.now();
  await session.release();
  return built;
}

/** The records of `digests`, read straight from the loader's IndexedDB database as bytes (a Blob record read whole). */
async function idbBodies(digests: string[]): Promise<Uint8Array[]> {
  const values = await getMany<Blob | Uint8Array | undefined>(digests.map((d) => `blob:${d}`), createStore('fuseload', 'blobs'));
  if (values.some((v) => !v)) throw new Error('IndexedDB read: a blob is missing');
  return Promise.all(values.map(async (v) => (v instanceof Blob ? new Uint8Array(await v.arrayBuffer()) : v!)));
}

/** The names in an OPFS folder. */
async function namesIn(folder: FileSystemDirectoryHandle): Promise<string[]> {
  const names: string[] = [];
  for await (const name of (folder as unknown as { keys(): AsyncIterable<string> }).keys()) names.push(name);
  return names;
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
  /** The same records read straight from the loader's IndexedDB database, as bytes (a Blob record read whole). */
  async idbRead(digests: string[]): Promise<number> {
    const t = performance.now();
    await idbBodies(digests);
    return performance.now() - t;
  },
  /**
   * idbRead's path to a usable session: the same records read whole from the loader's database, then
   * an onnxruntime-web session from those bytes, nothing verified. `digests[0]` is the graph; shard
   * paths are their digests' hex, as the loader names them.
   */
  async idbSession(digests: string[]): Promise<number> {
    const t = performance.now();
    const bodies = await idbBodies(digests);
    return (await peerSession(digests.map((d) => `/${digestHex(d as Digest)}`), bodies)) - t;
  },
  /** Writes the blobs into a database of their own as Uint8Array records (the layout before Blob records). */
  async idbArrayBufferFill(urls: string[]): Promise<void> {
    const db = createStore('fuseload-bench-arraybuffer', 'blobs');
    for (const u of urls) await set(u, new Uint8Array(await (await fetch(u, { cache: 'no-store' })).arrayBuffer()), db);
  },
  /** Reads those Uint8Array records back: a raw read of the same bytes in the older layout. */
  async idbArrayBufferRead(urls: string[]): Promise<number> {
    const db = createStore('fuseload-bench-arraybuffer', 'blobs');
    const t = performance.now();
    const values = await getMany<Uint8Array>(urls, db);
    if (values.some((v) => !v)) throw new Error('idbArrayBufferRead: a blob is missing');
    return performance.now() - t;
  },
  /**
   * The peer's whole warm path, for the end-to-end ratio: the Cache API read (as transformers.js
   * does) and an onnxruntime-web session from those bytes, nothing verified. `urls[0]` is the graph.
   */
  async cacheApiSession(urls: string[]): Promise<number> {
    const cache = await caches.open('fuseload-bench');
    const t = performance.now();
    const bodies = await Promise.all(urls.map(async (u) => new Uint8Array(await (await cache.match(u))!.arrayBuffer())));
    return (await peerSession(urls, bodies)) - t;
  },
  /**
   * The least a verifying warm load does, with no loader around it: a session from the stored Blob
   * records (as the loader hands them to onnxruntime-web) while a pool of hashing workers of its own
   * (web/worker-hasher.ts, the loader's kind) hashes the same records. `digests[0]` is the graph.
   */
  async verifiedSession(digests: string[]): Promise<number> {
    const db = createStore('fuseload', 'blobs');
    const found = await getMany<Blob | undefined>(digests.map((d) => `blob:${d}`), db);
    if (found.some((r) => !(r instanceof Blob))) throw new Error('verifiedSession: a record is missing or not a Blob');
    const records = found as Blob[];
    const graph = new Uint8Array(await records[0].arrayBuffer());
    benchHasher ??= createWorkerHasher() ?? null;
    if (!benchHasher) throw new Error('verifiedSession: no Web Workers to hash in');
    const hasher = benchHasher;
    const t = performance.now();
    const [session, hashes] = await Promise.all([
      createOrtEngine().create(graph, records.slice(1).map((data, i) => ({ path: digestHex(digests[i + 1] as Digest), data })), 'wasm', 'wasm'),
      Promise.all(records.slice(1).map((r) => hasher.blob(r))),
    ]);
    const ms = performance.now() - t;
    await session.release();
    if (hashes.some((h, i) => h !== digests[i + 1])) throw new Error('verifiedSession: a stored record does not hash to its digest');
    return ms;
  },
  /**
   * The peer's whole cold path: every body fetched whole (as transformers.js does, its Cache API
   * write left out) and an onnxruntime-web session from those bytes, nothing verified. `urls[0]` is the graph.
   */
  async fetchSession(urls: string[]): Promise<number> {
    const t = performance.now();
    const bodies = await Promise.all(urls.map(async (u) => new Uint8Array(await (await fetch(u, { cache: 'no-store' })).arrayBuffer())));
    return (await peerSession(urls, bodies)) - t;
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
  /** Flips one byte of a stored blob, as disk corruption or a meddling extension would (`asBytes`: rewritten in the older Uint8Array layout). */
  async tamper(digest: string, asBytes = false) {
    const db = createStore('fuseload', 'blobs');
    const loader = createBrowserLoader();
    const bytes = await loader.store.get(digest as `sha256:${string}`);
    if (!bytes) throw new Error(`tamper: ${digest} is not in IndexedDB`);
    const copy = bytes.slice();
    copy[copy.length >> 1] ^= 0xff;
    await set(`blob:${digest}`, asBytes ? copy : new Blob([copy]), db);
  },
  /** The fingerprint IndexedDB keeps as the hint for a tag's URL (IdbStore.tagHint), or null. */
  async tagHint(url: string): Promise<string | null> {
    return (await createBrowserLoader().store.tagHint(url))?.fingerprint ?? null;
  },
  /** What each blob's IndexedDB record holds: 'Blob', 'Uint8Array', … or 'missing'. */
  async recordKinds(digests: string[]): Promise<string[]> {
    const values = await getMany<unknown>(digests.map((d) => `blob:${d}`), createStore('fuseload', 'blobs'));
    return values.map((v) => (v === undefined ? 'missing' : (v as object).constructor.name));
  },
  /** The blobs (digest hex) of the OPFS files behind downloaded records (web/blob-files.ts: `<hex>.<random>`), sorted; `names`: the whole file names. */
  async diskFiles({ names: whole = false }: { names?: boolean } = {}): Promise<string[]> {
    const root = await navigator.storage.getDirectory();
    const folder = await root.getDirectoryHandle('fuseload.files').catch(() => null);
    const names = folder ? await namesIn(folder) : [];
    return names.map((name) => (whole ? name : name.slice(0, 64))).sort();
  },
  /**
   * A download's file let go (`release`) while another writer still has it open for `lockedMs`, as a
   * writable aborted a moment earlier can: removing it fails until then (NoModificationAllowedError).
   * Returns the files of a folder of its own left once `release` resolved.
   */
  async releaseLockedFile(lockedMs: number): Promise<string[]> {
    const files = new BlobFiles('fuseload-locked-test.files');
    const sink = (await files.sink(`sha256:${'cd'.repeat(32)}`, 8))!;
    await sink.write(new Uint8Array(8), 0);
    await sink.finish();
    const folder = await (await navigator.storage.getDirectory()).getDirectoryHandle('fuseload-locked-test.files');
    const [name] = await namesIn(folder);
    const other = await (await folder.getFileHandle(name)).createWritable({ keepExistingData: true });
    const unlocked = new Promise((resolve) => setTimeout(resolve, lockedMs)).then(() => other.close());
    await sink.release();
    await unlocked;
    return namesIn(folder);
  },
  /** Leaves a file with no record behind, as a load that died mid-download would. */
  async strandDiskFile(name: string): Promise<void> {
    const folder = await (await navigator.storage.getDirectory()).getDirectoryHandle('fuseload.files', { create: true });
    const writable = await (await folder.getFileHandle(name, { create: true })).createWritable();
    await writable.write(new Uint8Array(1024));
    await writable.close();
  },
  /** Rewrites a stored blob, unchanged, in the layout before Blob records (a Uint8Array), as an older version of the store left it. */
  async rewriteAsBytes(digest: string) {
    const bytes = await createBrowserLoader().store.get(digest as `sha256:${string}`);
    if (!bytes) throw new Error(`rewriteAsBytes: ${digest} is not in IndexedDB`);
    await set(`blob:${digest}`, bytes, createStore('fuseload', 'blobs'));
  },
};

declare global {
  interface Window {
    harness: typeof harness;
  }
}
window.harness = harness;
document.title = 'harness ready';
