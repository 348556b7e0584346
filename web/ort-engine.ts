/**
 * The browser Engine: onnxruntime-web's WebGPU build, which also carries the WASM (CPU)
 * provider. `auto` tries WebGPU, then WASM; the loader records why WebGPU was passed over.
 * ORT's .wasm/.mjs come from our own origin (`wasmPaths`), never a CDN.
 */
import * as ort from 'onnxruntime-web/webgpu';
import type { Device, Engine, EngineSession, ExternalDataFile, Feeds, Provider, TensorLike } from '../common/pipeline.ts';

export interface OrtEngineOptions {
  /** URL prefix where ORT's runtime files are served (default `<page origin>/ort/`, see web/vite-plugin-ort.ts). */
  wasmPaths?: string;
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

export function createOrtEngine(options: OrtEngineOptions = {}): Engine {
  ort.env.wasm.wasmPaths = options.wasmPaths ?? new URL('/ort/', globalThis.location?.href).href;
  // Threads need SharedArrayBuffer, which only a cross-origin isolated page has.
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';

  return {
    providers(device: Device): Provider[] {
      if (device === 'auto') return ['webgpu', 'wasm'];
      if (device === 'webgpu' || device === 'wasm') return [device];
      return [];
    },
    async create(graph: Uint8Array, externalData: ExternalDataFile[], provider: Provider, device?: Device): Promise<EngineSession> {
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
      const session = await ort.InferenceSession.create(graph, {
        executionProviders: [provider],
        externalData: externalData.map((f) => ({ path: f.path, data: f.data })),
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      });
      return {
        ...sessionMetadata(session),
        async run(feeds: Feeds): Promise<Feeds> {
          const inputs: Record<string, ort.Tensor> = {};
          for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type as ort.Tensor.Type, t.data as ort.Tensor.DataType, t.dims);
          const outputs = await session.run(inputs);
          const result: Feeds = {};
          for (const [name, t] of Object.entries(outputs)) {
            result[name] = { type: t.type, dims: t.dims, data: (await t.getData()) as TensorLike['data'] };
            t.dispose();
          }
          return result;
        },
        release: () => session.release(),
      };
    },
  };
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
