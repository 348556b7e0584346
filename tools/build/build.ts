/**
 * `fuseload build`: base ONNX + LoRAs → a fingerprinted artifact (DESIGN.md, "The artifact").
 *
 * Order of work: read and validate every input (nothing written yet) → look the build up in
 * the cache → stream weights shard by shard into a temp dir beside --out, merging LoRA deltas
 * tensor by tensor and hashing while writing → graph, LoRA blobs, manifest → rename into
 * --out → copy into the store. At most one shard's write buffer plus one tensor (and its
 * fp32 copy when merged) are in memory.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, type FileHandle, link, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { canonicalJsonBytes } from '../../common/canonical-json.ts';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { badInput, FuseloadError } from '../../common/errors.ts';
import { routeLora } from '../../common/lora/match.ts';
import { checkMergeDtype, type MergeApplication, type MergeTarget, mergeTensorBytes } from '../../common/lora/merge-recipe.ts';
import { isName } from '../../common/keys.ts';
import {
  type AnyManifest,
  artifactBlobs,
  type Component,
  componentEntries,
  decodeManifest,
  encodeManifest,
  MANIFEST_SCHEMA,
  PIPELINE_SCHEMA,
  type PipelineKind,
  pipelineView,
  type Role,
  type TensorEntry,
} from '../../common/manifest.ts';
import { DiskStore } from '../store/disk-store.ts';
import { TOOL_VERSION } from '../version.ts';
import { encodeModel, externalRef, inlineBytes, isExternal, ONNX_DTYPES, setExternal, type TensorProto } from '../onnx/model.ts';
import { type BaseModel, type LoraInput, readBase, readLoraInput } from './inputs.ts';
import { runMergeWithOrt } from './merge-ort.ts';
import { fetchInput, isRemote, type LocalCopy } from './remote.ts';
import { DEFAULT_ORT_MIN_ELEMENTS, MERGE_RECIPE_VERSION } from '../../common/lora/merge-recipe.ts';
import { findTargets, unshareTargets, type WeightTarget } from './targets.ts';
import { type PipelineAsset, readPipelineDir } from './pipeline-dir.ts';

export const DEFAULT_SHARD_SIZE = 64 * 1024 * 1024;
export const ALIGNMENT = 64;
/** Initializers smaller than this stay inline unless a LoRA could target them. */
export const INLINE_LIMIT = 1024;

export interface BuildProgress {
  phase: 'hash' | 'weights' | 'store';
  loaded: number;
  total: number;
}

export interface BuildOptions {
  base: string;
  loras?: { path: string; scale: number }[];
  name: string;
  out: string;
  shardSize?: number;
  strict?: boolean;
  /** The build cache; null for none. Default: DiskStore at PIPELINE_STORE / ~/.cache/fuseload. */
  store?: DiskStore | null;
  onProgress?: (p: BuildProgress) => void;
  /** Tensors with at least this many elements merge on onnxruntime's CPU kernels (default 2^20). */
  ortMergeMinElements?: number;
  /** An .onnx larger than this is read without its inline weights (inputs.ts STREAM_ABOVE). */
  streamInlineAbove?: number;
}

export interface LoraReport {
  source: string;
  digest: Digest;
  scale: number;
  format: string;
  matched: number;
  unmatched: number;
  /** Per component: keys that landed there and keys routed there that matched nothing. */
  components: Partial<Record<Role, { matched: number; unmatched: number }>>;
  /** Per adapter type (`lora`, `locon-mid`, `loha`, `lokr`, `glora`, `diff`, `norm`, `set`; `OFT`, `BOFT` are never merged; `unknown`): keys matched and not. */
  types: Record<string, { matched: number; unmatched: number }>;
  matchedKeys: string[];
  unmatchedKeys: string[];
}

export interface ComponentReport {
  graph: { digest: Digest; size: number };
  shards: number;
  bytes: number;
  mergedTensors: number;
}

export interface BuildReport {
  fingerprint: Digest;
  /** Path of the manifest file in --out. */
  manifest: string;
  name: string;
  /** `fuseload.artifact/1` for a single .onnx, `fuseload.pipeline/2` for a diffusers directory. */
  schema: string;
  kind: PipelineKind;
  cached: boolean;
  /** The one graph (schema 1), or the denoiser's (schema 2). */
  graph: { digest: Digest; size: number };
  shards: number;
  bytes: number;
  mergedTensors: number;
  components: Partial<Record<Role, ComponentReport>>;
  assets: string[];
  loras: LoraReport[];
}

/** One LoRA module on one tensor, as the shared merge recipe takes it, with the tensor it lands on. */
interface Application extends MergeApplication {
  target: MergeTarget;
}

/** One graph to write: its base and what each LoRA does to it. */
interface ComponentPlan {
  role: Role;
  base: BaseModel;
  targets: Map<string, WeightTarget>;
  applications: Map<string, Application[]>;
}

export async function build(options: BuildOptions): Promise<BuildReport> {
  const shardSize = options.shardSize ?? DEFAULT_SHARD_SIZE;
  if (!isName(options.name)) throw badInput(`--name ${options.name}`, 'must be [A-Za-z0-9][A-Za-z0-9._-]* (at most 128 characters)');
  if (!Number.isSafeInteger(shardSize) || shardSize <= 0) throw badInput(`--shard-size ${shardSize}`, 'must be a positive integer');
  const out = resolve(options.out);
  await checkOutDir(out);
  const store = options.store === undefined ? new DiskStore() : options.store;
  const progress = options.onProgress ?? (() => {});

  // Remote inputs are fetched into temp dirs first; the build reads only local files.
  const fetched: LocalCopy[] = [];
  const bases: BaseModel[] = [];
  try {
    let basePath = resolve(options.base);
    let baseSource: string | undefined;
    if (isRemote(options.base)) {
      const copy = await fetchInput(options.base, 'base', store);
      fetched.push(copy);
      basePath = copy.path;
      baseSource = copy.source;
    }
    const loraPaths: { path: string; scale: number; source?: string }[] = [];
    for (const l of options.loras ?? []) {
      if (!isRemote(l.path)) {
        loraPaths.push({ path: resolve(l.path), scale: l.scale });
        continue;
      }
      const copy = await fetchInput(l.path, 'lora', store);
      fetched.push(copy);
      loraPaths.push({ path: copy.path, scale: l.scale, source: copy.source });
    }

    // 1. Inputs, all validated before anything is written.
    const onHash = (n: number) => progress({ phase: 'hash', loaded: n, total: 0 });
    let input: BuildInput;
    if (await isDirectory(basePath)) {
      const dir = await readPipelineDir(basePath, onHash, bases, options.streamInlineAbove);
      input = { schema: PIPELINE_SCHEMA, kind: dir.kind, components: dir.components, assets: dir.assets, ignored: dir.ignored };
    } else {
      const base = await readBase(basePath, onHash, { streamAbove: options.streamInlineAbove });
      bases.push(base);
      if (baseSource) base.source = baseSource;
      input = { schema: MANIFEST_SCHEMA, kind: 'graph', components: [{ role: 'model', base }], assets: new Map(), ignored: [] };
    }
    return await buildFrom(input, loraPaths, options, out, shardSize, store, progress);
  } finally {
    for (const base of bases) await base.cancel();
    for (const copy of fetched) await copy.dispose();
  }
}

interface BuildInput {
  schema: typeof MANIFEST_SCHEMA | typeof PIPELINE_SCHEMA;
  kind: PipelineKind;
  components: { role: Role; base: BaseModel }[];
  assets: Map<string, PipelineAsset>;
  ignored: string[];
}

async function buildFrom(
  input: BuildInput,
  loraPaths: { path: string; scale: number; source?: string }[],
  options: BuildOptions,
  out: string,
  shardSize: number,
  store: DiskStore | null,
  progress: (p: BuildProgress) => void,
): Promise<BuildReport> {
  const loras: LoraInput[] = [];
  for (const l of loraPaths) {
    const lora = await readLoraInput(l.path, l.scale);
    if (l.source) lora.source = l.source;
    loras.push(lora);
  }
  // Order-independence: LoRAs are applied and recorded in (digest, scale) order.
  loras.sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : a.scale - b.scale));

  const plans: ComponentPlan[] = input.components.map(({ role, base }) => {
    const graph = base.model.graph!;
    // Every module gets its own weight before anything is matched (targets.ts says why).
    unshareTargets(graph, (from, name) => {
      if (isExternal(from)) base.refs.set(name, base.refs.get(from.name!) ?? externalRef(from, base.source));
      return { ...from, name };
    });
    return { role, base, targets: findTargets(graph), applications: new Map() };
  });
  // What a LoRA can land on: exactly the tensor index the manifest will list (writeComponent's
  // shard plan: every initializer of a known dtype that is a target or at least INLINE_LIMIT
  // bytes), so overlays on the artifact match what the build merged, key for key.
  const entriesOf = new Map<Role, (MergeTarget & { module?: string })[]>();
  for (const plan of plans) {
    const entries: (MergeTarget & { module?: string })[] = [];
    for (const t of plan.base.model.graph!.initializer ?? []) {
      const info = ONNX_DTYPES[t.dataType ?? 0];
      const target = plan.targets.get(t.name!);
      if (!info || (!target && (t.dims ?? []).reduce((a, b) => a * b, 1) * info.size < INLINE_LIMIT)) continue;
      entries.push({ name: t.name!, dtype: info.dtype, shape: t.dims ?? [], layout: target?.layout ?? 'none', ...(target ? { module: target.module } : {}) });
    }
    entriesOf.set(plan.role, entries);
  }
  const reports: LoraReport[] = [];
  for (const lora of loras) {
    const routed = routeLora(lora.adapter, entriesOf, lora.source);
    const components: LoraReport['components'] = {};
    for (const plan of plans) {
      const found = routed.components.get(plan.role)!;
      for (const { target, module, part } of found.applications) {
        checkMergeDtype(target, lora.source, plan.base.source);
        const list = plan.applications.get(target.name) ?? [];
        list.push({ module, part, scale: lora.scale, digest: lora.digest, source: lora.source, target });
        plan.applications.set(target.name, list);
      }
      if (found.matchedKeys.length || found.unmatchedKeys.length) components[plan.role] = { matched: found.matchedKeys.length, unmatched: found.unmatchedKeys.length };
    }
    const types: LoraReport['types'] = {};
    for (const [keys, field] of [
      [routed.matchedKeys, 'matched'],
      [routed.unmatchedKeys, 'unmatched'],
    ] as const) {
      for (const key of keys) {
        const t = (types[lora.adapter.keyTypes.get(key) ?? 'unknown'] ??= { matched: 0, unmatched: 0 });
        t[field]++;
      }
    }
    if (options.strict && routed.unmatchedKeys.length) {
      const missing = routed.missing[0];
      if (missing) throw badInput(lora.source, `key "${missing.key}" is for ${missing.component}, which ${input.schema === PIPELINE_SCHEMA ? 'the pipeline does not have' : 'a single graph is not'} (--strict)`);
      const unsupported = [...lora.adapter.modules.values()].find((m) => m.adapter?.type === 'unsupported');
      if (unsupported?.adapter?.type === 'unsupported') {
        throw badInput(lora.source, `module "${unsupported.module}" is ${lora.adapter.keyTypes.get(unsupported.keys[0])}, which fuseload cannot merge (--strict): ${unsupported.adapter.reason}`);
      }
      throw badInput(lora.source, `${routed.unmatchedKeys.length} key(s) match no weight in ${input.components.map((c) => c.base.source).join(', ')} (--strict), first "${routed.unmatchedKeys[0]}"`);
    }
    reports.push({
      source: lora.source,
      digest: lora.digest,
      scale: lora.scale,
      format: lora.adapter.format,
      matched: routed.matchedKeys.length,
      unmatched: routed.unmatchedKeys.length,
      components,
      types,
      matchedKeys: routed.matchedKeys,
      unmatchedKeys: routed.unmatchedKeys,
    });
  }

  // 2. Write into a temp dir beside --out (renamed at the end, removed on any failure) while
  //    the bases' external data is still being hashed; then consult the build cache, which
  //    needs those digests: same inputs and options → the same artifact, verified before reuse.
  const temp = join(dirname(out), `.${basename(out)}.fuseload-${randomBytes(6).toString('hex')}`);
  const blobDir = join(temp, 'blobs', 'sha256');
  let aborted = false;
  let pending: Promise<unknown> | undefined;
  try {
    await mkdir(blobDir, { recursive: true });
    const total = plans.reduce((n, p) => n + weightBytes(p), 0);
    let done = 0;
    const writing = (async () => {
      const written: { role: Role; component: Component; bytes: number; mergedTensors: number }[] = [];
      for (const plan of plans) {
        const offset = done;
        const result = await writeComponent({
          ...plan,
          shardSize,
          blobDir,
          ortMergeMinElements: options.ortMergeMinElements ?? DEFAULT_ORT_MIN_ELEMENTS,
          progress: (p) => progress({ ...p, loaded: offset + p.loaded, total }),
          aborted: () => aborted,
        });
        done += result.bytes;
        written.push({ role: plan.role, ...result });
      }
      // LoRA files and assets travel with the artifact (overlays and tokenizers read them).
      for (const l of loras) await writeFile(join(blobDir, digestHex(l.digest)), l.bytes);
      for (const a of input.assets.values()) await writeFile(join(blobDir, digestHex(a.digest)), a.bytes);
      return written;
    })();
    pending = writing.catch(() => {});
    const baseDigests = await Promise.all(plans.map(async (p) => ({ role: p.role, digest: await p.base.digest, source: p.base.source })));
    const cacheKey = await sha256(
      canonicalJsonBytes({
        tool: TOOL_VERSION,
        recipe: MERGE_RECIPE_VERSION,
        schema: input.schema,
        name: options.name,
        base: input.schema === MANIFEST_SCHEMA ? { digest: baseDigests[0].digest, source: baseDigests[0].source } : baseDigests,
        assets: [...input.assets].map(([path, a]) => [path, a.digest]),
        loras: loras.map((l) => ({ digest: l.digest, scale: l.scale, source: l.source, config: l.config ?? null })),
        shardSize,
        strict: !!options.strict,
      }),
    );
    if (store) {
      const hit = await fromCache(store, cacheKey, out);
      if (hit) {
        aborted = true;
        return { ...hit, cached: true, loras: reports };
      }
    }
    const written = await writing;
    const buildInfo = { tool: 'fuseload' as const, version: TOOL_VERSION, shardSize, alignment: ALIGNMENT, strict: !!options.strict };
    let manifest: AnyManifest;
    if (input.schema === MANIFEST_SCHEMA) {
      const c = written[0].component;
      manifest = {
        schema: MANIFEST_SCHEMA,
        name: options.name,
        graph: c.graph,
        shards: c.shards,
        base: c.base,
        loras: reports.map((r) => ({ digest: r.digest, scale: r.scale, matched: r.matched, unmatched: r.unmatched, format: r.format as 'kohya', source: r.source })),
        tensors: c.tensors,
        build: buildInfo,
      };
    } else {
      manifest = {
        schema: PIPELINE_SCHEMA,
        name: options.name,
        kind: input.kind,
        components: Object.fromEntries(written.map((w) => [w.role, w.component])),
        assets: Object.fromEntries([...input.assets].map(([path, a]) => [path, { digest: a.digest, size: a.bytes.length }])),
        loras: reports.map((r) => ({
          digest: r.digest,
          size: loras.find((l) => l.digest === r.digest)!.bytes.length,
          scale: r.scale,
          matched: r.matched,
          unmatched: r.unmatched,
          components: r.components,
          format: r.format as 'kohya',
          source: r.source,
        })),
        build: buildInfo,
      };
    }
    const encoded = await encodeManifest(manifest);
    const manifestRel = join('manifests', 'sha256', `${digestHex(encoded.fingerprint)}.json`);
    await mkdir(join(temp, 'manifests', 'sha256'), { recursive: true });
    await writeFile(join(temp, manifestRel), encoded.bytes);
    await moveInto(temp, out);
    const mergedTensors = written.reduce((n, w) => n + w.mergedTensors, 0);
    if (store) await toCache(store, cacheKey, out, manifest, encoded.fingerprint, encoded.bytes, { mergedTensors: Object.fromEntries(written.map((w) => [w.role, w.mergedTensors])) }, progress);
    return reportOf(manifest, encoded.fingerprint, join(out, manifestRel), Object.fromEntries(written.map((w) => [w.role, w.mergedTensors])), reports);
  } finally {
    aborted = true;
    await pending; // never remove the temp dir under a write still in flight
    await rm(temp, { recursive: true, force: true });
  }
}

/** The report of a build, the same whether it was built now or found in the cache. */
function reportOf(manifest: AnyManifest, fingerprint: Digest, manifestPath: string, merged: Partial<Record<Role, number>>, loras: LoraReport[], cached = false): BuildReport {
  const view = pipelineView(manifest);
  const components: BuildReport['components'] = {};
  for (const [role, c] of componentEntries(view)) {
    components[role] = { graph: c.graph, shards: c.shards.length, bytes: c.tensors.reduce((a, t) => a + t.length, 0), mergedTensors: merged[role] ?? 0 };
  }
  const main = view.components.model ?? view.components.unet ?? view.components.transformer ?? componentEntries(view)[0][1];
  const all = Object.values(components);
  return {
    fingerprint,
    manifest: manifestPath,
    name: manifest.name,
    schema: manifest.schema,
    kind: view.kind,
    cached,
    graph: main.graph,
    shards: all.reduce((n, c) => n + c!.shards, 0),
    bytes: all.reduce((n, c) => n + c!.bytes, 0),
    mergedTensors: all.reduce((n, c) => n + c!.mergedTensors, 0),
    components,
    assets: Object.keys(view.assets).sort(),
    loras,
  };
}

function weightBytes(plan: ComponentPlan): number {
  let n = 0;
  for (const t of plan.base.model.graph!.initializer ?? []) {
    const info = ONNX_DTYPES[t.dataType ?? 0];
    if (info) n += (t.dims ?? []).reduce((a, b) => a * b, 1) * info.size;
  }
  return n;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

interface WriteInput extends ComponentPlan {
  shardSize: number;
  blobDir: string;
  ortMergeMinElements: number;
  progress: (p: BuildProgress) => void;
  /** True once the result is not wanted (a cache hit, or a failure elsewhere). */
  aborted: () => boolean;
}

interface PlannedTensor {
  proto: TensorProto;
  shard: number;
  offset: number;
  length: number;
}

/** One component's shards (written as blobs) and graph blob, and its part of the manifest. */
async function writeComponent(w: WriteInput): Promise<{ component: Component; bytes: number; mergedTensors: number }> {
  const { base, targets, shardSize } = w;
  const input = base.source;
  const graph = base.model.graph!;
  const files = new Map<string, FileHandle>();
  const scratch = [Buffer.allocUnsafeSlow(0), Buffer.allocUnsafeSlow(0)];
  // Merge outputs alternate the same way: no fresh (zeroed, page-faulted, collected) buffer per tensor.
  const merged = [Buffer.allocUnsafeSlow(0), Buffer.allocUnsafeSlow(0)];
  try {
    for (const [location, file] of base.external) files.set(location, await open(file.path, 'r'));
    const readTensor = async (t: TensorProto, slot = 0): Promise<Uint8Array> => {
      if (!isExternal(t)) return inlineBytes(t, input);
      const ref = base.refs.get(t.name!) ?? externalRef(t, input);
      // Two read buffers for the whole build, alternating: tensor i is hashed and written
      // while tensor i+1 is read and merged, and tensor i+2 reuses tensor i's buffer.
      if (scratch[slot].length < ref.length) scratch[slot] = Buffer.allocUnsafeSlow(ref.length);
      const buf = scratch[slot].subarray(0, ref.length);
      const { bytesRead } = await files.get(ref.location)!.read(buf, 0, ref.length, ref.offset);
      if (bytesRead !== ref.length) throw badInput(input, `initializer "${t.name}" ends past the end of "${ref.location}"`);
      return buf;
    };

    // Shard plan: a function of the base alone (graph order, 64-byte aligned, never split).
    const plan: PlannedTensor[] = [];
    let shard = 0;
    let cursor = 0;
    let shardCount = 0;
    for (const t of graph.initializer ?? []) {
      const info = ONNX_DTYPES[t.dataType ?? 0];
      const length = info ? (t.dims ?? []).reduce((a, b) => a * b, 1) * info.size : 0;
      if (!info) {
        if (isExternal(t)) throw new FuseloadError('unsupported', `${input}: initializer "${t.name}" has data type ${t.dataType}, which fuseload cannot place in a shard`);
        continue;
      }
      if (length < INLINE_LIMIT && !targets.has(t.name!)) {
        if (isExternal(t)) {
          const bytes = new Uint8Array(await readTensor(t)); // a copy: the read buffer is reused
          delete t.externalData;
          delete t.dataLocation;
          t.rawData = bytes;
        }
        continue;
      }
      let offset = align(cursor);
      if (shardCount > 0 && offset + length > shardSize && cursor > 0) {
        shard++;
        offset = 0;
      }
      shardCount = shard + 1;
      plan.push({ proto: t, shard, offset, length });
      cursor = offset + length;
    }
    const total = plan.reduce((a, p) => a + p.length, 0);

    const shards: { digest: Digest; size: number }[] = [];
    let loaded = 0;
    let mergedTensors = 0;
    // Tensor bytes, read and merged one tensor ahead of the writer.
    const produce = async (k: number): Promise<Uint8Array> => {
      const p = plan[k];
      const bytes = await readTensor(p.proto, k % 2);
      const apps = w.applications.get(p.proto.name!);
      if (!apps) return bytes;
      mergedTensors++;
      if (merged[k % 2].length < bytes.length) merged[k % 2] = Buffer.allocUnsafeSlow(bytes.length);
      return merge(bytes, p.proto, targets.get(p.proto.name!)!, apps, w.ortMergeMinElements, merged[k % 2]);
    };
    let ahead: Promise<Uint8Array> | undefined;
    let i = 0;
    for (let s = 0; s < shardCount; s++) {
      const tempPath = join(w.blobDir, `.shard-${w.role}-${s}`);
      const fh = await open(tempPath, 'w');
      const hash = createHash('sha256');
      let size = 0;
      try {
        for (; i < plan.length && plan[i].shard === s; i++) {
          if (w.aborted()) throw new FuseloadError('aborted', 'build superseded');
          const p = plan[i];
          if (p.offset > size) {
            const pad = Buffer.alloc(p.offset - size);
            hash.update(pad);
            await writeAll(fh, pad);
            size = p.offset;
          }
          const bytes = await (ahead ?? produce(i));
          ahead = i + 1 < plan.length ? produce(i + 1) : undefined;
          ahead?.catch(() => {}); // awaited on the next turn
          // The write copies from `bytes` on libuv's pool while this thread hashes the same
          // (unchanging) bytes; neither touches the buffer until both are done.
          const written = writeAll(fh, bytes);
          written.catch(() => {}); // awaited just below
          hash.update(bytes);
          await written;
          size += bytes.length;
          loaded += bytes.length;
          w.progress({ phase: 'weights', loaded, total });
        }
      } finally {
        await fh.close();
      }
      const digest: Digest = `sha256:${hash.digest('hex')}`;
      await rename(tempPath, join(w.blobDir, digestHex(digest)));
      shards.push({ digest, size });
    }

    const tensors: TensorEntry[] = plan.map((p) => {
      const target = targets.get(p.proto.name!);
      setExternal(p.proto, { location: digestHex(shards[p.shard].digest), offset: p.offset, length: p.length });
      return {
        name: p.proto.name!,
        shard: p.shard,
        offset: p.offset,
        length: p.length,
        dtype: ONNX_DTYPES[p.proto.dataType!].dtype,
        shape: [...(p.proto.dims ?? [])],
        layout: target?.layout ?? 'none',
        ...(target ? { module: target.module } : {}),
      };
    });
    const graphBytes = encodeModel(base.model);
    const graphDigest = await sha256(graphBytes);
    await writeFile(join(w.blobDir, digestHex(graphDigest)), graphBytes);
    const component: Component = {
      graph: { digest: graphDigest, size: graphBytes.length },
      shards,
      base: { digest: await base.digest, source: base.source },
      tensors,
    };
    return { component, bytes: total, mergedTensors };
  } finally {
    for (const fh of files.values()) await fh.close();
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGNMENT) * ALIGNMENT;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.length - at);
    at += bytesWritten;
  }
}

/**
 * Every LoRA aimed at one tensor, through the shared recipe (common/lora/merge-recipe.ts: order,
 * dtype guard, fp32 cast back once, onnxruntime for large LoRA / LoHa / LoKr weights, JavaScript for
 * the rest), the very recipe load-time overlays run, so both give the same bytes.
 */
async function merge(bytes: Uint8Array, _proto: TensorProto, _target: WeightTarget | undefined, apps: Application[], ortMin: number, into?: Uint8Array): Promise<Uint8Array> {
  return mergeTensorBytes(bytes, apps[0].target, apps, { ortMinElements: ortMin, ort: (b, dtype, inputs) => runMergeWithOrt(b, dtype, inputs, into) });
}

/** --out may be missing, empty, or an artifact directory (only blobs/, manifests/, tags/). */
async function checkOutDir(out: string): Promise<void> {
  let entries: string[];
  try {
    const s = await stat(out);
    if (!s.isDirectory()) throw badInput(out, 'exists and is not an artifact directory');
    entries = await readdir(out);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  const foreign = entries.find((e) => !['blobs', 'manifests', 'tags'].includes(e));
  if (foreign) throw badInput(out, `exists and is not an artifact directory (it holds "${foreign}")`);
}

/** Renames the finished temp dir into place; into an existing artifact dir, file by file. */
async function moveInto(temp: string, out: string): Promise<void> {
  try {
    await rename(temp, out);
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'EISDIR') throw e;
  }
  for (const sub of [join('blobs', 'sha256'), join('manifests', 'sha256')]) {
    await mkdir(join(out, sub), { recursive: true });
    for (const name of await readdir(join(temp, sub))) {
      await rename(join(temp, sub, name), join(out, sub, name));
    }
  }
}

/** Store layout for the cache: blobs and manifests as everywhere, plus builds/<key>.json. */
interface CacheRecord {
  fingerprint: Digest;
  /** Per component, so a hit reports what the cold build did. */
  mergedTensors?: Partial<Record<Role, number>>;
}

async function fromCache(store: DiskStore, key: Digest, out: string): Promise<Omit<BuildReport, 'cached' | 'loras'> | null> {
  let record: CacheRecord;
  let manifestBytes: Uint8Array;
  try {
    record = JSON.parse(await readFile(join(store.root, 'builds', `${digestHex(key)}.json`), 'utf8'));
    manifestBytes = await readFile(join(store.root, 'manifests', 'sha256', `${digestHex(record.fingerprint)}.json`));
  } catch {
    return null;
  }
  let manifest: AnyManifest;
  try {
    manifest = await decodeManifest(manifestBytes, 'cached manifest', record.fingerprint);
  } catch {
    return null;
  }
  const blobs = artifactBlobs(manifest);
  for (const b of blobs) if (!(await store.verify(b.digest))) return null;
  const temp = join(dirname(out), `.${basename(out)}.fuseload-${randomBytes(6).toString('hex')}`);
  try {
    await mkdir(join(temp, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(temp, 'manifests', 'sha256'), { recursive: true });
    for (const b of blobs) await copyFile(store.path(b.digest), join(temp, 'blobs', 'sha256', digestHex(b.digest)));
    const rel = join('manifests', 'sha256', `${digestHex(record.fingerprint)}.json`);
    await writeFile(join(temp, rel), manifestBytes);
    await moveInto(temp, out);
    const { cached: _, loras: __, ...report } = reportOf(manifest, record.fingerprint, join(out, rel), record.mergedTensors ?? {}, []);
    return report;
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

async function toCache(
  store: DiskStore,
  key: Digest,
  out: string,
  manifest: AnyManifest,
  fingerprint: Digest,
  manifestBytes: Uint8Array,
  extra: Omit<CacheRecord, 'fingerprint'>,
  progress: (p: BuildProgress) => void,
): Promise<void> {
  const blobs = artifactBlobs(manifest).map((b) => b.digest);
  let done = 0;
  for (const digest of blobs) {
    if (!(await store.has(digest))) {
      const target = store.path(digest);
      await mkdir(dirname(target), { recursive: true });
      const temp = `${target}.tmp-${randomBytes(6).toString('hex')}`;
      // A hard link costs no bytes (blobs are immutable, and the store re-hashes before reuse);
      // a copy across filesystems. Rename keeps it atomic.
      const source = join(out, 'blobs', 'sha256', digestHex(digest));
      await link(source, temp).catch(() => copyFile(source, temp));
      await rename(temp, target);
    }
    progress({ phase: 'store', loaded: ++done, total: blobs.length });
  }
  await store.writeAtomic(join(store.root, 'manifests', 'sha256', `${digestHex(fingerprint)}.json`), manifestBytes);
  await store.writeAtomic(join(store.root, 'builds', `${digestHex(key)}.json`), canonicalJsonBytes({ fingerprint, ...extra }));
}
