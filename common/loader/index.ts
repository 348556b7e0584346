/**
 * The runtime-neutral loader (DESIGN.md, "Caching, one rule everywhere"): tag → manifest →
 * every blob by digest (memory → store → network, verified before use) → engine session
 * on the first provider that works. The browser runtime (web/) and the Node runtime
 * (tools/) supply the Engine, the BlobStore and the lock; everything else lives here.
 */
import pLimit from 'p-limit';
import { type Digest, digestHex, sha256, toDigest } from '../digest.ts';
import { FuseloadError, isFuseloadError } from '../errors.ts';
import { blobKey, isName, manifestKey, tagKey } from '../keys.ts';
import { type BlobRef, type Manifest, decodeManifest, manifestBlobs, parseTag } from '../manifest.ts';
import type {
  CacheSource,
  Engine,
  EngineSession,
  ExternalDataFile,
  Feeds,
  LoadPipelineOptions,
  Pipeline,
  PipelineInfo,
  ProgressEvent,
  ProgressPhase,
  Provider,
} from '../pipeline.ts';
import { type BlobStore, MemoryStore } from '../store.ts';
import { abortError, downloadBlob, throwIfAborted } from './download.ts';
import { createOverlayRuntime, type OverlayLora, overlayKey, resolveOverlays } from './overlay.ts';

/**
 * An engine that can also build a session from files where the store keeps the blobs
 * (onnxruntime-node maps them), so a warm load reads no weight bytes into memory itself.
 */
export interface FileEngine extends Engine {
  /**
   * `graph` is the graph blob's file; each shard's `file` is its blob's file, `path` the name the
   * graph's `location` gives it. Null when it cannot use the files as they lie: the loader then
   * reads the bytes and calls `create`.
   */
  createFromFiles(graph: string, externalData: { path: string; file: string }[], provider: Provider): Promise<EngineSession | null>;
}

export interface LoaderRuntime {
  engine: Engine | FileEngine;
  /** Persistent tier: IndexedDB (browser) / disk (Node). */
  store: BlobStore;
  /** Default globalThis.fetch. */
  fetch?: typeof fetch;
  /** One download per blob across tabs/processes (Web Locks, lock files). Default: none. */
  withLock?: <T>(name: string, fn: () => Promise<T>, onContended?: () => void) => Promise<T>;
  /**
   * Hold a load's store writes until its blobs are all in memory (default false), so writing
   * does not compete with downloading and hashing. Only with a `withLock` that calls
   * `onContended` before it waits: a waiter then releases every held-back write, so two tabs
   * each holding one blob's lock cannot wait on each other (and a timer bounds the rest).
   */
  deferStoreWrites?: boolean;
  /** Parallel blob downloads, default 4. */
  concurrency?: number;
  /**
   * Bytes of blobs the memory tier keeps (LRU; default unlimited). A long-lived server should
   * set one: sessions hold their own weights, and what is dropped is read from the store again.
   */
  memoryBudgetBytes?: number;
  /** Default console.warn. */
  warn?: (message: string) => void;
  /** Load-time LoRA overlays: weights with at least this many elements merge on onnxruntime, smaller ones in JS (default 2^20). */
  overlayOrtMinElements?: number;
}

export interface Loader {
  loadPipeline(options: LoadPipelineOptions): Promise<Pipeline>;
  /** The memory tier, shared by all artifacts. */
  readonly memory: MemoryStore;
  /** Drops blobs and cached pipelines held in memory (sessions still in use stay alive until disposed). */
  clearMemory(): Promise<void>;
  /**
   * Resolves once every store write started so far has finished. A load resolves as soon as its
   * blobs are verified; writing them to the store goes on behind it (the blob's lock is held until then).
   */
  flush(): Promise<void>;
}

/** A built session shared by every Pipeline handle for the same cache key. */
interface CachedSession {
  session: EngineSession;
  info: PipelineInfo;
  handles: number;
  released: boolean;
}

export function createLoader(runtime: LoaderRuntime): Loader {
  const memory = new MemoryStore(runtime.memoryBudgetBytes);
  const { engine, store } = runtime;
  const fetchFn = runtime.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const withLock = runtime.withLock ?? (<T>(_name: string, fn: () => Promise<T>) => fn());
  const warn = runtime.warn ?? ((message: string) => console.warn(`fuseload: ${message}`));
  const limit = pLimit(runtime.concurrency ?? 4);
  const sessions = new Map<string, Promise<CachedSession>>();
  /** Store writes still running after their load went on (store-behind). */
  const pendingWrites = new Set<Promise<unknown>>();
  /** Held-back writes of loads still running (deferStoreWrites), each a gate's opener. */
  const gates = new Set<() => void>();
  const openGates = () => {
    for (const open of gates) open();
  };
  const overlay = createOverlayRuntime({ engine, memory, store, fetch: fetchFn, warn, ortMinElements: runtime.overlayOrtMinElements });

  async function loadPipeline(options: LoadPipelineOptions): Promise<Pipeline> {
    const { signal } = options;
    const origin = normalizeOrigin(options.origin);
    if (!isName(options.model)) throw new FuseloadError('bad-input', `model: "${options.model}" is not a model name`);
    const overlays = resolveOverlays(options.loras);
    const progress = new Progress(options.onProgress);
    throwIfAborted(signal, options.model);

    const { fingerprint, manifest, fetched } = await resolveManifest(origin, options, progress);
    // A fetched manifest is stored once the load's blobs are in hand: written earlier, under a
    // byte budget it could evict a stored blob this very load is about to read.
    const keepManifest = async () => {
      if (fetched) await store.put(fingerprint, fetched).catch((e) => warn(`${manifestKey(fingerprint)}: not cached (${errorText(e)})`));
    };
    const providers = engine.providers(options.device ?? 'auto');
    if (providers.length === 0) throw new FuseloadError('unsupported', `device: "${options.device}" names no provider this runtime has`);
    // LoRA files first: a URL's digest is only known once fetched, and it names the overlay in the key.
    const loras = overlays.length
      ? await overlay.fetchLoras(origin, overlays, { download: (file, loaded, total) => progress.emit('download', file, loaded, total) }, signal)
      : [];
    const prefix = `${fingerprint}|${overlayKey(loras)}|`;

    // The pipeline cache: keyed by the provider chain asked for, and by the provider that ran
    // (so device 'webgpu' finds what 'auto' built on WebGPU).
    const cached = sessions.get(prefix + providers.join(','));
    if (cached) {
      const entry = await cached.catch(() => null);
      if (entry && !entry.released) {
        await keepManifest();
        return handle(entry, true);
      }
    }
    const building = build(origin, options.model, fingerprint, manifest, loras, providers, progress, signal);
    const key = prefix + providers.join(',');
    sessions.set(key, building);
    try {
      const entry = await building;
      sessions.set(prefix + entry.info.provider, building);
      await keepManifest();
      return handle(entry, false);
    } catch (e) {
      if (sessions.get(key) === building) sessions.delete(key);
      throw e;
    }
  }

  async function build(
    origin: string,
    model: string,
    fingerprint: Digest,
    manifest: Manifest,
    overlays: OverlayLora[],
    providers: Provider[],
    progress: Progress,
    signal: AbortSignal | undefined,
  ): Promise<CachedSession> {
    const refs = manifestBlobs(manifest);
    progress.total = refs.reduce((n, r) => n + r.size, 0);
    // Overlays need the bytes of the shards they change; without any, try the stored files as they lie.
    const mapped = overlays.length === 0 ? await buildFromStoreFiles(model, fingerprint, manifest, refs, providers, progress, signal) : null;
    if (mapped) return mapped;
    const sources: Record<Digest, CacheSource> = {};
    let bytesFetched = 0;
    for (const lora of overlays) {
      sources[lora.digest] = lora.source;
      bytesFetched += lora.bytesFetched;
    }
    const blobs = new Map<Digest, Uint8Array>();
    // Abort siblings as soon as one blob fails, so a bad load stops promptly.
    const stop = new AbortController();
    const forward = () => stop.abort(signal?.reason);
    signal?.addEventListener('abort', forward, { once: true });
    const gate = writeGate();
    try {
      await Promise.all(
        // Not under `limit`: memory and store reads all start at once (getBlob limits downloads).
        refs.map((ref) =>
          (async () => {
            throwIfAborted(stop.signal, model);
            const got = await getBlob(origin, ref, progress, stop.signal, gate.wait);
            sources[ref.digest] = got.source;
            bytesFetched += got.bytesFetched;
            blobs.set(ref.digest, got.bytes);
          })().catch((e) => {
            if (!stop.signal.aborted) stop.abort(e);
            throw e;
          }),
        ),
      );
    } catch (e) {
      if (signal?.aborted) throw abortError(model, signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', forward);
      gate.open(); // every blob is in memory (or the load failed): its verified blobs may be written now
    }

    const graph = blobs.get(manifest.graph.digest)!;
    const shards: ExternalDataFile[] = manifest.shards.map((s) => ({ path: digestHex(s.digest), data: blobs.get(s.digest)! }));
    // The single place load-time overlays change weights (on copies; base blobs stay as stored).
    const { files, applied } = await overlay.applyOverlays(manifest, shards, overlays, providers, {
      overlay: (file, loaded, total) => progress.emit('overlay', file, loaded, total),
    });

    const fallbacks: PipelineInfo['fallbacks'] = [];
    let session: EngineSession | null = null;
    let provider: Provider | null = null;
    for (const candidate of providers) {
      throwIfAborted(signal, model);
      progress.emit('session', manifest.graph.digest, 0, 1);
      try {
        session = await engine.create(graph, files, candidate);
        provider = candidate;
        progress.emit('session', manifest.graph.digest, 1, 1);
        break;
      } catch (e) {
        const reason = e instanceof Error ? e.message : String(e);
        fallbacks.push({ provider: candidate, reason });
        warn(`${model}: ${candidate} could not run it (${reason}); trying the next provider`);
      }
    }
    if (!session || !provider) {
      throw new FuseloadError('engine', `${model}: no execution provider could run it: ${fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ')}`);
    }
    return {
      session,
      handles: 0,
      released: false,
      info: { fingerprint, manifest, provider, fallbacks, sources, bytesFetched, overlays: applied, fromPipelineCache: false },
    };
  }

  /**
   * A warm load straight from the store's files: when the store vouches for every blob's file
   * (`locate`: the same check as its `get`) and the engine takes files. Null sends the load down
   * the byte path: a blob in memory, missing or corrupt in the store, files the engine cannot
   * use, or every provider failing on them (the byte path then gives the real reason).
   */
  async function buildFromStoreFiles(
    model: string,
    fingerprint: Digest,
    manifest: Manifest,
    refs: BlobRef[],
    providers: Provider[],
    progress: Progress,
    signal: AbortSignal | undefined,
  ): Promise<CachedSession | null> {
    const createFromFiles = (engine as Partial<FileEngine>).createFromFiles?.bind(engine);
    const locate = store.locate?.bind(store);
    if (!createFromFiles || !locate) return null;
    // Bytes already in memory are cheaper than files, and were verified when they got there.
    for (const ref of refs) if (await memory.has(ref.digest)) return null;
    const files = await Promise.all(refs.map((ref) => locate(ref.digest, ref.size).catch(() => null)));
    if (files.some((f) => f === null)) return null;
    const fileOf = new Map(refs.map((ref, i) => [ref.digest, files[i]!]));
    const externalData = manifest.shards.map((s) => ({ path: digestHex(s.digest), file: fileOf.get(s.digest)! }));
    const sources: Record<Digest, CacheSource> = {};
    for (const ref of refs) {
      sources[ref.digest] = 'store';
      progress.blobDone(ref, 'store');
    }
    const fallbacks: PipelineInfo['fallbacks'] = [];
    for (const candidate of providers) {
      throwIfAborted(signal, model);
      progress.emit('session', manifest.graph.digest, 0, 1);
      let session: EngineSession | null;
      try {
        session = await createFromFiles(fileOf.get(manifest.graph.digest)!, externalData, candidate);
      } catch (e) {
        fallbacks.push({ provider: candidate, reason: e instanceof Error ? e.message : String(e) });
        continue;
      }
      if (!session) return null;
      for (const f of fallbacks) warn(`${model}: ${f.provider} could not run it (${f.reason}); trying the next provider`);
      progress.emit('session', manifest.graph.digest, 1, 1);
      return {
        session,
        handles: 0,
        released: false,
        info: { fingerprint, manifest, provider: candidate, fallbacks, sources, bytesFetched: 0, overlays: [], fromPipelineCache: false },
      };
    }
    return null;
  }

  function handle(entry: CachedSession, fromPipelineCache: boolean): Pipeline {
    entry.handles++;
    let disposed = false;
    const info: PipelineInfo = fromPipelineCache
      ? {
          ...entry.info,
          fromPipelineCache: true,
          bytesFetched: 0,
          sources: Object.fromEntries(Object.keys(entry.info.sources).map((d) => [d, 'memory'])) as PipelineInfo['sources'],
        }
      : entry.info;
    return {
      info,
      run(feeds: Feeds) {
        if (disposed) return Promise.reject(new FuseloadError('bad-input', `pipeline ${entry.info.fingerprint}: run after dispose`));
        return entry.session.run(feeds);
      },
      async dispose() {
        if (disposed) return;
        disposed = true;
        // The session is shared by every handle of this cache key: release it with the last one.
        if (--entry.handles > 0) return;
        entry.released = true;
        for (const [key, value] of sessions) if ((await value.catch(() => null)) === entry) sessions.delete(key);
        await entry.session.release();
      },
    };
  }

  /** A manifest by fingerprint needs no network when memory or the store has it. */
  async function resolveManifest(origin: string, options: LoadPipelineOptions, progress: Progress) {
    let fingerprint: Digest;
    if (options.fingerprint) {
      fingerprint = toDigest(options.fingerprint, 'fingerprint');
    } else {
      const tag = options.tag ?? 'latest';
      if (!isName(tag)) throw new FuseloadError('bad-input', `tag: "${tag}" is not a tag name`);
      const key = tagKey(options.model, tag);
      progress.emit('manifest', key, 0, 1);
      // Tags are the only mutable objects: always revalidate, never trust a cached copy.
      const bytes = await fetchSmall(`${origin}/${key}`, options.signal, 'no-cache');
      fingerprint = parseTag(bytes, key).manifest;
    }
    const key = manifestKey(fingerprint);
    progress.emit('manifest', key, 0, 1);
    for (const tier of [memory, store]) {
      const bytes = await tier.get(fingerprint).catch(() => null);
      if (!bytes) continue;
      try {
        const manifest = await decodeManifest(bytes, key, fingerprint);
        checkName(manifest, options.model, key);
        if (tier !== memory) await memory.put(fingerprint, bytes);
        progress.emit('manifest', key, 1, 1);
        return { fingerprint, manifest, fetched: null };
      } catch (e) {
        if (isFuseloadError(e) && e.code === 'digest-mismatch') {
          warn(`${key} in the ${tier.kind} cache is corrupt; fetching it again`);
          await tier.delete(fingerprint).catch(() => {});
          continue;
        }
        throw e;
      }
    }
    const bytes = await fetchSmall(`${origin}/${key}`, options.signal, 'default');
    const manifest = await decodeManifest(bytes, key, fingerprint);
    checkName(manifest, options.model, key);
    await memory.put(fingerprint, bytes);
    progress.emit('manifest', key, 1, 1);
    return { fingerprint, manifest, fetched: bytes };
  }

  async function fetchSmall(url: string, signal: AbortSignal | undefined, cache: RequestCache): Promise<Uint8Array> {
    let response: Response;
    try {
      response = await fetchFn(url, { signal, cache });
    } catch (e) {
      if (signal?.aborted) throw abortError(url, signal);
      throw new FuseloadError('network', `${url}: ${errorText(e)}`, { cause: e });
    }
    if (response.status === 404) throw new FuseloadError('not-found', `${url}: HTTP 404`);
    if (!response.ok) throw new FuseloadError('network', `${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  }

  /**
   * Where a load's store writes wait (deferStoreWrites): opened when its blobs are all in memory,
   * when any load of this loader has to wait for a lock, or after DEFER_WRITES_MAX_MS at most.
   */
  function writeGate(): { wait: Promise<void>; open: () => void } {
    if (!runtime.deferStoreWrites) return { wait: Promise.resolve(), open: () => {} };
    let release!: () => void;
    const wait = new Promise<void>((resolve) => (release = resolve));
    const open = () => {
      gates.delete(open);
      clearTimeout(timer);
      release();
    };
    const timer = setTimeout(open, DEFER_WRITES_MAX_MS);
    gates.add(open);
    return { wait, open };
  }

  /** One blob: memory → store (re-verified: a tampered record is dropped) → network under the lock. */
  async function getBlob(origin: string, ref: BlobRef, progress: Progress, signal: AbortSignal, writeAfter: Promise<void>) {
    const hit = await memory.get(ref.digest);
    if (hit) {
      progress.blobDone(ref, 'memory');
      return { bytes: hit, source: 'memory' as CacheSource, bytesFetched: 0 };
    }
    const stored = await readStore(ref, progress);
    if (stored) return { bytes: stored, source: 'store' as CacheSource, bytesFetched: 0 };

    // Store-behind: the load continues as soon as the bytes are verified, while the lock is
    // held until they are stored, so another tab waiting on it finds them in its store.
    // Downloads share the loader's concurrency limit; a slot is freed once the bytes are verified.
    return limit(() => new Promise<{ bytes: Uint8Array; source: CacheSource; bytesFetched: number }>((resolve, reject) => {
      throwIfAborted(signal, ref.digest);
      const task = withLock(`fuseload:blob:${digestHex(ref.digest)}`, async () => {
        // Another tab or process may have stored it while we waited for the lock.
        const late = (await memory.get(ref.digest)) ?? (await readStore(ref, progress));
        if (late) return resolve({ bytes: late, source: 'store', bytesFetched: 0 });
        const url = `${origin}/${blobKey(ref.digest)}`;
        const result = await downloadBlob({
          url,
          digest: ref.digest,
          size: ref.size,
          fetch: fetchFn,
          signal,
          onBytes: (received) => progress.bytes('download', ref, received),
          onVerify: () => progress.emit('verify', ref.digest, 0, ref.size),
        });
        progress.emit('verify', ref.digest, ref.size, ref.size);
        await memory.put(ref.digest, result.bytes);
        progress.emit('store', ref.digest, 0, ref.size);
        // The write waits at most for this load's own blobs (writeAfter), and a tab that has to
        // wait for a lock first releases its held-back writes: no two tabs wait on each other.
        resolve({ bytes: result.bytes, source: 'network', bytesFetched: result.bytesFetched });
        await writeAfter;
        try {
          await store.put(ref.digest, result.bytes);
          progress.emit('store', ref.digest, ref.size, ref.size);
        } catch (e) {
          // Quota or a broken store: the load goes on from memory, never a crash.
          warn(`blob ${ref.digest} not cached in ${store.kind} (${errorText(e)}); running from memory`);
        }
      }, openGates);
      pendingWrites.add(task);
      task.then(
        () => pendingWrites.delete(task),
        (e) => {
          pendingWrites.delete(task);
          reject(e);
        },
      );
    }));
  }

  async function readStore(ref: BlobRef, progress: Progress): Promise<Uint8Array | null> {
    let bytes: Uint8Array | null;
    try {
      bytes = await store.get(ref.digest);
    } catch (e) {
      warn(`blob ${ref.digest}: ${store.kind} read failed (${errorText(e)}); fetching it`);
      return null;
    }
    if (!bytes) return null;
    progress.emit('verify', ref.digest, 0, ref.size);
    // A store that verifies its own reads (DiskStore's stamp check) is not hashed twice.
    if (bytes.byteLength !== ref.size || (!store.verifiesReads && (await sha256(bytes)) !== ref.digest)) {
      warn(`blob ${ref.digest} in ${store.kind} is corrupt; fetching it again`);
      await store.delete(ref.digest).catch(() => {});
      return null;
    }
    await memory.put(ref.digest, bytes);
    progress.blobDone(ref, 'store');
    return bytes;
  }

  return {
    loadPipeline,
    memory,
    async flush() {
      while (pendingWrites.size) await Promise.allSettled([...pendingWrites]);
    },
    async clearMemory() {
      memory.clear();
      const entries = await Promise.all([...sessions.values()].map((p) => p.catch(() => null)));
      sessions.clear();
      for (const entry of new Set(entries)) {
        if (entry && entry.handles === 0 && !entry.released) {
          entry.released = true;
          await entry.session.release();
        }
      }
    },
  };
}

/** The longest a verified blob's store write is held back behind its load (deferStoreWrites). */
const DEFER_WRITES_MAX_MS = 5_000;

/** Progress for one load: per-file events plus the aggregate over every blob. */
class Progress {
  total = 0;
  readonly #received = new Map<string, number>();
  #loaded = 0;
  constructor(private readonly listener?: (event: ProgressEvent) => void) {}

  emit(phase: ProgressPhase, file: string, loaded: number, total: number): void {
    if (!this.listener) return;
    try {
      this.listener({ phase, file, loaded, total, aggregate: { loaded: this.#loaded, total: this.total } });
    } catch {
      // A throwing progress bar must not break the load.
    }
  }
  bytes(phase: ProgressPhase, ref: BlobRef, received: number): void {
    this.#loaded += received - (this.#received.get(ref.digest) ?? 0);
    this.#received.set(ref.digest, received);
    this.emit(phase, ref.digest, received, ref.size);
  }
  blobDone(ref: BlobRef, phase: 'memory' | 'store'): void {
    this.bytes(phase === 'memory' ? 'download' : 'store', ref, ref.size);
  }
}

function normalizeOrigin(origin: string): string {
  try {
    const url = new URL(origin);
    return url.href.replace(/\/+$/, '');
  } catch {
    throw new FuseloadError('bad-input', `origin: "${origin}" is not an absolute URL`);
  }
}

function checkName(manifest: Manifest, model: string, key: string): void {
  if (manifest.name !== model) throw new FuseloadError('bad-input', `${key}: manifest is for model "${manifest.name}", not "${model}"`);
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name === 'Error' ? '' : `${e.name}: `}${e.message}` : String(e);
}
