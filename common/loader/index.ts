/**
 * The runtime-neutral loader (DESIGN.md, "Caching, one rule everywhere"; docs/architecture.md):
 * tag → manifest → every component's blobs by digest (blobs.ts: memory → store → network,
 * verified before use) → load-time overlays routed per component (overlay.ts) → one session per
 * component on the first provider that works (sessions.ts). The browser runtime (web/) and the
 * Node runtime (tools/runtime/) supply the Engine, the BlobStore and the lock; the rest is here.
 */
import { type Digest, digestHex, sha256, toDigest } from '../digest.ts';
import { FuseloadError, isFuseloadError } from '../errors.ts';
import { isName, manifestKey, tagKey } from '../keys.ts';
import { type AnyManifest, type BlobRef, type Component, componentEntries, decodeManifest, type PipelineManifest, pipelineView, parseTag, type Role } from '../manifest.ts';
import { uniqueRefs } from '../manifest-walk.ts';
import { type CacheSource, type ComponentInfo, type Device, type Engine, type EngineSession, type ExternalDataFile, type Feeds, type LoadPipelineOptions, type LoraOverlay, needBytes, type Pipeline, type PipelineInfo, type Provider } from '../pipeline.ts';
import type { BlobStore, MemoryStore } from '../store.ts';
import { createBlobSource, errorText, LateDigestMismatch, type OffThreadHasher } from './blobs.ts';
import { READ_LIMITS } from './bounded-read.ts';
import { throwIfAborted } from './download.ts';
import { createOverlayRuntime, type OverlayLora, type OverlayPlan, overlayKey, type ResolvedOverlay, resolveOverlays } from './overlay.ts';
import { Progress } from './progress.ts';
import { createSession } from './sessions.ts';
import { type BaseWeights, createSwitchRuntime, type LoraSwitchMode, type LoraWeights, type SwitchableComponent, switchableGraph } from './switch.ts';
import { createGenerator, nativeImageSize } from './text-to-image.ts';

/**
 * An engine that can also build a session from files where the store keeps the blobs
 * (onnxruntime-node maps them), so a warm load reads no weight bytes into memory itself.
 */
export interface FileEngine extends Engine {
  /**
   * `graph` is the graph blob's file; each shard's `file` is its blob's file, `path` the name the
   * graph's `location` gives it. Null when it cannot use the files as they lie: the loader then
   * reads the bytes and calls `create`. `edited`, when given, is the graph to run instead of the
   * file's own bytes (the file's graph edited for LoRA switching, switchable-graph.ts), its
   * external data still the files.
   */
  createFromFiles(graph: string, externalData: { path: string; file: string }[], provider: Provider, edited?: Uint8Array): Promise<EngineSession | null>;
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
  /**
   * For an engine that reads external data from Blobs: the most weight bytes a load takes in memory
   * (default memoryBudgetBytes). Up to it, downloads come as bytes and stored records are read and
   * verified by the hasher and handed to the engine as bytes; past it, downloads go to files and
   * stored records are handed over as they are, so the load never holds its weights whole.
   */
  inMemoryLoadBytes?: number;
  /** Default console.warn. */
  warn?: (message: string) => void;
  /** Hashing off the loader's thread (the browser's Web Workers, web/worker-hasher.ts); default WebCrypto inline. */
  hasher?: OffThreadHasher;
  /** Load-time LoRA overlays: weights with at least this many elements merge on onnxruntime, smaller ones in JS (default 2^20). */
  overlayOrtMinElements?: number;
  /**
   * Switching LoRAs without a new session (switch.ts): `auto` (default) chooses per provider
   * and weight, `weights` / `branches` force one way (for measuring), false turns it off (every
   * overlay set merges into shard copies for new sessions). Needs an engine that says how it
   * takes fed weights (`Engine.weightFeeding`).
   */
  loraSwitch?: LoraSwitchMode | false;
}

export interface Loader {
  loadPipeline(options: LoadPipelineOptions): Promise<Pipeline>;
  /** The memory tier, shared by all artifacts. */
  readonly memory: MemoryStore;
  /** Drops blobs and cached pipelines held in memory (sessions still in use stay alive until disposed). */
  clearMemory(): Promise<void>;
  /**
   * Resolves once every store write started so far has finished. A load resolves once its sessions
   * are built (its last digests perhaps still being checked: `Pipeline.verified`); a blob is written to
   * the store behind it, once verified (the blob's lock is held until then).
   */
  flush(): Promise<void>;
}

/** Built sessions shared by every Pipeline handle for the same cache key. */
interface CachedPipeline {
  sessions: Partial<Record<Role, EngineSession>>;
  info: PipelineInfo;
  handles: number;
  released: boolean;
  /** Components whose sessions switch LoRAs in place (switch.ts); empty for a copy-on-merge build. */
  switchable: Map<Role, SwitchableComponent>;
  /** Their stored weights, fed on every run unless an overlay replaces one (from the build's bytes, or read on the first handle). */
  baseWeights: BaseWeights;
  /** What a switch needs again: where the blobs come from, the manifest's view, the assets. */
  origin: string;
  model: string;
  view: PipelineManifest;
  assets: Map<string, Uint8Array>;
  /**
   * Settles once every weight shard handed to the engine unhashed has been checked (rejects with the
   * first LateDigestMismatch): the load resolves before it, and every handle waits for `ready` first.
   */
  verified: Promise<void>;
  /** `verified`, or after a mismatch the sessions rebuilt from a fresh fetch (buildVerified); rejects when that fails too. */
  ready: Promise<void>;
  /** Bumped when a mismatch rebuilt the sessions in place: a handle made before rebuilds its own state from the entry. */
  generation: number;
}

/** Load-time overlays for a switchable handle: what they change (planned) and their files (for `info`). */
interface SwitchOverlays {
  plan: OverlayPlan;
  loras: OverlayLora[];
}

/** Roles in the order their sessions are created; the main component's provider is `info.provider`. */
const MAIN_ROLES: readonly Role[] = ['model', 'unet', 'transformer'];

export function createLoader(runtime: LoaderRuntime): Loader {
  const { engine, store } = runtime;
  const fetchFn = runtime.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const warn = runtime.warn ?? ((message: string) => console.warn(`fuseload: ${message}`));
  const blobs = createBlobSource({
    store,
    fetch: fetchFn,
    withLock: runtime.withLock ?? (<T>(_name: string, fn: () => Promise<T>) => fn()),
    deferStoreWrites: !!runtime.deferStoreWrites,
    concurrency: runtime.concurrency ?? 4,
    memoryBudgetBytes: runtime.memoryBudgetBytes,
    inMemoryLoadBytes: runtime.inMemoryLoadBytes,
    warn,
    hasher: runtime.hasher,
  });
  const { memory } = blobs;
  const pipelines = new Map<string, Promise<CachedPipeline>>();
  const overlay = createOverlayRuntime({ engine, memory, store, fetch: fetchFn, warn, ortMinElements: runtime.overlayOrtMinElements });
  const switchMode = runtime.loraSwitch ?? 'auto';
  const switcher = createSwitchRuntime({ engine, warn, ortMinElements: runtime.overlayOrtMinElements });

  async function loadPipeline(options: LoadPipelineOptions): Promise<Pipeline> {
    const { signal } = options;
    const origin = normalizeOrigin(options.origin);
    if (!isName(options.model)) throw new FuseloadError('bad-input', `model: "${options.model}" is not a model name`);
    const overlays = resolveOverlays(options.loras);
    const progress = new Progress(options.onProgress);
    throwIfAborted(signal, options.model);

    const { fingerprint, manifest, fetched, remember, drop } = await resolveManifest(origin, options, progress);
    try {
      const pipeline = await loadResolved(origin, options, progress, overlays, fingerprint, manifest, fetched);
      remember();
      return pipeline;
    } finally {
      drop();
    }
  }

  async function loadResolved(
    origin: string,
    options: LoadPipelineOptions,
    progress: Progress,
    overlays: ResolvedOverlay[],
    fingerprint: Digest,
    manifest: AnyManifest,
    fetched: Uint8Array | null,
  ): Promise<Pipeline> {
    const { signal } = options;
    const view = pipelineView(manifest);
    // A fetched manifest is stored once the load's blobs are in hand (written earlier, under a byte
    // budget it could evict a stored blob this very load is about to read), and behind the load like
    // them: IndexedDB queues the write after the blobs' own, and awaited it held a cold 280 MiB load
    // over a 1 Gbit/s link back by about a second (test/bench/browser-load.ts). `flush` waits for it.
    const keepManifest = () => {
      if (fetched) blobs.behind(store.put(fingerprint, fetched, 'manifest').catch((e) => warn(`${manifestKey(fingerprint)}: not cached (${errorText(e)})`)));
    };
    const providers = engine.providers(options.device ?? 'auto');
    if (providers.length === 0) throw new FuseloadError('unsupported', `device: "${options.device}" names no provider this runtime has`);
    // LoRA files first: a URL's digest is only known once fetched, and it names the overlay in the key.
    const sizes = new Map(view.loras.filter((l) => l.size > 0).map((l) => [l.digest, l.size] as const));
    const loras = overlays.length
      ? await overlay.fetchLoras(origin, overlays, { download: (file, loaded, total) => progress.emit('download', file, loaded, total) }, signal, {
          sizes,
          get: (ref) => blobs.getBlob(origin, ref, progress, signal, Promise.resolve()),
        })
      : [];
    const load = (withLoras: OverlayLora[]) => cachedOrBuilt(origin, options.model, fingerprint, manifest, view, withLoras, providers, options.device ?? 'auto', progress, signal);

    // Same base, other LoRAs: the base's sessions, with this handle's own overlay feeds.
    if (loras.length && switching()) {
      const switched = await loadSwitched(view, loras, () => load([]), options.model);
      if (switched) {
        keepManifest();
        return switched;
      }
    }
    const { entry, fromCache } = await load(loras);
    keepManifest();
    return handle(entry, fromCache);
  }

  /**
   * The pipeline cache: keyed by (fingerprint, overlays, the provider chain asked for), and by
   * the provider that ran (so device 'webgpu' finds what 'auto' built on WebGPU).
   */
  async function cachedOrBuilt(
    origin: string,
    model: string,
    fingerprint: Digest,
    manifest: AnyManifest,
    view: PipelineManifest,
    loras: OverlayLora[],
    providers: Provider[],
    device: Device,
    progress: Progress,
    signal: AbortSignal | undefined,
  ): Promise<{ entry: CachedPipeline; fromCache: boolean }> {
    const prefix = `${fingerprint}|${overlayKey(loras)}|`;
    const key = prefix + providers.join(',');
    const cached = pipelines.get(key);
    if (cached) {
      const entry = await cached.catch(() => null);
      if (entry && !entry.released) return { entry, fromCache: true };
    }
    const building = buildVerified(origin, model, fingerprint, manifest, view, loras, providers, device, progress, signal);
    pipelines.set(key, building);
    try {
      const entry = await building;
      pipelines.set(prefix + entry.info.provider, building);
      return { entry, fromCache: false };
    } catch (e) {
      if (pipelines.get(key) === building) pipelines.delete(key);
      throw e;
    }
  }

  /**
   * `build`, with its `ready`: when a shard's bytes turn out wrong after its sessions were built from
   * them, those sessions are released before any run reaches them, and built once more in the same
   * entry (nothing of the blob was kept, so the second pass fetches it); wrong twice, `ready` rejects
   * with `digest-mismatch` and the entry is released. A mismatch that failed the build itself (an
   * engine that choked on the bytes) builds again at once, as the load's own result.
   */
  async function buildVerified(...args: Parameters<typeof build>): Promise<CachedPipeline> {
    let entry: CachedPipeline;
    try {
      entry = await build(...args);
    } catch (e) {
      if (!(e instanceof LateDigestMismatch)) throw e;
      return rebuild(e, args);
    }
    // Behind the load: it has resolved, so its signal no longer stops the second pass.
    const behind = [...args.slice(0, 9), undefined] as Parameters<typeof build>;
    entry.ready = entry.verified.catch(async (e: unknown) => {
      if (!(e instanceof LateDigestMismatch)) throw e;
      // Released meanwhile (its last handle disposed): nothing to build again for.
      if (entry.released) throw e;
      await dropBuilt(entry);
      const again = await rebuild(e, behind);
      if (entry.released) {
        await dropBuilt(again);
        throw e;
      }
      const { sessions, info, switchable, baseWeights, assets } = again;
      Object.assign(entry, { sessions, info, switchable, baseWeights, assets, verified: again.verified, generation: entry.generation + 1 });
    });
    entry.ready.catch(() => releaseEntry(entry).catch(() => {}));
    return entry;
  }

  /** Lets go of what an entry built (its sessions were built from bytes that did not match). */
  async function dropBuilt(entry: CachedPipeline): Promise<void> {
    entry.baseWeights.dispose();
    const sessions = Object.values(entry.sessions);
    entry.sessions = {};
    for (const s of sessions) await s?.release().catch(() => {});
  }

  /**
   * The second pass after `e`, resolved once its own digests matched (wrong again: what it built is
   * let go, and it rejects). The good blobs were read on the first pass (and are in memory now), so
   * it says where they came from.
   */
  async function rebuild(e: LateDigestMismatch, args: Parameters<typeof build>): Promise<CachedPipeline> {
    const again = await build(...args);
    await again.verified.catch(async (wrong: unknown) => {
      await dropBuilt(again);
      throw wrong;
    });
    const { sources, bytesFetched } = e.earlier ?? { sources: {}, bytesFetched: 0 };
    for (const [digest, source] of Object.entries(sources) as [Digest, CacheSource][]) {
      if (digest !== e.digest && again.info.sources[digest] === 'memory') again.info.sources[digest] = source;
    }
    again.info.bytesFetched += bytesFetched;
    return again;
  }

  async function build(
    origin: string,
    model: string,
    fingerprint: Digest,
    manifest: AnyManifest,
    view: PipelineManifest,
    loras: OverlayLora[],
    providers: Provider[],
    device: Device,
    progress: Progress,
    signal: AbortSignal | undefined,
  ): Promise<CachedPipeline> {
    const components = componentEntries(view);
    const assetRefs = Object.keys(view.assets).sort().map((path) => view.assets[path]);
    progress.total = blobRefs(view).reduce((n, r) => n + r.size, 0);
    const sources: Record<Digest, CacheSource> = {};
    let bytesFetched = 0;
    for (const lora of loras) {
      sources[lora.digest] = lora.source;
      bytesFetched += lora.bytesFetched;
    }
    const plan = overlay.planOverlays(view, loras);
    const sessions: Partial<Record<Role, EngineSession>> = {};
    const infos: Partial<Record<Role, ComponentInfo>> = {};
    // A base's sessions are made switchable once; an overlay set that cannot switch gets plain ones over shard copies.
    const switchable = new Map<Role, SwitchableComponent>();
    const editFor = loras.length === 0 && switching() ? (role: Role, c: Component, graph: Uint8Array, provider: Provider) => editForSwitching(model, role, c, graph, provider, switchable) : null;
    const baseWeights = switcher.base((role, shard) => baseShard(origin, model, view, role, shard));
    // Weight shards are hashed while the sessions are built from them (blobs.ts, verifyLater): the
    // entry's `verified`, which every handle waits for before a run (buildVerified, handle).
    let mismatch: Promise<unknown> = Promise.resolve(null);
    // Handles (spooled downloads) are read until the sessions are built: then their files may go.
    let done!: () => void;
    const built = new Promise<void>((resolve) => (done = resolve));
    // Once the sessions are built (the engine has copied the weights), stored shards read here go to
    // the hasher and come back (blobs.ts, `movable`): all but those whose bytes a switchable session's
    // fed weights are views of (on the CPU; uploaded ones hold none), hashed from their records instead.
    let lend!: (movable: (digest: Digest) => boolean) => void;
    const movable = new Promise<(digest: Digest) => boolean>((resolve) => (lend = resolve));
    try {
      // Components no overlay touches may load straight from the store's files (no bytes read here).
      const pending: [Role, Component][] = [];
      for (const [role, c] of components) {
        const touched = (plan.terms.get(role)?.size ?? 0) > 0;
        const mapped = touched ? null : await fromStoreFiles(`${model}/${role}`, role, c, providers, progress, signal, editFor);
        if (!mapped) {
          pending.push([role, c]);
          continue;
        }
        sessions[role] = mapped.session;
        infos[role] = { provider: mapped.provider, fallbacks: mapped.fallbacks };
        for (const ref of [c.graph, ...c.shards]) sources[ref.digest] = 'store';
      }
      const refs = uniqueRefs([...pending.flatMap(([, c]) => [c.graph, ...c.shards]), ...assetRefs]);
      // Weight shards are only copied by the engine: they are hashed beside the sessions' creation. Graphs are parsed: hashed first.
      const weights = new Set(pending.flatMap(([, c]) => c.shards.map((s) => s.digest)));
      // An engine that reads external data from Blobs gets the shards no overlay merges into as the store's handles.
      const handles = new Set(engine.externalDataBlobs ? pending.filter(([role]) => !plan.terms.get(role)?.size).flatMap(([, c]) => c.shards.map((s) => s.digest)) : []);
      const got = await blobs.getBlobs(origin, refs, progress, signal, model, { verifyLater: (ref) => weights.has(ref.digest), asHandle: (ref) => handles.has(ref.digest), heldUntil: built, movable });
      mismatch = got.verified.then(() => null, (e: unknown) => e);
      Object.assign(sources, got.sources);
      bytesFetched += got.bytesFetched;
      for (const [role, c] of pending) {
        const label = `${model}/${role}`;
        const shards: ExternalDataFile[] = c.shards.map((s) => ({ path: digestHex(s.digest), data: got.blobs.get(s.digest)! }));
        // The single place load-time overlays change weights (on copies; base blobs stay as stored).
        const { files } = await overlay.applyOverlays(label, c, shards, plan.terms.get(role), providers, {
          overlay: (file, loaded, total) => progress.emit('overlay', file, loaded, total, { component: role }),
        });
        const graph = bytesOf(got.blobs, c.graph.digest);
        const created = (await createSession({
          label: components.length === 1 ? model : label,
          providers,
          create: (provider) => engine.create(editFor?.(role, c, graph, provider) ?? graph, files, provider, device),
          warn,
          signal,
          onAttempt: (_provider, done) => progress.emit('session', c.graph.digest, done ? 1 : 0, 1, { component: role }),
        }))!;
        sessions[role] = created.session;
        infos[role] = { provider: created.provider, fallbacks: created.fallbacks };
        // Fed weights are no longer in the session: what runs feed for them comes from the bytes in hand.
        const sw = switchable.get(role);
        if (sw) await baseWeights.add(role, created.session, sw, (i) => shardBytes(got.blobs.get(c.shards[i].digest)) ?? baseShard(origin, model, view, role, i));
        dropWeights(got.blobs, pending, role);
      }
      const viewed = new Set(pending.filter(([role]) => baseWeights.holdsShards(role)).flatMap(([, c]) => c.shards.map((s) => s.digest)));
      lend((digest) => !viewed.has(digest));
      const verified = mismatch.then((e) => {
        if (e) throw e;
      });
      verified.catch(() => {});
      const assets = new Map(Object.entries(view.assets).map(([path, ref]) => [path, bytesOf(got.blobs, ref.digest)]));
      const main = MAIN_ROLES.find((r) => infos[r]) ?? components[0][0];
      const info: PipelineInfo = {
        fingerprint,
        manifest,
        kind: view.kind,
        provider: infos[main]!.provider,
        fallbacks: components.flatMap(([role]) => infos[role]!.fallbacks.map((f) => ({ ...f, ...(components.length > 1 ? { component: role } : {}) }))),
        components: infos,
        sources,
        bytesFetched,
        overlays: plan.applied,
        fromPipelineCache: false,
        ...imageSizeOf(view.kind, assets),
      };
      return { sessions, info, handles: 0, released: false, switchable, baseWeights, origin, model, view, assets, verified, ready: verified, generation: 0 };
    } catch (e) {
      lend(() => false);
      baseWeights.dispose();
      for (const s of Object.values(sessions)) await s?.release().catch(() => {});
      // A corrupt stored blob explains an engine's failure on its bytes better than the engine does.
      throw (await mismatch) ?? e;
    } finally {
      done();
    }
  }

  /**
   * A component straight from the store's files: when the store vouches for every blob's file
   * (`locate`: the same check as its `get`) and the engine takes files. Null sends it down the
   * byte path: a blob in memory, missing or corrupt in the store, files the engine cannot use,
   * or every provider failing on them (the byte path then gives the real reason).
   */
  async function fromStoreFiles(
    label: string,
    role: Role,
    c: Component,
    providers: Provider[],
    progress: Progress,
    signal: AbortSignal | undefined,
    editFor: ((role: Role, c: Component, graph: Uint8Array, provider: Provider) => Uint8Array | null) | null = null,
  ) {
    const createFromFiles = (engine as Partial<FileEngine>).createFromFiles?.bind(engine);
    const locate = store.locate?.bind(store);
    if (!createFromFiles || !locate) return null;
    const refs = uniqueRefs([c.graph, ...c.shards]);
    // Bytes already in memory are cheaper than files, and were verified when they got there.
    for (const ref of refs) if (await memory.has(ref.digest)) return null;
    const files = await Promise.all(refs.map((ref) => locate(ref.digest, ref.size).catch(() => null)));
    if (files.some((f) => f === null)) return null;
    const fileOf = new Map(refs.map((ref, i) => [ref.digest, files[i]!]));
    const externalData = c.shards.map((s) => ({ path: digestHex(s.digest), file: fileOf.get(s.digest)! }));
    // Switching edits the graph blob (small: weights are external), read from the store, not kept in memory.
    const stored = editFor ? await store.get(c.graph.digest).catch(() => null) : null;
    if (editFor && (!stored || (!store.verifiesReads && (await sha256(stored)) !== c.graph.digest))) return null;
    const created = await createSession({
      label,
      providers,
      create: (provider) => createFromFiles(fileOf.get(c.graph.digest)!, externalData, provider, (stored && editFor?.(role, c, stored, provider)) ?? undefined),
      warn,
      signal,
      quiet: true,
      onAttempt: (_provider, done) => progress.emit('session', c.graph.digest, done ? 1 : 0, 1, { component: role }),
    });
    if (created) for (const ref of refs) progress.blobDone(ref, 'store');
    return created;
  }

  /** A handle on an entry; on a switchable one it gets its own LoraWeights, and `overlays` are applied before it is returned. */
  async function handle(entry: CachedPipeline, fromPipelineCache: boolean, overlays?: SwitchOverlays): Promise<Pipeline> {
    entry.handles++;
    let disposed = false;
    const entryInfo = (): PipelineInfo =>
      fromPipelineCache
        ? {
            ...entry.info,
            fromPipelineCache: true,
            bytesFetched: 0,
            sources: Object.fromEntries(Object.keys(entry.info.sources).map((d) => [d, 'memory'])) as PipelineInfo['sources'],
          }
        : entry.info;
    let info = entryInfo();
    const alive = (what: string) => {
      if (disposed) throw new FuseloadError('bad-input', `pipeline ${entry.info.fingerprint}: ${what} after dispose`);
    };
    let weights = null as LoraWeights | null;
    let sessions = entry.sessions;
    /** What this handle's weights carry now: applied again if the entry's sessions are rebuilt. */
    let current: SwitchOverlays = overlays ?? { plan: { applied: [], terms: new Map() }, loras: [] };
    /** The entry's generation this handle's state was derived from. */
    let generation = entry.generation;
    /** This handle's state from the entry as it is now (its sessions, and for switchable ones its own weights). */
    const derive = async () => {
      generation = entry.generation;
      sessions = entry.sessions;
      info = entryInfo();
      if (!entry.switchable.size) return;
      weights = await switchWeights(entry);
      info = await applySwitch(weights, info, current);
      sessions = { ...entry.sessions, ...weights.sessions };
    };
    const fail = async (e: unknown) => {
      await weights?.dispose();
      weights = null;
      entry.handles--;
      throw e;
    };
    /** The same, again from the entry's rebuilt sessions (this handle's weights were over the released ones). */
    const rederive = async () => {
      await weights?.dispose();
      weights = null;
      await derive();
    };
    try {
      await derive();
    } catch (e) {
      // A mismatch found meanwhile released what this was deriving from: derive from the rebuilt entry.
      const rebuilt = await entry.ready.then(() => entry.generation !== generation, (wrong: unknown) => fail(wrong));
      if (!rebuilt) await fail(e);
      await rederive().catch(fail);
    }
    // Every call that can produce output waits for the entry's digests first; after a mismatch
    // rebuilt the entry's sessions, this handle derives its state from them once. `ready` settles
    // once for good, so a handle that has passed it never waits again (a UNet step calls through here).
    let rederiving: Promise<void> | null = null;
    let passed = false;
    const gate = async (what: string) => {
      alive(what);
      if (passed) return;
      await entry.ready;
      alive(what);
      if (generation !== entry.generation) {
        rederiving ??= rederive().finally(() => (rederiving = null));
        await rederiving;
      }
      passed = true;
    };
    // The sessions handed out, and the ones generate() calls: each call waits at the gate, then goes
    // to the session as it is now. `run` and `runDevice` are plain properties (a bench wraps them).
    const gated: Partial<Record<Role, EngineSession>> = {};
    for (const role of Object.keys(sessions) as Role[]) {
      const now = () => sessions[role]!;
      const runDevice: EngineSession['runDevice'] = async (feeds, keep, read) => {
        await gate(`sessions.${role}.runDevice`);
        return now().runDevice!(feeds, keep, read);
      };
      gated[role] = {
        get inputNames() {
          return now().inputNames;
        },
        get outputNames() {
          return now().outputNames;
        },
        get inputTypes() {
          return now().inputTypes;
        },
        get inputDims() {
          return now().inputDims;
        },
        get device() {
          return now().device;
        },
        ...(now().runDevice ? { runDevice } : {}),
        async run(feeds: Feeds) {
          await gate(`sessions.${role}.run`);
          return now().run(feeds);
        },
        release: () => now().release(),
      };
    }
    const generator = entry.view.kind === 'text-to-image' ? createGenerator(entry.model, gated, entry.assets, entry.info.imageSize) : null;
    return {
      get info() {
        return info;
      },
      sessions: gated,
      async run(feeds: Feeds) {
        await gate('run');
        const session = sessions.model;
        if (!session) throw new FuseloadError('bad-input', `${entry.info.manifest.name}: run() is for "graph" pipelines; this one is "${entry.info.kind}" (use generate(), or sessions[role].run())`);
        return session.run(feeds);
      },
      async generate(options) {
        await gate('generate');
        if (!generator) throw new FuseloadError('bad-input', `${entry.info.manifest.name}: generate() needs a text-to-image pipeline; this one is "${entry.info.kind}" (use run())`);
        return generator.generate(options);
      },
      async setLoras(loras: LoraOverlay[]) {
        await gate('setLoras');
        const w = weights;
        if (!w) {
          throw new FuseloadError('unsupported', `${entry.info.manifest.name}: this pipeline's sessions were built over LoRA-merged shard copies and cannot switch; load it again with these loras`);
        }
        // Checked before a weight changes: a refused switch leaves the handle as it was.
        const next = switchOverlays(entry, loras).then((o) => {
          const why = switcher.problem(entry.switchable, o.plan, entry.model);
          if (why) throw new FuseloadError('unsupported', `${why}; load the pipeline again with these loras (merged into shard copies)`);
          return o;
        });
        info = await applySwitch(w, { ...info, bytesFetched: 0 }, next);
        current = await next;
      },
      async verified() {
        await gate('verified');
      },
      async dispose() {
        if (disposed) return;
        disposed = true;
        await weights?.dispose();
        // The sessions are shared by every handle of this cache key: release them with the last one.
        if (--entry.handles > 0) return;
        await releaseEntry(entry);
      },
    };
  }

  async function releaseEntry(entry: CachedPipeline): Promise<void> {
    if (entry.released) return;
    entry.released = true;
    for (const [key, value] of pipelines) if ((await value.catch(() => null)) === entry) pipelines.delete(key);
    entry.baseWeights.dispose();
    for (const s of Object.values(entry.sessions)) await s?.release();
  }

  // ------------------------------------------------------------------ switching LoRAs without a new session (switch.ts)

  /** Whether this loader makes base sessions switchable: asked for, and the engine says how it takes fed weights. */
  function switching(): boolean {
    return switchMode !== false && typeof engine.weightFeeding === 'function';
  }

  /** The graph `provider`'s session gets for `role` (edited, and recorded in `into`), or null for the plain one. */
  function editForSwitching(model: string, role: Role, c: Component, graph: Uint8Array, provider: Provider, into: Map<Role, SwitchableComponent>): Uint8Array | null {
    into.delete(role);
    const feeding = engine.weightFeeding?.(provider) ?? null;
    if (!feeding || switchMode === false) return null;
    const edited = switchableGraph(graph, c, role, provider, feeding, switchMode, `${model}/${role}`);
    if (!edited) return null;
    into.set(role, edited.component);
    return edited.graph;
  }

  /**
   * `loras` on the base's sessions (built, or from the pipeline cache) as a new handle with its
   * own overlay feeds; null when some weight they land on is not switchable in those sessions
   * (the caller then merges into shard copies for new sessions, the path before switching).
   */
  async function loadSwitched(view: PipelineManifest, loras: OverlayLora[], loadBase: () => Promise<{ entry: CachedPipeline; fromCache: boolean }>, model: string): Promise<Pipeline | null> {
    // Planned first: a LoRA that does not fit fails here, before any base blob is read.
    const plan = overlay.planOverlays(view, loras);
    const { entry, fromCache } = await loadBase();
    const why = entry.switchable.size ? switcher.problem(entry.switchable, plan, model) : `${model}: the engine made no switchable sessions`;
    if (why) {
      warn(`${why}; merging into copies of the touched shards for new sessions instead`);
      return null;
    }
    return handle(entry, fromCache, { plan, loras });
  }

  /** A handle's LoraWeights over the entry's switchable sessions (stored weights of components built from the store's files are read on the first one). */
  async function switchWeights(entry: CachedPipeline): Promise<LoraWeights> {
    const components = new Map([...entry.switchable].map(([role, component]) => [role, { session: entry.sessions[role]!, component }] as const));
    for (const [role, { session, component }] of components) await entry.baseWeights.add(role, session, component);
    return switcher.weights(components, entry.baseWeights);
  }

  /**
   * One shard of a component's base, for its fed weights: memory, else the store (verified, and
   * not put in the memory tier: the fed weights keep views of it), else the network.
   */
  async function baseShard(origin: string, model: string, view: PipelineManifest, role: Role, shard: number): Promise<Uint8Array> {
    const ref = view.components[role]!.shards[shard];
    const held = await memory.get(ref.digest);
    if (held) return held;
    const stored = await store.get(ref.digest).catch(() => null);
    if (stored && (store.verifiesReads || (await sha256(stored)) === ref.digest)) return stored;
    const got = await blobs.getBlobs(origin, [ref], new Progress(undefined), undefined, model);
    return bytesOf(got.blobs, ref.digest);
  }

  /** `setLoras`: the overlays checked, fetched by the one byte path, and planned as the build routes them. */
  async function switchOverlays(entry: CachedPipeline, requested: LoraOverlay[]): Promise<SwitchOverlays> {
    const overlays = resolveOverlays(requested);
    const sizes = new Map(entry.view.loras.filter((l) => l.size > 0).map((l) => [l.digest, l.size] as const));
    const progress = new Progress(undefined);
    const loras = overlays.length
      ? await overlay.fetchLoras(entry.origin, overlays, {}, undefined, { sizes, get: (ref) => blobs.getBlob(entry.origin, ref, progress, undefined, Promise.resolve()) })
      : [];
    return { plan: overlay.planOverlays(entry.view, loras), loras };
  }

  /** Applies `overlays` to a handle's weights; returns its info with them. */
  async function applySwitch(weights: LoraWeights, info: PipelineInfo, overlays: SwitchOverlays | Promise<SwitchOverlays>): Promise<PipelineInfo> {
    // The weights are held from this call on, so runs asked for meanwhile see the new overlays.
    const ready = Promise.resolve(overlays);
    const counts = await weights.apply(ready.then((o) => o.plan));
    const { plan, loras } = await ready;
    const sources = { ...info.sources };
    let bytesFetched = info.bytesFetched;
    for (const lora of loras) {
      sources[lora.digest] = lora.source;
      bytesFetched += lora.bytesFetched;
    }
    return { ...info, overlays: plan.applied, sources, bytesFetched, loraSwitch: counts };
  }

  /**
   * The manifest to load, by fingerprint or by tag. A manifest by fingerprint needs no network when
   * memory or the store has it. While a tag revalidates, what it named at the last load here is read
   * ahead (`guess`) and used if the tag names it again. `remember` (after a load that worked) keeps
   * what the tag named as the next load's hint; `drop` lets go of the reads ahead no load took.
   */
  async function resolveManifest(origin: string, options: LoadPipelineOptions, progress: Progress) {
    let fingerprint: Digest;
    let guessed: Promise<Guess | null> = Promise.resolve(null);
    let tagUrl: string | null = null;
    if (options.fingerprint) {
      fingerprint = toDigest(options.fingerprint, 'fingerprint');
    } else {
      const tag = options.tag ?? 'latest';
      if (!isName(tag)) throw new FuseloadError('bad-input', `tag: "${tag}" is not a tag name`);
      const key = tagKey(options.model, tag);
      tagUrl = `${origin}/${key}`;
      progress.emit('manifest', key, 0, 1);
      guessed = guess(tagUrl, options.model);
      try {
        // Tags are the only mutable objects: always revalidate, never trust a cached copy (the guess is only read ahead).
        fingerprint = parseTag(await blobs.fetchSmall(tagUrl, options.signal, 'no-cache', READ_LIMITS.tagBytes), key).manifest;
      } catch (e) {
        void guessed.then((g) => g?.drop());
        throw e;
      }
    }
    const g = await guessed;
    const hinted = tagUrl;
    /** The manifest's bytes, kept with the hint (TagHint.manifest); set once the manifest is in hand. */
    let manifestBytes = g?.fingerprint === fingerprint ? g.bytes : undefined;
    const remember =
      hinted && (g?.fingerprint !== fingerprint || !g.inline) && store.setTagHint
        ? () => blobs.behind(store.setTagHint!(hinted, { fingerprint, manifest: manifestBytes }).catch((e) => warn(`${hinted}: not remembered (${errorText(e)})`)))
        : () => {};
    const drop = g?.drop ?? (() => {});
    const key = manifestKey(fingerprint);
    if (g && g.fingerprint === fingerprint) {
      progress.emit('manifest', key, 0, 1);
      if (g.stored) await memory.put(fingerprint, g.bytes);
      progress.emit('manifest', key, 1, 1);
      return { fingerprint, manifest: g.manifest, fetched: null, remember, drop };
    }
    try {
      const { bytes, ...found } = await manifestByFingerprint(fingerprint, origin, options, progress);
      manifestBytes = bytes;
      // The tag moved: reads ahead of blobs the new manifest names too are still the ones it needs.
      if (g) drop(new Set(blobRefs(pipelineView(found.manifest)).map((r) => r.digest)));
      return { ...found, remember, drop };
    } catch (e) {
      drop();
      throw e;
    }
  }

  /**
   * While a tag revalidates: the manifest it named at the last load here (the store's `tagHint`),
   * from memory or the store (checked against its fingerprint as ever), and the reads of its blobs
   * begun (blobs.ts, `readAhead`). Null: no hint, or nothing of it here; the load then goes on as
   * without it (a corrupt manifest is found and dropped there).
   */
  async function guess(url: string, model: string): Promise<Guess | null> {
    try {
      const hint = await store.tagHint?.(url);
      if (!hint) return null;
      const { fingerprint } = hint;
      const inMemory = await memory.get(fingerprint);
      // The hint's own copy of the manifest spares a second store read before the reads ahead begin.
      const bytes = inMemory ?? hint.manifest ?? (await store.get(fingerprint));
      if (!bytes) return null;
      const manifest = await decodeManifest(bytes, manifestKey(fingerprint), fingerprint);
      if (manifest.name !== model) return null;
      // Sessions built from it are in hand (a load through this loader before): its blobs will not be read.
      const built = [...pipelines.keys()].some((k) => k.startsWith(`${fingerprint}|`));
      const drop = (!built && (await blobs.readAhead(blobRefs(pipelineView(manifest))))) || (() => {});
      return { fingerprint, manifest, bytes, stored: !inMemory, inline: !!hint.manifest, drop };
    } catch {
      return null;
    }
  }

  async function manifestByFingerprint(fingerprint: Digest, origin: string, options: LoadPipelineOptions, progress: Progress) {
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
        return { fingerprint, manifest, fetched: null, bytes };
      } catch (e) {
        if (isFuseloadError(e) && e.code === 'digest-mismatch') {
          warn(`${key} in the ${tier.kind} cache is corrupt; fetching it again`);
          await tier.delete(fingerprint).catch(() => {});
          continue;
        }
        throw e;
      }
    }
    const bytes = await blobs.fetchSmall(`${origin}/${key}`, options.signal, 'default', READ_LIMITS.manifestBytes);
    const manifest = await decodeManifest(bytes, key, fingerprint);
    checkName(manifest, options.model, key);
    await memory.put(fingerprint, bytes);
    progress.emit('manifest', key, 1, 1);
    return { fingerprint, manifest, fetched: bytes, bytes };
  }

  return {
    loadPipeline,
    memory,
    flush: () => blobs.flush(),
    async clearMemory() {
      memory.clear();
      const entries = await Promise.all([...pipelines.values()].map((p) => p.catch(() => null)));
      pipelines.clear();
      for (const entry of new Set(entries)) if (entry && entry.handles === 0) await releaseEntry(entry);
    },
  };
}

/**
 * Lets go of a component's weight shards once its session is built (the engine holds its own
 * copy), unless a component still to come names one: a large pipeline is then never in memory
 * twice over (our bytes and the engine's) for more than one component at a time.
 */
function dropWeights(held: Map<Digest, Uint8Array | Blob>, pending: [Role, Component][], built: Role): void {
  const at = pending.findIndex(([role]) => role === built);
  const later = new Set(pending.slice(at + 1).flatMap(([, c]) => c.shards.map((s) => s.digest)));
  for (const s of pending[at][1].shards) if (!later.has(s.digest)) held.delete(s.digest);
}

/** `PipelineInfo.imageSize` of a text-to-image pipeline whose configs say it (parsed once). */
function imageSizeOf(kind: string, assets: Map<string, Uint8Array>): { imageSize?: number } {
  const imageSize = kind === 'text-to-image' ? nativeImageSize(assets) : undefined;
  return imageSize === undefined ? {} : { imageSize };
}

/** A blob getBlobs handed out as bytes (every one not asked for as a handle). */
const bytesOf = (blobs: Map<Digest, Uint8Array | Blob>, digest: Digest): Uint8Array => needBytes(blobs.get(digest), `blob ${digest}`);

/** A shard in hand as bytes (a handle read once more: the same immutable record, hashed beside); undefined when not in hand. */
function shardBytes(data: Uint8Array | Blob | undefined): Promise<Uint8Array> | undefined {
  if (data === undefined) return undefined;
  return data instanceof Blob ? data.arrayBuffer().then((b) => new Uint8Array(b)) : Promise.resolve(data);
}

/** What a load of the pipeline reads: every component's graph and shards, and the assets, each once. */
function blobRefs(view: PipelineManifest): BlobRef[] {
  return uniqueRefs([...componentEntries(view).flatMap(([, c]) => [c.graph, ...c.shards]), ...Object.values(view.assets)]);
}

/** resolveManifest's read ahead: the manifest a tag named last time, and the reads of its blobs under way. */
interface Guess {
  fingerprint: Digest;
  manifest: AnyManifest;
  bytes: Uint8Array;
  /** Read from the store (not memory): put in memory when used, as a stored manifest is. */
  stored: boolean;
  /** The hint held the manifest's bytes (TagHint.manifest); one from before that layout is written again with them. */
  inline: boolean;
  drop: (keep?: Set<Digest>) => void;
}

function normalizeOrigin(origin: string): string {
  try {
    const url = new URL(origin);
    return url.href.replace(/\/+$/, '');
  } catch {
    throw new FuseloadError('bad-input', `origin: "${origin}" is not an absolute URL`);
  }
}

function checkName(manifest: AnyManifest, model: string, key: string): void {
  if (manifest.name !== model) throw new FuseloadError('bad-input', `${key}: manifest is for model "${manifest.name}", not "${model}"`);
}
