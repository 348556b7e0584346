/**
 * Load-time LoRA overlays. This is the one place where overlays touch weights: they get
 * copies of the external-data files they change and never the base blobs, which stay
 * shared with the memory tier and every store.
 *
 * The recipe is `fuseload build`'s, the same code (common/lora/merge-recipe.ts): routeLora
 * against the manifest's tensor index, then per targeted tensor fp32 math cast back once,
 * LoRAs in (digest, scale) order. Only targeted tensors are read; only shards holding one are
 * copied; the rest are passed on as the very same buffers. Large fp32/fp16 tensors merge
 * through the runtime's onnxruntime on the pipeline's providers (overlay-merge.ts) where the
 * recipe says so, the rest in JavaScript, as the build does.
 */
import { type Digest, digestHex, sha256, toDigest } from '../digest.ts';
import { badInput, FuseloadError } from '../errors.ts';
import { blobKey } from '../keys.ts';
import { readLora } from '../lora/adapter.ts';
import { routeLora } from '../lora/match.ts';
import { checkMergeDtype, DEFAULT_ORT_MIN_ELEMENTS, type MergeApplication, mergeTensorBytes } from '../lora/merge-recipe.ts';
import { EngineMerger } from '../lora/overlay-merge.ts';
import { type Component, componentEntries, type PipelineManifest, type Role, type TensorEntry } from '../manifest.ts';
import { type CacheSource, type Engine, type ExternalDataFile, externalBytes, type LoraOverlay, type Provider } from '../pipeline.ts';
import type { BlobStore } from '../store.ts';
import { abortError } from './download.ts';
import { contentLength, fetchWithDeadline, READ_LIMITS, readBounded } from './bounded-read.ts';

/** A requested overlay, checked; `digest` is known up front unless it was given by URL. */
export interface ResolvedOverlay {
  digest?: Digest;
  url?: string;
  scale: number;
  alpha?: number;
}

/** An overlay with its LoRA file in memory, verified. */
export interface OverlayLora {
  digest: Digest;
  scale: number;
  alpha?: number;
  bytes: Uint8Array;
  /** For messages: the URL's file name, or the digest. */
  label: string;
  source: CacheSource;
  bytesFetched: number;
}

export interface AppliedOverlay {
  digest: Digest;
  scale: number;
  matched: number;
  /** Matched keys per component. */
  components: Partial<Record<Role, number>>;
}

/** One LoRA module on one tensor, as the shared merge recipe (common/lora/merge-recipe.ts) takes it. */
export type OverlayTerm = MergeApplication;

/** LoRA files whose size the manifest records, and the byte path that fetches them. */
export interface SizedLoras {
  sizes: Map<Digest, number>;
  get(ref: { digest: Digest; size: number }): Promise<{ bytes: Uint8Array; source: CacheSource; bytesFetched: number }>;
}

/** What a load's overlays do, per component and target tensor. */
export interface OverlayPlan {
  applied: AppliedOverlay[];
  terms: Map<Role, Map<TensorEntry, OverlayTerm[]>>;
}

/** Checks the requested overlays before anything is fetched. */
export function resolveOverlays(loras: LoraOverlay[] | undefined): ResolvedOverlay[] {
  if (loras === undefined || loras === null) return [];
  if (!Array.isArray(loras)) throw badInput('loras', 'must be a list of {digest | url, scale}');
  return loras.map((l, i) => {
    const input = `loras[${i}]`;
    if (!l || typeof l !== 'object') throw badInput(input, 'must be {digest | url, scale}');
    if ((l.digest === undefined) === (l.url === undefined)) throw badInput(input, 'give exactly one of digest or url');
    if (typeof l.scale !== 'number' || !Number.isFinite(l.scale)) throw badInput(`${input}.scale`, `${String(l.scale)} is not a finite number`);
    if (l.alpha !== undefined && (typeof l.alpha !== 'number' || !Number.isFinite(l.alpha) || l.alpha <= 0)) {
      throw badInput(`${input}.alpha`, `${String(l.alpha)} is not a positive finite number`);
    }
    const extra = l.alpha === undefined ? {} : { alpha: l.alpha };
    if (l.digest !== undefined) return { digest: toDigest(String(l.digest), `${input}.digest`), scale: l.scale, ...extra };
    let url: URL;
    try {
      url = new URL(String(l.url));
    } catch {
      throw badInput(`${input}.url`, `"${String(l.url).slice(0, 200)}" is not an absolute URL`);
    }
    return { url: url.href, scale: l.scale, ...extra };
  });
}

/** Stable text for the pipeline cache key: digests, scales and any alpha, in the order applied. */
export function overlayKey(overlays: { digest: Digest; scale: number; alpha?: number }[]): string {
  return overlays.map((o) => `${o.digest}*${o.scale}${o.alpha === undefined ? '' : `@${o.alpha}`}`).join('+');
}

export interface OverlayRuntimeOptions {
  engine: Engine;
  memory: BlobStore;
  store: BlobStore;
  fetch: typeof fetch;
  warn: (message: string) => void;
  /** Tensors with at least this many elements merge on onnxruntime (default 2^20, as `fuseload build`). */
  ortMinElements?: number;
  /** The largest LoRA file fetched by URL (default READ_LIMITS.loraBytes). */
  maxLoraBytes?: number;
}

export interface OverlayEvents {
  /** A LoRA file's bytes: `loaded` of `total` (total 0 while unknown). */
  download?(file: string, loaded: number, total: number): void;
  /** Tensors merged so far. */
  overlay?(file: string, loaded: number, total: number): void;
}

/** The loader's overlay state: which URL hashed to which digest, and the merge sessions. */
export function createOverlayRuntime(options: OverlayRuntimeOptions) {
  const { memory, store, warn } = options;
  // A URL is fetched once per loader: its digest then names it (a URL whose bytes change later
  // keeps the first digest until the loader is gone; digests are the way to pin exact bytes).
  const urlDigests = new Map<string, Digest>();
  const merger = new EngineMerger(options.engine, warn);
  const ortMin = options.ortMinElements ?? DEFAULT_ORT_MIN_ELEMENTS;

  /**
   * One LoRA file by digest or URL. A LoRA the manifest records (schema 2 gives its size) goes
   * through the loader's one byte path (`sized`: lock, resume, retry, store-behind); any other
   * is fetched here: memory → store (re-verified) → network (verified).
   */
  async function fetchLora(origin: string, o: ResolvedOverlay, events: OverlayEvents, signal?: AbortSignal, sized?: SizedLoras): Promise<OverlayLora> {
    const known = o.digest ?? (o.url ? urlDigests.get(o.url) : undefined);
    const label = o.url ? labelOf(o.url) : o.digest!;
    const base = { scale: o.scale, ...(o.alpha === undefined ? {} : { alpha: o.alpha }), label };
    const size = known ? sized?.sizes.get(known) : undefined;
    if (known && size !== undefined && sized) {
      const got = await sized.get({ digest: known, size });
      return { ...base, digest: known, bytes: got.bytes, source: got.source, bytesFetched: got.bytesFetched };
    }
    if (known) {
      const hit = await memory.get(known);
      if (hit) return { ...base, digest: known, bytes: hit, source: 'memory', bytesFetched: 0 };
      let stored: Uint8Array | null = null;
      try {
        stored = await store.get(known);
      } catch (e) {
        warn(`LoRA ${known}: ${store.kind} read failed (${(e as Error).message}); fetching it`);
      }
      if (stored) {
        if ((await sha256(stored)) === known) {
          await memory.put(known, stored);
          return { ...base, digest: known, bytes: stored, source: 'store', bytesFetched: 0 };
        }
        warn(`LoRA ${known} in ${store.kind} is corrupt; fetching it again`);
        await store.delete(known).catch(() => {});
      }
    }
    const url = o.url ?? `${origin}/${blobKey(known!)}`;
    const shown = o.url ? label : url;
    // A deadline to the headers, an idle deadline in the body and a cap while it streams (bounded-read.ts).
    const response = await fetchWithDeadline(options.fetch, url, { cache: 'no-store' }, { signal });
    if (response.status === 404) throw new FuseloadError('not-found', `${shown}: HTTP 404 (LoRA ${o.digest ?? 'file'} is not there)`);
    if (!response.ok) throw new FuseloadError('network', `${shown}: HTTP ${response.status}`);
    const total = contentLength(response) ?? 0;
    events.download?.(known ?? label, 0, total);
    const bytes = await readBounded(response, options.maxLoraBytes ?? READ_LIMITS.loraBytes, shown, { signal });
    const digest = await sha256(bytes);
    if (o.digest && digest !== o.digest) throw new FuseloadError('digest-mismatch', `${shown}: LoRA bytes hash to ${digest}, expected ${o.digest}`);
    events.download?.(digest, bytes.length, bytes.length);
    if (o.url) urlDigests.set(o.url, digest);
    await memory.put(digest, bytes);
    // The digest was computed from these very bytes, so they are as verified as any blob.
    await store.put(digest, bytes).catch((e) => warn(`LoRA ${digest} not cached in ${store.kind} (${(e as Error).message})`));
    return { ...base, digest, bytes, source: 'network', bytesFetched: bytes.length };
  }

  /** Every LoRA of a load, in the order they are applied: (digest, scale), as `fuseload build` orders them. */
  async function fetchLoras(origin: string, overlays: ResolvedOverlay[], events: OverlayEvents, signal?: AbortSignal, sized?: SizedLoras): Promise<OverlayLora[]> {
    const loras = await Promise.all(overlays.map((o) => fetchLora(origin, o, events, signal, sized)));
    return loras.sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : a.scale - b.scale || (a.alpha ?? 0) - (b.alpha ?? 0)));
  }

  /**
   * Routes every overlay to its components and matches it there (the build's routing, so a
   * kohya file's `lora_te_` keys land on the text encoder and `lora_unet_` on the UNet).
   */
  function planOverlays(manifest: PipelineManifest, loras: OverlayLora[]): OverlayPlan {
    const targets = new Map(componentEntries(manifest).map(([role, c]) => [role, c.tensors] as const));
    const terms = new Map<Role, Map<TensorEntry, OverlayTerm[]>>();
    const applied: AppliedOverlay[] = [];
    for (const lora of loras) {
      // PEFT keeps alpha in adapter_config.json, not in the file: the overlay's `alpha` stands in for it.
      const adapter = readLora(lora.bytes, lora.label, lora.alpha === undefined ? undefined : { lora_alpha: lora.alpha });
      const routed = routeLora(adapter, targets, lora.label);
      const components: AppliedOverlay['components'] = {};
      for (const [role, found] of routed.components) if (found.matchedKeys.length) components[role] = found.matchedKeys.length;
      applied.push({ digest: lora.digest, scale: lora.scale, matched: routed.matchedKeys.length, components });
      if (routed.matchedKeys.length === 0) warn(`LoRA ${lora.label}: none of its ${routed.unmatchedKeys.length} keys match a weight of ${manifest.name}`);
      for (const m of routed.missing.slice(0, 1)) warn(`LoRA ${lora.label}: ${routed.missing.length} key(s) are for ${m.component}, which ${manifest.name} does not have (first "${m.key}")`);
      const unsupported = [...adapter.modules.values()].filter((m) => m.adapter?.type === 'unsupported');
      if (unsupported.length) warn(`LoRA ${lora.label}: ${unsupported.length} module(s) are ${[...new Set(unsupported.map((m) => adapter.keyTypes.get(m.keys[0])))].join('/')}, which fuseload cannot merge (first "${unsupported[0].module}")`);
      // Scale 0 adds nothing: skipping it keeps the base bytes exactly (and uncopied).
      if (lora.scale === 0) continue;
      for (const [role, found] of routed.components) {
        for (const { target, module, part } of found.applications) {
          checkMergeDtype(target, `LoRA ${lora.label}`, `${manifest.name}/${role}`);
          let byTarget = terms.get(role);
          if (!byTarget) terms.set(role, (byTarget = new Map()));
          const list = byTarget.get(target) ?? [];
          list.push({ module, part, scale: lora.scale, digest: lora.digest, source: lora.label });
          byTarget.set(target, list);
        }
      }
    }
    return { applied, terms };
  }

  /**
   * Returns the external data the engine gets for one component: `files` itself when nothing
   * changes, otherwise `files` with each touched shard replaced by a modified copy (untouched
   * ones are the same objects).
   */
  async function applyOverlays(
    label: string,
    component: Component,
    files: ExternalDataFile[],
    targets: Map<TensorEntry, OverlayTerm[]> | undefined,
    providers: Provider[],
    events: OverlayEvents = {},
  ): Promise<{ files: ExternalDataFile[]; tensors: number; shards: number }> {
    if (!targets || targets.size === 0) return { files, tensors: 0, shards: 0 };

    // One copy per touched shard (grouped by digest: the graph names external data by it).
    const byShard = new Map<string, TensorEntry[]>();
    for (const entry of targets.keys()) {
      const hex = digestHex(component.shards[entry.shard].digest);
      const list = byShard.get(hex) ?? [];
      list.push(entry);
      byShard.set(hex, list);
    }
    const copies = new Map<string, Uint8Array>();
    let done = 0;
    events.overlay?.(label, 0, targets.size);
    for (const [hex, entries] of byShard) {
      const original = files.find((f) => f.path === hex);
      if (!original) throw new FuseloadError('bad-input', `${label}: shard ${hex} is not among the external data`);
      const data = externalBytes(original);
      const copy = new Uint8Array(data.length);
      // Only the bytes no merge writes are copied as they are: the merges read the original.
      entries.sort((a, b) => a.offset - b.offset);
      let at = 0;
      for (const entry of entries) {
        copy.set(data.subarray(at, entry.offset), at);
        at = entry.offset + entry.length;
      }
      copy.set(data.subarray(at), at);
      for (const entry of entries) {
        const range = [entry.offset, entry.offset + entry.length] as const;
        await mergeTensor(data.subarray(...range), copy.subarray(...range), entry, targets.get(entry)!, providers);
        events.overlay?.(entry.name, ++done, targets.size);
      }
      copies.set(hex, copy);
    }
    return {
      files: files.map((f) => (copies.has(f.path) ? { path: f.path, data: copies.get(f.path)! } : f)),
      tensors: targets.size,
      shards: copies.size,
    };
  }

  /** The build's recipe (common/lora/merge-recipe.ts), with the pipeline's onnxruntime for large plain-LoRA weights. */
  async function mergeTensor(src: Uint8Array, dst: Uint8Array, entry: TensorEntry, terms: OverlayTerm[], providers: Provider[]): Promise<void> {
    const merged = await mergeTensorBytes(src, entry, terms, {
      ortMinElements: ortMin,
      // No fallback after a failed run (merge throws): part of the tensor may already be merged.
      ort: async (bytes, dtype, inputs) => ((await merger.run(bytes, dst, dtype, inputs, providers)) ? dst : null),
    });
    if (merged !== dst) dst.set(merged);
  }

  return { fetchLoras, planOverlays, applyOverlays };
}

export type OverlayRuntime = ReturnType<typeof createOverlayRuntime>;

/** A URL's file name, without query or fragment (which may carry a signature). */
function labelOf(url: string): string {
  try {
    const u = new URL(url);
    return decodeURIComponent(u.pathname.split('/').filter(Boolean).pop() ?? u.host) || u.host;
  } catch {
    return 'lora';
  }
}
