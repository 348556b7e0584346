/**
 * The Node engine: onnxruntime-node on CUDA, then CPU. `device: 'auto'` tries both in order;
 * the loader records each failed `create` as a fallback, so the reason ends up in `p.info`.
 *
 * How external data reaches ORT, fastest first:
 * 0. `createFromFiles`: the loader's warm path hands the store's paths (checked by the store,
 *    never read into memory), and the session is created from the graph's path as in 1.
 * 1. From the store's files: when the graph and every shard are byte arrays the disk store
 *    vouches for (read from or written to `blobs/sha256/<hex>`, unmodified since), the session
 *    is created from the graph's file path. The graph's `location`s are the shards' bare hex,
 *    i.e. its siblings there, and ORT maps them instead of copying (≈4× faster on 68 MiB).
 * 2. Otherwise (a LoRA-overlaid copy, a store that could not write): in memory, as
 *    `externalData: [{ path: <hex>, data }]`, which the Node binding takes since 1.20.
 *
 * A graph edited for LoRA switching (common/loader/switchable-graph.ts) is no store file, but
 * its shards still are: it is created from its bytes with ORT's external-initializers folder
 * set to theirs, so the weights are still mapped, not copied (`#createEdited`).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import ort from 'onnxruntime-node';
import { FuseloadError } from '../../common/errors.ts';
import type { FileEngine } from '../../common/loader/index.ts';
import { type Device, type EngineSession, type ExternalDataFile, externalBytes, type Feeds, type Provider, type TensorLike, type WeightFeeding } from '../../common/pipeline.ts';

const NODE_PROVIDERS: Provider[] = ['cuda', 'cpu'];

export interface OrtNodeEngineOptions {
  /** ORT's own log level; 'fatal' keeps its CUDA-loader noise out of CLI output (the reason is in `p.info`). Default 'fatal'. */
  logLevel?: 'verbose' | 'info' | 'warning' | 'error' | 'fatal';
  /** Intra-op threads for CPU sessions; ORT's default (all cores) when absent. */
  intraOpNumThreads?: number;
  /** The file that holds exactly these bytes, if any (DiskStore.fileOf): enables path loading. */
  fileOf?: (bytes: Uint8Array) => Promise<string | null>;
}

export class OrtNodeEngine implements FileEngine {
  constructor(readonly options: OrtNodeEngineOptions = {}) {
    // The environment logger is created once per process, on the first session.
    ort.env.logLevel = options.logLevel ?? 'fatal';
  }

  providers(device: Device): Provider[] {
    switch (device) {
      case 'auto':
        return [...NODE_PROVIDERS];
      case 'cuda':
      case 'cpu':
        return [device];
      default:
        throw new FuseloadError('unsupported', `device "${device}" is not available in Node (use auto, cuda or cpu)`);
    }
  }

  /**
   * A session from the store's files (the loader's warm path, bytes never read here): ORT
   * resolves each `location` beside the graph file, so that is where every shard must be.
   */
  async createFromFiles(graph: string, externalData: { path: string; file: string }[], provider: Provider, edited?: Uint8Array): Promise<EngineSession | null> {
    if (externalData.some((f) => f.file !== join(dirname(graph), f.path))) return null;
    if (edited) return this.#createEdited(edited, dirname(graph), provider);
    const options = this.#sessionOptions(provider);
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(graph, options);
    } catch (e) {
      throw this.#createError(provider, e);
    }
    this.lastSource = 'files';
    return new OrtNodeSession(session);
  }

  #sessionOptions(provider: Provider): ort.InferenceSession.SessionOptions {
    if (!NODE_PROVIDERS.includes(provider)) {
      throw new FuseloadError('unsupported', `execution provider "${provider}" is not available in Node`);
    }
    // Without its provider libraries ORT cannot load CUDA anyway; asking it would only print its
    // native "Failed to load library" errors on every session of a CPU host's `auto` load.
    const missing = provider === 'cuda' ? cudaHint() : null;
    if (missing) throw new FuseloadError('engine', `CUDA execution provider unavailable: ${missing}`);
    return {
      executionProviders: [provider],
      graphOptimizationLevel: 'all',
      logSeverityLevel: severity(this.options.logLevel ?? 'fatal'),
      ...(provider === 'cpu' && this.options.intraOpNumThreads ? { intraOpNumThreads: this.options.intraOpNumThreads } : {}),
    };
  }

  #createError(provider: Provider, e: unknown): FuseloadError {
    const reason = oneLine((e as Error).message);
    if (provider === 'cuda') {
      const hint = cudaHint();
      return new FuseloadError('engine', `CUDA execution provider unavailable: ${hint ? `${hint}; ` : ''}${reason}`, { cause: e });
    }
    return new FuseloadError('engine', `onnxruntime-node could not create a ${provider} session: ${reason}`, { cause: e });
  }

  async create(graph: Uint8Array, externalData: ExternalDataFile[], provider: Provider): Promise<EngineSession> {
    // A graph edited for LoRA switching over the store's shards: mapped as a stored graph's are
    // (a file evicted or replaced since: the verified bytes, below).
    const folder = await this.#storedShards(graph, externalData);
    const edited = folder ? await this.#createEdited(graph, folder, provider).catch(() => null) : null;
    if (edited) return edited;
    const options = this.#sessionOptions(provider);
    let session: ort.InferenceSession;
    try {
      const graphPath = await this.#storedGraph(graph, externalData);
      this.lastSource = graphPath ? 'files' : 'memory';
      try {
        session = graphPath
          ? await ort.InferenceSession.create(graphPath, options)
          : await ort.InferenceSession.create(graph, { ...options, externalData: externalData.map((f) => ({ path: f.path, data: externalBytes(f) })) });
      } catch (e) {
        if (!graphPath) throw e;
        // A file evicted or replaced since the loader read it: the verified bytes are in memory.
        this.lastSource = 'memory';
        session = await ort.InferenceSession.create(graph, { ...options, externalData: externalData.map((f) => ({ path: f.path, data: externalBytes(f) })) });
      }
    } catch (e) {
      throw this.#createError(provider, e);
    }
    return new OrtNodeSession(session);
  }

  // ---------------------------------------------------------------- LoRA switching (common/loader/switch.ts)

  /**
   * How a provider takes weights fed on every run: the CPU provider reads a fed tensor where the
   * JavaScript buffer lies; CUDA copies it to the GPU on every run.
   */
  weightFeeding(provider: Provider): WeightFeeding | null {
    if (provider === 'cpu') return 'in-place';
    if (provider === 'cuda') return 'copied';
    return null;
  }

  /** A session from graph bytes whose shards are the files in `folder` (the graph's `location`s), mapped by ORT. */
  async #createEdited(graph: Uint8Array, folder: string, provider: Provider): Promise<EngineSession> {
    const options = this.#sessionOptions(provider);
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(graph, { ...options, extra: { session: { model_external_initializers_file_folder_path: folder } } });
    } catch (e) {
      throw this.#createError(provider, e);
    }
    this.lastSource = 'files';
    return new OrtNodeSession(session);
  }

  /**
   * The folder that holds every shard as the store's file named by its `location`, when the store
   * vouches for all of them but not for the graph (a stored graph takes the path of `#storedGraph`).
   */
  async #storedShards(graph: Uint8Array, externalData: ExternalDataFile[]): Promise<string | null> {
    const fileOf = this.options.fileOf;
    if (!fileOf || externalData.length === 0 || (await fileOf(graph))) return null;
    let folder: string | null = null;
    for (const f of externalData) {
      const file = await fileOf(externalBytes(f));
      if (!file || (folder !== null && dirname(file) !== folder) || file !== join(dirname(file), f.path)) return null;
      folder = dirname(file);
    }
    return folder;
  }

  /** Where the last session's weights came from (for tests and the bench). */
  lastSource: 'files' | 'memory' | null = null;

  /** The graph's file path when the store vouches for it and for every shard beside it. */
  async #storedGraph(graph: Uint8Array, externalData: ExternalDataFile[]): Promise<string | null> {
    const fileOf = this.options.fileOf;
    if (!fileOf) return null;
    const graphPath = await fileOf(graph);
    if (!graphPath) return null;
    for (const f of externalData) {
      if ((await fileOf(externalBytes(f))) !== join(dirname(graphPath), f.path)) return null;
    }
    return graphPath;
  }
}

class OrtNodeSession implements EngineSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputTypes: Readonly<Record<string, string>>;
  readonly inputDims: Readonly<Record<string, readonly (number | string)[]>>;
  constructor(readonly session: ort.InferenceSession) {
    this.inputNames = [...session.inputNames];
    this.outputNames = [...session.outputNames];
    const types: Record<string, string> = {};
    const dims: Record<string, readonly (number | string)[]> = {};
    for (const m of session.inputMetadata ?? []) {
      if (!m.isTensor) continue;
      types[m.name] = m.type;
      dims[m.name] = m.shape;
    }
    this.inputTypes = types;
    this.inputDims = dims;
  }

  async run(feeds: Feeds): Promise<Feeds> {
    const inputs: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      inputs[name] = new ort.Tensor(t.type as 'float32', t.data as Float32Array, t.dims);
    }
    let outputs: ort.InferenceSession.OnnxValueMapType;
    try {
      outputs = await this.session.run(inputs);
    } catch (e) {
      throw new FuseloadError('engine', `inference failed: ${oneLine((e as Error).message)}`, { cause: e });
    }
    const result: Feeds = {};
    for (const [name, t] of Object.entries(outputs)) {
      result[name] = { type: t.type, dims: t.dims, data: t.data as TensorLike['data'] };
    }
    return result;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

function severity(level: NonNullable<OrtNodeEngineOptions['logLevel']>): 0 | 1 | 2 | 3 | 4 {
  return ({ verbose: 0, info: 1, warning: 2, error: 3, fatal: 4 } as const)[level];
}

function oneLine(message: string): string {
  return message.replace(/\s+/g, ' ').trim().slice(0, 400);
}

/**
 * ORT's own message for a missing CUDA EP is "Failed to load shared library"; say which one,
 * and how to get it, when it is the provider libraries that are missing rather than CUDA itself.
 */
function cudaHint(): string | null {
  try {
    const require = createRequire(import.meta.url);
    const pkg = dirname(require.resolve('onnxruntime-node/package.json'));
    const bin = join(pkg, 'bin', 'napi-v6', process.platform, process.arch);
    if (existsSync(join(bin, 'libonnxruntime_providers_cuda.so'))) return null;
    return 'onnxruntime-node was installed without its CUDA provider libraries (on a GPU host: ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install)';
  } catch {
    return null;
  }
}

/** Which of the engine's providers this install could even try (for /healthz). */
export function installedProviders(): Provider[] {
  return cudaHint() === null ? ['cuda', 'cpu'] : ['cpu'];
}
