/**
 * The browser Engine: onnxruntime-web with its WebGPU and WASM (CPU) providers. `auto` tries
 * WebGPU, then WASM; the loader records why WebGPU was passed over. ORT's .wasm/.mjs come from
 * our own origin (`wasmPaths`), never a CDN.
 *
 * Which ORT build (docs/architecture.md, "Large pipelines and onnxruntime-web"): the JSPI one where
 * the browser has JavaScript Promise Integration (`WebAssembly.Suspending`, Chromium 137+), else the
 * asyncify one. Both carry the same providers; the JSPI build also takes external data as a `Blob`
 * and reads it one tensor at a time, so the loader hands it stored shards as IndexedDB handles
 * (`externalDataBlobs`) and a 2 GiB UNet is never whole in JavaScript beside ORT's own copy.
 */
import type * as Ort from 'onnxruntime-web/webgpu';
import { STALL_MS, StallSafeBlob } from './blob-reads.ts';
import { type DeviceFeeds, type DeviceSessionLike, type DeviceTensor, isDeviceTensor, type SessionDevice } from '../common/generate/device/types.ts';
import type { Device, Engine, EngineSession, ExternalDataFile, Feeds, Provider, TensorLike, WeightFeeding } from '../common/pipeline.ts';

type OrtModule = typeof Ort;

/** onnxruntime-web's builds this engine loads: `jspi` where the browser has JSPI, else `asyncify`. */
export type OrtBuild = 'jspi' | 'asyncify';

export interface OrtEngineOptions {
  /** URL prefix where ORT's runtime files are served (default `<page origin>/ort/`, `fuseload/vite`, web/vite-plugin-ort.ts). */
  wasmPaths?: string;
  /** The ORT build (default `jspi` where `WebAssembly.Suspending` exists, else `asyncify`). */
  build?: OrtBuild;
  /** Told when a read of a stored shard stalled and was started again (web/blob-reads.ts). */
  warn?: (message: string) => void;
}

/** Whether this browser has JavaScript Promise Integration, which the JSPI build needs. */
export const hasJspi = (): boolean => typeof (WebAssembly as { Suspending?: unknown }).Suspending === 'function';

interface LoadedOrt {
  ort: OrtModule;
  webgpu: WebGpuDevice;
}

/** Each build once per page or worker: ORT initializes its WASM once, with the first session's `env`. */
const builds = new Map<OrtBuild, Promise<LoadedOrt>>();

function loadOrt(build: OrtBuild, wasmPaths: string): Promise<LoadedOrt> {
  let loaded = builds.get(build);
  if (!loaded) {
    loaded = (build === 'jspi' ? import('onnxruntime-web/jspi') : import('onnxruntime-web/webgpu')).then((ort: OrtModule) => {
      ort.env.wasm.wasmPaths = wasmPaths;
      // Threads need SharedArrayBuffer, which only a cross-origin isolated page has.
      ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
      ort.env.wasm.proxy = false;
      ort.env.logLevel = 'error';
      return { ort, webgpu: new WebGpuDevice(ort) };
    });
    builds.set(build, loaded);
    loaded.catch(() => builds.delete(build));
  }
  return loaded;
}

export interface WebGpuAdapterReport {
  available: boolean;
  /** Why not, when unavailable. */
  reason?: string;
  vendor?: string;
  architecture?: string;
  /** Whether float16 shaders are possible; ORT enables them only then. */
  shaderF16?: boolean;
  /** A software adapter (SwiftShader, `isFallbackAdapter`): far slower than WASM, so `auto` passes it over. */
  software?: boolean;
}

/** The slice of WebGPU's types we touch (no @webgpu/types dependency for three fields). */
interface GpuAdapter {
  readonly features: ReadonlySet<string>;
  readonly info?: { vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean };
  readonly isFallbackAdapter?: boolean;
}
interface Gpu {
  requestAdapter(): Promise<GpuAdapter | null>;
}

let adapterReport: Promise<{ report: WebGpuAdapterReport; adapter: GpuAdapter | null }> | null = null;

/** Asks for a WebGPU adapter once per page; the answer also feeds ORT (`env.webgpu.adapter`). */
export function webgpuAdapter(): Promise<WebGpuAdapterReport> {
  return probeAdapter().then((a) => a.report);
}

function probeAdapter() {
  adapterReport ??= (async () => {
    const gpu = (globalThis.navigator as Navigator & { gpu?: Gpu }).gpu;
    if (!gpu) return { report: { available: false, reason: 'navigator.gpu is missing (WebGPU is off in this browser or context)' }, adapter: null };
    let adapter: GpuAdapter | null = null;
    try {
      adapter = await gpu.requestAdapter();
    } catch (e) {
      return { report: { available: false, reason: `navigator.gpu.requestAdapter() failed: ${(e as Error).message}` }, adapter: null };
    }
    if (!adapter) return { report: { available: false, reason: 'navigator.gpu.requestAdapter() returned no adapter' }, adapter: null };
    const info = adapter.info;
    const software = !!(info?.isFallbackAdapter ?? adapter.isFallbackAdapter) || /swiftshader|llvmpipe|software/i.test(`${info?.vendor} ${info?.architecture} ${info?.description}`);
    return {
      report: { available: true, vendor: info?.vendor, architecture: info?.architecture, shaderF16: adapter.features.has('shader-f16'), software },
      adapter,
    };
  })();
  return adapterReport;
}

export interface OrtEngine extends Engine {
  /** The ORT build its sessions run on. */
  readonly build: OrtBuild;
}

export function createOrtEngine(options: OrtEngineOptions = {}): OrtEngine {
  const { warn } = options;
  const wasmPaths = options.wasmPaths ?? new URL('/ort/', globalThis.location?.href).href;
  const build = options.build ?? (hasJspi() ? 'jspi' : 'asyncify');
  if (build === 'jspi' && !hasJspi()) throw new Error("onnxruntime-web's JSPI build needs WebAssembly.Suspending, which this browser lacks");

  return {
    build,
    externalDataBlobs: build === 'jspi',
    providers(device: Device): Provider[] {
      if (device === 'auto') return ['webgpu', 'wasm'];
      if (device === 'webgpu' || device === 'wasm') return [device];
      return [];
    },
    weightFeeding: loraWeightFeeding,
    async create(graph: Uint8Array, externalData: ExternalDataFile[], provider: Provider, device?: Device): Promise<EngineSession> {
      const { ort, webgpu } = await loadOrt(build, wasmPaths);
      if (provider === 'webgpu') {
        const { report, adapter } = await probeAdapter();
        if (!adapter) throw new Error(`WebGPU unavailable: ${report.reason}`);
        // A software adapter runs the sample ~100× slower than WASM: only an explicit 'webgpu' gets it.
        if (report.software && device !== 'webgpu') {
          throw new Error(`the WebGPU adapter is a software fallback (${report.vendor || 'unknown vendor'} ${report.architecture || ''}`.trim() + `), slower than WASM; device 'webgpu' forces it`);
        }
        // Hand ORT the adapter we probed so it does not pick another one.
        (ort.env.webgpu as { adapter?: unknown }).adapter = adapter;
      }
      const options: Ort.InferenceSession.SessionOptions = {
        executionProviders: [provider],
        // A stored shard's Blob is wrapped so that ORT's reads of it cannot hang (blob-reads.ts).
        externalData: externalData.map((f) => ({ path: f.path, data: f.data instanceof Blob ? new StallSafeBlob(f.data, { onStall: (at) => warn?.(stallMessage(f.path, at)) }) : f.data })),
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      };
      if (provider === 'webgpu') return webgpu.session(graph, options);
      const session = await ort.InferenceSession.create(graph, options);
      return {
        ...sessionMetadata(session),
        async run(feeds: Feeds): Promise<Feeds> {
          const outputs = await session.run(toOrtFeeds(ort, feeds));
          return readOutputs(outputs, Object.keys(outputs));
        },
        release: () => session.release(),
      };
    },
  };
}

const stallMessage = (path: string, at: number) => `${path}: a read at byte ${at} brought nothing for ${STALL_MS / 1000} s; reading on with a new reader`;

// ------------------------------------------------------------------------- LoRA switching (common/loader/switch.ts)

/**
 * How each provider takes weights fed on every run: WASM copies every input into its heap on
 * each run (so LoRAs ride on small branch factors there); WebGPU reads a device tensor made
 * once (a merged weight uploaded on a switch, never per step).
 */
function loraWeightFeeding(provider: Provider): WeightFeeding | null {
  if (provider === 'webgpu') return 'device';
  if (provider === 'wasm') return 'copied';
  return null;
}

// ------------------------------------------------------------------------- WebGPU: tensors that stay on the GPU

/** Output types onnxruntime-web can hand out as GPU buffers. */
const GPU_TYPES = new Set(['float32', 'float16', 'int32', 'int64', 'uint32', 'uint8', 'bool']);

/**
 * The one WebGPU device of this page (onnxruntime-web runs every WebGPU session on the same
 * GPUDevice). Sessions put their outputs in GPU buffers (`preferredOutputLocation`): `run` copies
 * each back, `runDevice` keeps the ones asked for, so tensors pass from session to session
 * without a round trip; every copy back is counted in `readbacks`.
 */
class WebGpuDevice implements SessionDevice {
  readbacks = 0;
  liveTensors = 0;
  readonly #held = new WeakMap<DeviceTensor, Ort.Tensor>();

  constructor(readonly ort: OrtModule) {}

  async session(graph: Uint8Array, options: Ort.InferenceSession.SessionOptions): Promise<EngineSession & DeviceSessionLike> {
    const { ort } = this;
    let session = await ort.InferenceSession.create(graph, { ...options, preferredOutputLocation: 'gpu-buffer' });
    const cpuOnly = session.outputMetadata.filter((m) => m.isTensor && !GPU_TYPES.has(m.type)).map((m) => m.name);
    if (cpuOnly.length) {
      // Rare output types (double, int8, …) have no GPU buffer in onnxruntime-web: those come out on the CPU.
      await session.release();
      const locations = Object.fromEntries(session.outputNames.map((n) => [n, cpuOnly.includes(n) ? 'cpu' : 'gpu-buffer'] as const));
      session = await ort.InferenceSession.create(graph, { ...options, preferredOutputLocation: locations });
    }
    const device = this;
    const s = session;
    return {
      ...sessionMetadata(s),
      device,
      async run(feeds: Feeds): Promise<Feeds> {
        const outputs = await s.run(device.#toOrt(feeds));
        return device.#read(outputs, Object.keys(outputs));
      },
      async runDevice(feeds: DeviceFeeds, keep: readonly string[], read: readonly string[] = []): Promise<DeviceFeeds> {
        const outputs = await s.run(device.#toOrt(feeds), [...keep, ...read]);
        const result: DeviceFeeds = {};
        try {
          for (const name of keep) {
            const t = outputs[name];
            if (t.location !== 'gpu-buffer') {
              // An empty tensor, or a type without GPU buffers: nothing to hold on the device.
              result[name] = { type: t.type, dims: t.dims, data: (await t.getData(true)) as TensorLike['data'] };
              continue;
            }
            result[name] = device.#hold(t);
          }
          Object.assign(result, await device.#read(outputs, read));
        } catch (e) {
          for (const t of Object.values(result)) if (isDeviceTensor(t)) t.dispose();
          throw e;
        }
        return result;
      },
      release: () => s.release(),
    };
  }

  /** A session for one of the loop's small graphs, on this device. */
  createSession(graph: Uint8Array): Promise<DeviceSessionLike> {
    return this.session(graph, { executionProviders: ['webgpu'], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  }

  #hold(t: Ort.Tensor): DeviceTensor {
    this.liveTensors++;
    let disposed = false;
    const held: DeviceTensor = {
      location: 'device',
      type: t.type,
      dims: t.dims,
      dispose: () => {
        if (disposed) return;
        disposed = true;
        this.liveTensors--;
        t.dispose();
      },
    };
    this.#held.set(held, t);
    return held;
  }

  #toOrt(feeds: DeviceFeeds): Record<string, Ort.Tensor> {
    const inputs: Record<string, Ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      if (isDeviceTensor(t)) {
        const held = this.#held.get(t);
        if (!held) throw new Error(`input "${name}": a device tensor that is not this WebGPU device's`);
        inputs[name] = held;
      } else {
        inputs[name] = new this.ort.Tensor(t.type as Ort.Tensor.Type, t.data as Ort.Tensor.DataType, t.dims);
      }
    }
    return inputs;
  }

  /** Copies these outputs back (one readback each from the GPU) and releases the rest. */
  async #read(outputs: Ort.InferenceSession.OnnxValueMapType, names: readonly string[]): Promise<Feeds> {
    const result: Feeds = {};
    try {
      // All copies in flight at once: one wait for the GPU, not one per output.
      const data = await Promise.all(
        names.map((name) => {
          const t = outputs[name];
          if (t.location === 'gpu-buffer') this.readbacks++;
          return t.getData(true);
        }),
      );
      names.forEach((name, i) => (result[name] = { type: outputs[name].type, dims: outputs[name].dims, data: data[i] as TensorLike['data'] }));
    } finally {
      for (const name of names) outputs[name].dispose();
    }
    return result;
  }
}

function toOrtFeeds(ort: OrtModule, feeds: Feeds): Record<string, Ort.Tensor> {
  const inputs: Record<string, Ort.Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type as Ort.Tensor.Type, t.data as Ort.Tensor.DataType, t.dims);
  return inputs;
}

async function readOutputs(outputs: Ort.InferenceSession.OnnxValueMapType, names: readonly string[]): Promise<Feeds> {
  const result: Feeds = {};
  for (const name of names) {
    const t = outputs[name];
    result[name] = { type: t.type, dims: t.dims, data: (await t.getData()) as TensorLike['data'] };
    t.dispose();
  }
  return result;
}

/** Input and output names, element types and declared dims, as the loop needs them (docs/generation.md). */
export function sessionMetadata(session: {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata?: readonly { name: string; isTensor: boolean; type?: string; shape?: readonly (number | string)[] }[];
}): Pick<EngineSession, 'inputNames' | 'outputNames' | 'inputTypes' | 'inputDims'> {
  const inputTypes: Record<string, string> = {};
  const inputDims: Record<string, readonly (number | string)[]> = {};
  for (const m of session.inputMetadata ?? []) {
    if (!m.isTensor) continue;
    if (m.type) inputTypes[m.name] = m.type;
    if (m.shape) inputDims[m.name] = m.shape;
  }
  return { inputNames: [...session.inputNames], outputNames: [...session.outputNames], inputTypes, inputDims };
}
