/**
 * Switching LoRAs without a new session (docs/architecture.md, "Switching LoRAs without a new
 * session"). A component's session is created once, from its graph blob edited at load time
 * (switchable-graph.ts) so that every LoRA-targetable weight can change per run, one of two
 * ways chosen per provider and per weight:
 *
 * - fed: the weight is a graph input. Every run feeds it: the stored bytes (`BaseWeights`,
 *   shared by every handle of the pipeline) or, under an overlay, a merged copy (the build's
 *   recipe, common/lora/merge-recipe.ts, on the pipeline's onnxruntime for large plain-LoRA
 *   weights) that the handle keeps and replaces on a switch. On WebGPU each is a device tensor,
 *   uploaded once per switch and read on every run without an upload: the default there.
 * - branch: the layer gets `+ (x·down)·up` beside it and keeps its stored weight (folded and
 *   prepacked by onnxruntime as before); an overlay feeds the LoRA's factors (scale × alpha/rank
 *   folded into `up`, several LoRAs stacked along the rank), rank 1 of zeros without one. A
 *   switch costs the LoRA's size, not the weights'. The default everywhere else: WASM copies
 *   every fed tensor into its heap on every run, CUDA uploads it, the CPU provider loses its
 *   prepacked weights and must re-merge on every switch, and a weight behind a Cast or
 *   Transpose (folded into a constant once while the weight is fixed) would be converted again
 *   on every run. Weights with no branch form are fed where that is free or cheap (CPU, WebGPU).
 *
 * A switch (`LoraWeights.apply`) writes new buffers or factors, in place, between runs.
 */
import { FuseloadError } from '../errors.ts';
import { isDeviceTensor, type DeviceFeeds, type DeviceSession, type DeviceSessionLike, type DeviceTensor, type SessionDevice } from '../generate/device/types.ts';
import { isPlainLora } from '../lora/adapter.ts';
import { f32ToF16 } from '../lora/dtype.ts';
import { mergeTensorBytes, orderApplications } from '../lora/merge-recipe.ts';
import { EngineMerger, type MergeDtype, type MergeInputs, mergeGraph, mergeRuns, type MergeTerm, stackFactors } from '../lora/overlay-merge.ts';
import type { Component, Role, TensorEntry, TensorLayout } from '../manifest.ts';
import { concatBytes, encodeField } from '../onnx-wire.ts';
import type { Engine, EngineSession, Feeds, Provider, TensorLike, WeightFeeding } from '../pipeline.ts';
import type { OverlayPlan, OverlayTerm } from './overlay.ts';
import { branchProblem, type LoraBranch, type WeightPath, weightPaths, withLoraBranches, withWeightInputs } from './switchable-graph.ts';

/**
 * Which way weights are switched: `auto` chooses per provider and weight (see the file
 * comment); `weights` feeds every weight whole, `branches` puts every layer that has a branch
 * form on one (both for measuring; docs/architecture.md has the numbers).
 */
export type LoraSwitchMode = 'auto' | 'weights' | 'branches';

/** What a component's session takes for switching, decided when it is created. */
export interface SwitchableComponent {
  role: Role;
  provider: Provider;
  feeding: WeightFeeding;
  /** Targets that are graph inputs, fed on every run (stored or merged), by tensor name. */
  fed: Map<string, TensorEntry>;
  /** Targets with a LoRA branch beside their layer, by tensor name. */
  branches: Map<string, { entry: TensorEntry; branch: LoraBranch; parity: 0 | 1; rows: number; cols: number }>;
  /** Targets this session takes neither way, with why (an overlay on one needs the copy-on-merge path). */
  fixed: Map<string, string>;
}

/**
 * The graph blob edited for switching on `provider`, and what its session takes; null when the
 * component has no LoRA-targetable weight (its session is the plain one).
 */
export function switchableGraph(
  graph: Uint8Array,
  component: Component,
  role: Role,
  provider: Provider,
  feeding: WeightFeeding,
  mode: LoraSwitchMode,
  label: string,
): { graph: Uint8Array; component: SwitchableComponent } | null {
  const targets = component.tensors.filter((t) => t.module && t.layout !== 'none');
  if (targets.length === 0) return null;
  const paths = weightPaths(graph, targets.map((t) => t.name), label);
  const fed = new Map<string, TensorEntry>();
  const branched = new Map<string, TensorEntry>();
  const fixed = new Map<string, string>();
  for (const t of targets) {
    const path = paths.get(t.name)!;
    if (typeof path === 'string') {
      fixed.set(t.name, path);
      continue;
    }
    if (mode === 'weights') {
      fed.set(t.name, t);
      continue;
    }
    // Cast / Transpose on a fixed weight are folded into a constant once; on a fed one they would run every step.
    const folded = path.via.some((op) => op === 'Cast' || op === 'Transpose');
    const problem = branchProblem(path);
    // Only a device tensor is fed for free: on the CPU a fed weight loses onnxruntime's prepacking
    // and every switch re-merges it, on WASM and CUDA it is copied every run (docs/architecture.md).
    const wantBranch = mode === 'branches' || folded || feeding !== 'device';
    if (wantBranch && problem === null) branched.set(t.name, t);
    else if (folded) fixed.set(t.name, `reaches its ${path.layer.op} through ${path.via.join('/')} (folded into a constant once), and ${problem}`);
    else if (feeding === 'copied') fixed.set(t.name, `${problem}, and a fed weight would be copied on every run`);
    else fed.set(t.name, t);
  }
  // onnxruntime-node (CPU, CUDA) fuses the branch's last MatMul and an Add into a Gemm; WASM runs a Sum faster (withLoraBranches).
  const withBranches = withLoraBranches(graph, branched.keys(), label, provider === 'cpu' || provider === 'cuda' ? 'Add' : 'Sum');
  for (const [name, why] of withBranches.skipped) {
    branched.delete(name);
    fixed.set(name, why);
  }
  const edited = withWeightInputs(withBranches.graph, fed.keys(), label);
  for (const name of [...fed.keys()]) if (!edited.inputs.includes(name)) {
    fed.delete(name);
    fixed.set(name, 'is not an initializer of the main graph');
  }
  const branches: SwitchableComponent['branches'] = new Map();
  for (const [name, branch] of withBranches.branches) {
    const entry = branched.get(name)!;
    const path = paths.get(name) as WeightPath;
    const rows = entry.shape[0];
    const cols = entry.shape.slice(1).reduce((a, b) => a * b, 1);
    branches.set(name, { entry, branch, parity: (path.transposes % 2) as 0 | 1, rows, cols });
  }
  return { graph: edited.graph, component: { role, provider, feeding, fed, branches, fixed } };
}

/** Why `terms` cannot be switched to on `sw`'s session (null: they can). */
function tensorProblem(sw: SwitchableComponent, entry: TensorEntry, terms: readonly OverlayTerm[]): string | null {
  if (sw.fed.has(entry.name)) return null;
  if (sw.branches.has(entry.name)) return plainOnly(terms) ? null : `is on a LoRA branch, which takes plain LoRA only (not ${[...new Set(terms.map((t) => (t.part === 'bias' ? 'a bias delta' : t.module.adapter?.type)))].join('/')})`;
  return sw.fixed.get(entry.name) ?? 'is not switchable in this session';
}

const plainOnly = (terms: readonly OverlayTerm[] | undefined): boolean => !!terms && terms.every((t) => t.part === 'weight' && isPlainLora(t.module));

export interface SwitchRuntimeOptions {
  engine: Engine;
  warn: (message: string) => void;
  /** Weights with at least this many elements merge on onnxruntime (the recipe's default when absent). */
  ortMinElements?: number;
}

/** One switchable session per role, as the loader built them. */
export type SwitchableSessions = ReadonlyMap<Role, { session: EngineSession; component: SwitchableComponent }>;

/** A loader's switching parts: one merger and one upload session per device, shared by every pipeline. */
export function createSwitchRuntime(options: SwitchRuntimeOptions) {
  const merger = new EngineMerger(options.engine, options.warn);
  const uploads = new Map<SessionDevice, Map<string, Promise<DeviceSessionLike>>>();

  /** A small graph's session on `device`, made once per key. */
  function deviceSession(device: SessionDevice, key: string, graph: () => Uint8Array): Promise<DeviceSessionLike> {
    let byKey = uploads.get(device);
    if (!byKey) uploads.set(device, (byKey = new Map()));
    let session = byKey.get(key);
    if (!session) {
      session = device.createSession(graph());
      byKey.set(key, session);
      session.catch(() => byKey.delete(key));
    }
    return session;
  }

  async function onDevice(session: Promise<DeviceSessionLike>, feeds: DeviceFeeds, what: string): Promise<DeviceTensor> {
    const y = (await (await session).runDevice(feeds, ['y'])).y;
    if (!isDeviceTensor(y)) throw new FuseloadError('engine', `${what} left a weight on the CPU`);
    return y;
  }

  /** A device tensor holding `t` (one upload, through an Identity session on that device). */
  function upload(device: SessionDevice, t: TensorLike): Promise<DeviceTensor> {
    return onDevice(deviceSession(device, `identity/${t.type}/${t.dims.length}`, () => identityGraph(t.type, t.dims.length)), { x: t }, 'uploading');
  }

  /** `t` (on the device) as `dims`: a copy on the device, the caller's to dispose. */
  function reshape(device: SessionDevice, t: DeviceTensor, dims: readonly number[]): Promise<DeviceTensor> {
    const session = deviceSession(device, `reshape/${t.type}`, () => reshapeGraph(t.type));
    return onDevice(session, { x: t, shape: { type: 'int64', dims: [dims.length], data: BigInt64Array.from(dims.map(BigInt)) } }, 'reshaping');
  }

  /**
   * The recipe's onnxruntime merge (the same graph and inputs as EngineMerger's) run once over
   * the whole weight on `device`, from the stored weight's own device tensor, its result kept
   * there as the merged weight: only the LoRA's factors go up, nothing comes back. Null when the
   * merge needs several runs (block factors) or its graph does not run there (the caller then
   * merges on the CPU and uploads the result once).
   */
  async function deviceMerge(device: SessionDevice, base: DeviceTensor, dtype: MergeDtype, inputs: MergeInputs): Promise<DeviceTensor | null> {
    const runs = [...mergeRuns(inputs, Number.POSITIVE_INFINITY)];
    if (runs.length !== 1) return null;
    const merge = deviceSession(device, `merge/${inputs.kind}/${dtype}`, () => mergeGraph(dtype, inputs.kind));
    if (!(await merge.then(() => true).catch(() => false))) return null;
    const matrix = base.dims.length === 2 && base.dims[0] === inputs.rows && base.dims[1] === inputs.cols;
    const w = matrix ? base : await reshape(device, base, [inputs.rows, inputs.cols]);
    let y: DeviceTensor;
    try {
      const feeds: DeviceFeeds = { w };
      for (const f of runs[0].factors) feeds[f.name] = { type: 'float32', dims: f.dims, data: f.data };
      y = await onDevice(merge, feeds, 'merging');
    } finally {
      if (w !== base) w.dispose();
    }
    if (matrix) return y;
    try {
      return await reshape(device, y, base.dims);
    } finally {
      y.dispose();
    }
  }

  return {
    /** Why `plan` cannot be switched to on these sessions (null: it can), naming the component and weight. */
    problem(components: ReadonlyMap<Role, SwitchableComponent>, plan: OverlayPlan, label: string): string | null {
      for (const [role, targets] of plan.terms) {
        const sw = components.get(role);
        for (const [entry, terms] of targets) {
          const why = sw ? tensorProblem(sw, entry, terms) : 'its session was made without switchable weights';
          if (why) return `${label}/${role}: weight "${entry.name}" ${why}`;
        }
      }
      return null;
    },

    /** The stored weights every run of a pipeline's sessions feeds unless an overlay replaces them (one per pipeline; filled per component). */
    base(read: ShardReader): BaseWeights {
      return new BaseWeights(upload, read);
    },

    /** The switchable state of one pipeline handle (call `apply` before its first run). */
    weights(sessions: SwitchableSessions, base: BaseWeights): LoraWeights {
      return new LoraWeights(sessions, base, { merger, upload, deviceMerge, ortMinElements: options.ortMinElements });
    },
  };
}

export type SwitchRuntime = ReturnType<typeof createSwitchRuntime>;

type Upload = (device: SessionDevice, t: TensorLike) => Promise<DeviceTensor>;

/** The session's device when its provider takes fed weights as device tensors. */
function deviceOf(session: EngineSession, component: SwitchableComponent): SessionDevice | null {
  return component.feeding === 'device' ? ((session as Partial<DeviceSession>).device ?? null) : null;
}

/** A shard of a component's base by its index in `component.shards`, as stored (verified). */
export type ShardReader = (role: Role, shard: number) => Promise<Uint8Array>;

/**
 * What a run feeds for a fed weight no overlay changes, per component: on the CPU views of the
 * stored shards (which are then kept), on a device their device tensors, uploaded once (the
 * stored bytes are let go and read again only for a CPU-side merge). Shared by every handle of
 * one cached pipeline; the sessions hold none of these weights.
 */
export class BaseWeights {
  readonly #weights = new Map<Role, Map<string, { bytes: Uint8Array | null; feed: TensorLike | DeviceTensor }>>();
  readonly #adding = new Map<Role, Promise<void>>();
  readonly #upload: Upload;
  readonly #read: ShardReader;
  #disposed = false;

  /** `read` gets a shard whenever stored bytes are needed again (memory → store → network). */
  constructor(upload: Upload, read: ShardReader) {
    this.#upload = upload;
    this.#read = read;
  }

  /** Reads (or uploads) `role`'s fed weights once, from `shard` (the build's bytes in hand, or `read`). */
  add(role: Role, session: EngineSession, component: SwitchableComponent, shard: (index: number) => Promise<Uint8Array> = (i) => this.#read(role, i)): Promise<void> {
    let adding = this.#adding.get(role);
    if (!adding) {
      adding = this.#fill(role, session, component, shard);
      this.#adding.set(role, adding);
      adding.catch(() => this.#adding.delete(role));
    }
    return adding;
  }

  async #fill(role: Role, session: EngineSession, component: SwitchableComponent, shard: (index: number) => Promise<Uint8Array>): Promise<void> {
    const device = deviceOf(session, component);
    const byName = new Map<string, { bytes: Uint8Array | null; feed: TensorLike | DeviceTensor }>();
    try {
      await this.#fillFrom(byName, role, device, component, shard);
    } catch (e) {
      for (const w of byName.values()) if (isDeviceTensor(w.feed)) w.feed.dispose();
      throw e;
    }
    if (this.#disposed) {
      for (const w of byName.values()) if (isDeviceTensor(w.feed)) w.feed.dispose();
      throw new FuseloadError('bad-input', 'the pipeline\'s weights were released');
    }
    this.#weights.set(role, byName);
  }

  async #fillFrom(byName: Map<string, { bytes: Uint8Array | null; feed: TensorLike | DeviceTensor }>, role: Role, device: SessionDevice | null, component: SwitchableComponent, shard: (index: number) => Promise<Uint8Array>): Promise<void> {
    const entries = [...component.fed.values()].sort((a, b) => a.shard - b.shard || a.offset - b.offset);
    let index = -1;
    let bytes: Uint8Array | null = null;
    for (const entry of entries) {
      if (index !== entry.shard || !bytes) {
        bytes = null; // one shard in hand at a time
        bytes = await shard(entry.shard);
        index = entry.shard;
      }
      const tensor = tensorOf(entry, bytes, role);
      byName.set(entry.name, device ? { bytes: null, feed: await this.#upload(device, tensor) } : { bytes: new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength), feed: tensor });
    }
  }

  /** Whether `role`'s fed weights are views of the shard bytes they were filled from (kept on the CPU), which must then stay where they are. */
  holdsShards(role: Role): boolean {
    for (const w of this.#weights.get(role)?.values() ?? []) if (w.bytes) return true;
    return false;
  }

  /** The stored bytes of a fed weight (read again on a device: only a CPU-side merge needs them). */
  async bytes(role: Role, entry: TensorEntry): Promise<Uint8Array> {
    const w = this.#weights.get(role)?.get(entry.name);
    if (!w) throw new FuseloadError('engine', `${role}: no stored weight "${entry.name}"`);
    if (w.bytes) return w.bytes;
    const t = tensorOf(entry, await this.#read(role, entry.shard), role);
    return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  }

  /** What every run of `role` feeds for its fed weights. */
  feeds(role: Role): DeviceFeeds {
    if (this.#disposed) throw new FuseloadError('bad-input', 'the pipeline\'s weights were released');
    const feeds: DeviceFeeds = {};
    for (const [name, w] of this.#weights.get(role) ?? []) feeds[name] = w.feed;
    return feeds;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const byName of this.#weights.values()) for (const w of byName.values()) if (isDeviceTensor(w.feed)) w.feed.dispose();
    this.#weights.clear();
  }
}

/** A tensor index entry's bytes in its shard as a tensor (a copy when the view would be unaligned). */
function tensorOf(entry: TensorEntry, shard: Uint8Array, role: Role): TensorLike {
  if (entry.offset + entry.length > shard.byteLength) throw new FuseloadError('bad-input', `${role}: tensor "${entry.name}" ends past its shard`);
  let bytes = shard.subarray(entry.offset, entry.offset + entry.length);
  // Typed views need an aligned offset (tensors are aligned in their shard, a shard's buffer may not be).
  if (bytes.byteOffset % 8) bytes = bytes.slice();
  return { type: entry.dtype, dims: entry.shape, data: typedView(bytes, entry.dtype) };
}

interface WeightsDeps {
  merger: EngineMerger;
  upload: Upload;
  deviceMerge(device: SessionDevice, base: DeviceTensor, dtype: MergeDtype, inputs: MergeInputs): Promise<DeviceTensor | null>;
  ortMinElements?: number;
}

interface ComponentState {
  session: EngineSession;
  sw: SwitchableComponent;
  device: SessionDevice | null;
  /** The stored weights (shared), then this handle's own: merged weights and branch factors. */
  base: DeviceFeeds;
  own: DeviceFeeds;
  /** Merged weights on the CPU (fed in place): kept and rewritten while a weight stays switched. */
  buffers: Map<string, Uint8Array>;
  /** Merged weights on the device. */
  resident: Map<string, DeviceTensor>;
  /** Input names the session has for switching: kept out of the handle's `inputNames`. */
  hidden: Set<string>;
}

/** How many weights the current overlays change, per component and way (`info.loraSwitch`). */
export type SwitchCounts = Partial<Record<Role, { fed: number; branched: number }>>;

/**
 * One pipeline handle's overlays on shared sessions: the merged weights and branch factors its
 * runs feed. `apply` waits for the runs in flight, rewrites them in place and lets runs go on;
 * sessions are wrapped so a caller (or the generation loop) never sees or feeds those inputs.
 */
export class LoraWeights {
  readonly #components = new Map<Role, ComponentState>();
  readonly #deps: WeightsDeps;
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #baseWeights: BaseWeights;
  #switching: Promise<void> | null = null;
  #disposed = false;
  #counts: SwitchCounts = {};
  /** The wrapped session per role. */
  readonly sessions: Partial<Record<Role, EngineSession>> = {};

  constructor(sessions: SwitchableSessions, base: BaseWeights, deps: WeightsDeps) {
    this.#deps = deps;
    this.#baseWeights = base;
    for (const [role, { session, component }] of sessions) {
      const hidden = new Set<string>(component.fed.keys());
      for (const b of component.branches.values()) hidden.add(b.branch.down).add(b.branch.up);
      const state: ComponentState = { session, sw: component, device: deviceOf(session, component), base: base.feeds(role), own: {}, buffers: new Map(), resident: new Map(), hidden };
      this.#components.set(role, state);
      this.sessions[role] = this.#wrap(state);
    }
  }

  /** Weights the last `apply` switched, per component and way. */
  get counts(): SwitchCounts {
    return structuredClone(this.#counts);
  }

  #wrap(state: ComponentState): EngineSession {
    const { session, hidden } = state;
    const run = <T>(call: () => Promise<T>): Promise<T> => this.#run(call);
    const extra = () => ({ ...state.base, ...state.own });
    const wrapped: EngineSession = {
      inputNames: session.inputNames.filter((n) => !hidden.has(n)),
      outputNames: session.outputNames,
      ...(session.inputTypes ? { inputTypes: strip(session.inputTypes, hidden) } : {}),
      ...(session.inputDims ? { inputDims: strip(session.inputDims, hidden) } : {}),
      run: (feeds: Feeds) => run(() => session.run({ ...feeds, ...(extra() as Feeds) })),
      release: async () => {},
    };
    const device = session as Partial<DeviceSession>;
    if (!device.runDevice || !device.device) return wrapped;
    // A WebGPU session keeps tensors on the GPU between calls (common/generate/device): so does its wrapper.
    const runDevice = device.runDevice.bind(session);
    const onDevice: EngineSession & DeviceSession = {
      ...wrapped,
      device: device.device,
      runDevice: (feeds, keep, read) => run(() => runDevice({ ...feeds, ...extra() }, keep, read)),
    };
    return onDevice;
  }

  async #run<T>(call: () => Promise<T>): Promise<T> {
    while (this.#switching) await this.#switching;
    if (this.#disposed) throw new FuseloadError('bad-input', 'run after dispose');
    const p = call();
    this.#inflight.add(p);
    try {
      return await p;
    } finally {
      this.#inflight.delete(p);
    }
  }

  /**
   * Makes every run from now on see `plan`'s overlays: merged weights rewritten in place (a
   * weight no overlay touches any more is fed its stored bytes again and its buffer dropped),
   * branch factors replaced. Runs in flight finish on the old weights first.
   */
  apply(plan: OverlayPlan | Promise<OverlayPlan>, onTensor?: (name: string, done: number, total: number) => void): Promise<SwitchCounts> {
    // Runs asked for from now on wait for this switch (even while `plan` is still being fetched).
    const previous = this.#switching;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    this.#switching = gate;
    return this.#apply(previous, plan, onTensor).finally(() => {
      if (this.#switching === gate) this.#switching = null;
      release();
    });
  }

  async #apply(previous: Promise<void> | null, planned: OverlayPlan | Promise<OverlayPlan>, onTensor?: (name: string, done: number, total: number) => void): Promise<SwitchCounts> {
    await previous;
    const plan = await planned;
    await Promise.allSettled([...this.#inflight]);
    const total = [...plan.terms.values()].reduce((n, m) => n + m.size, 0);
    let done = 0;
    const counts: SwitchCounts = {};
    for (const [role, state] of this.#components) {
      const count = (counts[role] = { fed: 0, branched: 0 });
      const terms = plan.terms.get(role) ?? new Map<TensorEntry, OverlayTerm[]>();
      const byName = new Map([...terms].map(([e, t]) => [e.name, t] as const));
      // Branches: the stacked factors of plain LoRAs, rank 1 of zeros where none lands.
      for (const [name, b] of state.sw.branches) {
        const t = byName.get(name);
        const factors = t ? branchFactors(b, t) : zeroFactors(b);
        state.own[b.branch.down] = factors.down;
        state.own[b.branch.up] = factors.up;
        if (t) {
          count.branched++;
          onTensor?.(name, ++done, total);
        }
      }
      // Fed weights: merged where an overlay lands, the stored ones elsewhere.
      for (const [name, entry] of state.sw.fed) {
        const t = byName.get(name);
        if (!t) {
          this.#unfeed(state, name);
          continue;
        }
        await this.#feedMerged(state, entry, await this.#baseWeights.bytes(role, entry), t);
        count.fed++;
        onTensor?.(name, ++done, total);
      }
    }
    this.#counts = counts;
    return this.counts;
  }

  #unfeed(state: ComponentState, name: string): void {
    delete state.own[name];
    state.buffers.delete(name);
    state.resident.get(name)?.dispose();
    state.resident.delete(name);
  }

  async #feedMerged(state: ComponentState, entry: TensorEntry, base: Uint8Array, terms: OverlayTerm[]): Promise<void> {
    if (state.device) return this.#feedOnDevice(state, state.device, entry, base, terms);
    let buffer = state.buffers.get(entry.name);
    if (!buffer || buffer.byteLength !== entry.length) buffer = aligned(entry.length);
    const providers = [state.sw.provider];
    const merged = await mergeTensorBytes(base, entry, terms, {
      ortMinElements: this.#deps.ortMinElements,
      // As overlay.ts's mergeTensor: the merge graph writes straight into the reusable buffer.
      ort: async (bytes, dtype, inputs) => ((await this.#deps.merger.run(bytes, buffer!, dtype, inputs, providers)) ? buffer! : null),
    });
    if (merged !== buffer) buffer.set(merged);
    state.buffers.set(entry.name, buffer);
    state.own[entry.name] = { type: entry.dtype, dims: entry.shape, data: typedView(buffer, entry.dtype) };
  }

  /**
   * On a device: large weights merge there (the recipe's graph, its result kept as the device
   * tensor), the rest merge on the CPU and go up once. The old device tensor goes first (no run
   * is in flight during a switch), so its buffer is the one onnxruntime reuses for the new one.
   */
  async #feedOnDevice(state: ComponentState, device: SessionDevice, entry: TensorEntry, base: Uint8Array, terms: OverlayTerm[]): Promise<void> {
    this.#unfeed(state, entry.name);
    let resident: DeviceTensor | null = null;
    const stored = state.base[entry.name];
    const merged = await mergeTensorBytes(base, entry, terms, {
      ortMinElements: this.#deps.ortMinElements,
      // The recipe picks the engine and builds the inputs; the merge itself runs on the device, from the stored weight there.
      ort: async (bytes, dtype, inputs) => {
        if (!isDeviceTensor(stored)) return null;
        resident = await this.#deps.deviceMerge(device, stored, dtype, inputs).catch(() => null);
        return resident ? bytes : null;
      },
    });
    resident ??= await this.#deps.upload(device, { type: entry.dtype, dims: entry.shape, data: typedView(merged.byteOffset % 8 ? merged.slice() : merged, entry.dtype) });
    state.resident.set(entry.name, resident);
    state.own[entry.name] = resident;
  }

  /** Drops this handle's merged weights and device tensors (the sessions and stored weights are the pipeline's). */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    while (this.#switching) await this.#switching;
    this.#disposed = true;
    await Promise.allSettled([...this.#inflight]);
    for (const state of this.#components.values()) {
      for (const t of state.resident.values()) t.dispose();
      state.resident.clear();
      state.buffers.clear();
      state.own = {};
    }
  }
}

function strip<V>(record: Readonly<Record<string, V>>, hidden: ReadonlySet<string>): Record<string, V> {
  return Object.fromEntries(Object.entries(record).filter(([k]) => !hidden.has(k)));
}

/** An 8-byte aligned buffer (typed views of any float dtype). */
function aligned(length: number): Uint8Array {
  return new Uint8Array(new ArrayBuffer(Math.ceil(length / 8) * 8), 0, length);
}

function typedView(bytes: Uint8Array, dtype: string): TensorLike['data'] {
  if (dtype === 'float32') return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  if (dtype === 'float16' || dtype === 'bfloat16') return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  return bytes;
}

function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}

function asDtype(values: Float32Array, dtype: 'float32' | 'float16', dims: number[]): TensorLike {
  return dtype === 'float32' ? { type: 'float32', dims, data: values } : { type: 'float16', dims, data: f32ToF16(values) };
}

type BranchState = SwitchableComponent['branches'] extends Map<string, infer B> ? B : never;

/**
 * A branch's factors for plain LoRAs on its weight, from the recipe's own stacking (the
 * build's order, each up pre-scaled by scale × alpha/rank): the stored ΔW = left·right
 * [rows, cols]; the layer reads the weight as stored, or transposed (parity 1).
 */
function branchFactors(b: BranchState, terms: readonly OverlayTerm[]): { down: TensorLike; up: TensorLike } {
  const mergeTerms: MergeTerm[] = orderApplications(terms).map(({ module, scale }) => ({ up: module.up!, down: module.down!, alpha: module.alpha, scale }));
  const layout = b.entry.layout as Exclude<TensorLayout, 'none'>;
  const { rows, cols, rank, left, right } = stackFactors(mergeTerms, b.entry.shape, layout);
  const { dtype } = b.branch;
  if (b.branch.kind === 'conv') {
    // ΔW [out, in·kh·kw] = left [out, R] · right [R, in·kh·kw]: down is right as a kernel, up is left as a 1×1 conv.
    return { down: asDtype(right, dtype, [rank, ...b.entry.shape.slice(1)]), up: asDtype(left, dtype, [rows, rank, 1, 1]) };
  }
  // y = x·M with M the stored ΔW (parity 0) or its transpose (parity 1).
  return b.parity === 0
    ? { down: asDtype(left, dtype, [rows, rank]), up: asDtype(right, dtype, [rank, cols]) }
    : { down: asDtype(transpose(right, rank, cols), dtype, [cols, rank]), up: asDtype(transpose(left, rows, rank), dtype, [rank, rows]) };
}

/** Rank 1 of zeros: the branch adds nothing (a rank-0 product is not something every provider runs). */
function zeroFactors(b: BranchState): { down: TensorLike; up: TensorLike } {
  const { dtype } = b.branch;
  const z = (n: number, dims: number[]) => asDtype(new Float32Array(n), dtype, dims);
  if (b.branch.kind === 'conv') return { down: z(b.cols, [1, ...b.entry.shape.slice(1)]), up: z(b.rows, [b.rows, 1, 1, 1]) };
  const [k, n] = b.parity === 0 ? [b.rows, b.cols] : [b.cols, b.rows];
  return { down: z(k, [k, 1]), up: z(n, [1, n]) };
}

const ELEM: Record<string, number> = { float32: 1, uint8: 2, int8: 3, int32: 6, int64: 7, bool: 9, float16: 10, bfloat16: 16 };

/** `y = Reshape(x, shape)` for one element type, any rank in and out: a weight to the merge graph's matrix and back. */
function reshapeGraph(type: string): Uint8Array {
  const elem = ELEM[type];
  if (!elem) throw new FuseloadError('unsupported', `a ${type} weight cannot be reshaped on the device`);
  // No shape in the value infos: any rank.
  const value = (name: string, elemType: number) => concatBytes([encodeField(1, name), encodeField(2, encodeField(1, encodeField(1, elemType)))]);
  const node = concatBytes([encodeField(1, 'x'), encodeField(1, 'shape'), encodeField(2, 'y'), encodeField(3, 'reshape'), encodeField(4, 'Reshape')]);
  const graph = concatBytes([encodeField(1, node), encodeField(2, 'fuseload_reshape'), encodeField(11, value('x', elem)), encodeField(11, value('shape', ELEM.int64)), encodeField(12, value('y', elem))]);
  return concatBytes([encodeField(1, 8), encodeField(2, 'fuseload'), encodeField(8, concatBytes([encodeField(1, ''), encodeField(2, 17)])), encodeField(7, graph)]);
}

/** `y = Identity(x)` for one element type and rank: how a CPU tensor becomes a device tensor, once. */
function identityGraph(type: string, rank: number): Uint8Array {
  const elem = ELEM[type];
  if (!elem) throw new FuseloadError('unsupported', `a ${type} weight cannot be uploaded to the device`);
  const value = (name: string) => {
    const shape = concatBytes(Array.from({ length: rank }, (_, i) => encodeField(1, encodeField(2, `d${i}`))));
    return concatBytes([encodeField(1, name), encodeField(2, encodeField(1, concatBytes([encodeField(1, elem), encodeField(2, shape)])))]);
  };
  const node = concatBytes([encodeField(1, 'x'), encodeField(2, 'y'), encodeField(3, 'upload'), encodeField(4, 'Identity')]);
  const graph = concatBytes([encodeField(1, node), encodeField(2, 'fuseload_upload'), encodeField(11, value('x')), encodeField(12, value('y'))]);
  return concatBytes([encodeField(1, 8), encodeField(2, 'fuseload'), encodeField(8, concatBytes([encodeField(1, ''), encodeField(2, 17)])), encodeField(7, graph)]);
}
