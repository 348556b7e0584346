/**
 * `createWorkerLoader()`: the browser loader in a Web Worker (worker.ts), behind the same
 * `loadPipeline` / `Pipeline` surface. Fetching, IndexedDB, hashing, session creation and every
 * UNet step run off the page's main thread, which only posts messages: the page stays
 * responsive (no long task) through a load and a generation.
 *
 *   import { createWorkerLoader } from 'fuseload/web';
 *   const loader = createWorkerLoader();
 *   const p = await loader.loadPipeline({ origin, model: 'sd', tag: 'latest', onProgress });
 *   const { image } = await p.generate({ prompt, steps: 20, onStep: (e) => bar(e.step / e.steps) });
 *   await p.dispose();
 *
 * Proxied: `info`, `run`, `generate` (with `onStep` and `signal`), `setLoras`, `verified` (which
 * brings `info` back as it is then), `dispose`, and `sessions[role].run` with each session's input
 * and output metadata. Not proxied: device tensors (`runDevice`), which live on the worker's GPU
 * device. Feeds are copied to the worker; outputs and images are moved back without a copy.
 */
import { FuseloadError, type FuseloadErrorCode } from '../common/errors.ts';
import type { StepEvent } from '../common/generate/options.ts';
import type { Role } from '../common/manifest.ts';
import type { EngineSession, Feeds, GenerateOptions, GenerateResult, LoadPipelineOptions, LoraOverlay, Pipeline, PipelineInfo, ProgressEvent } from '../common/pipeline.ts';
import type { CacheInfo } from './idb-store.ts';
import type { Calls, FromWorker, LoadedPipeline, Op, SessionShape, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';

export type { WorkerInit } from './worker-protocol.ts';

export interface WorkerLoaderOptions extends WorkerInit {
  /** Warnings from the worker's loader (default console.warn). */
  warn?: (message: string) => void;
  /**
   * The worker to talk to, already running web/worker.ts (default: a module worker built from it
   * with `new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' })`, the pattern
   * Vite and webpack bundle).
   */
  worker?: Worker;
}

export interface WorkerLoader {
  loadPipeline(options: LoadPipelineOptions): Promise<Pipeline>;
  /** What IndexedDB holds (the worker's store). */
  cacheInfo(): Promise<CacheInfo>;
  /** Empties IndexedDB and the worker's memory tier. */
  clearCache(): Promise<void>;
  clearMemory(): Promise<void>;
  /** Resolves once the store writes behind the loads so far have finished. */
  flush(): Promise<void>;
  /** Ends the worker: its sessions go with it, and calls still waiting fail with `aborted`. */
  terminate(): void;
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: unknown): void;
  onProgress?: (event: ProgressEvent) => void;
  onStep?: (event: StepEvent) => void;
}

export function createWorkerLoader(options: WorkerLoaderOptions = {}): WorkerLoader {
  const { worker: given, warn = (m: string) => console.warn(`fuseload: ${m}`), ...init } = options;
  const worker = given ?? new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'fuseload' });
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let ended: FuseloadError | null = null;

  const send = (message: ToWorker) => worker.postMessage(message);
  send({ type: 'init', options: init });

  const failAll = (error: FuseloadError) => {
    ended ??= error;
    for (const p of pending.values()) p.reject(error);
    pending.clear();
  };
  worker.addEventListener('message', (event: MessageEvent<FromWorker>) => {
    const m = event.data;
    if (m.type === 'warn') return warn(m.message);
    const p = pending.get(m.id);
    if (!p) return;
    if (m.type === 'progress') {
      for (const e of m.events) callSafely(p.onProgress, e);
    } else if (m.type === 'step') {
      callSafely(p.onStep, m.event);
    } else {
      pending.delete(m.id);
      if (m.type === 'result') p.resolve(m.value);
      else p.reject(fromWire(m.error));
    }
  });
  worker.addEventListener('error', (event: ErrorEvent) => {
    event.preventDefault();
    failAll(new FuseloadError('engine', `fuseload worker failed: ${event.message || 'it could not start (is web/worker.ts served as a module worker?)'}`));
  });

  function call<K extends Op>(op: K, args: Calls[K]['args'], hooks: Omit<Pending, 'resolve' | 'reject'> & { signal?: AbortSignal } = {}): Promise<Calls[K]['result']> {
    if (ended) return Promise.reject(ended);
    const { signal, ...callbacks } = hooks;
    if (signal?.aborted) return Promise.reject(new FuseloadError('aborted', `${op}: aborted`, { cause: signal.reason }));
    const id = nextId++;
    return new Promise<Calls[K]['result']>((resolve, reject) => {
      const onAbort = () => send({ type: 'abort', id });
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => signal?.removeEventListener('abort', onAbort);
      pending.set(id, {
        ...callbacks,
        resolve: (v) => {
          done();
          resolve(v as Calls[K]['result']);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      send({ type: 'call', id, op, args } as ToWorker);
    });
  }

  function proxy(loaded: LoadedPipeline): Pipeline {
    const { handle } = loaded;
    let info: PipelineInfo = loaded.info;
    let disposed = false;
    const alive = (what: string) => {
      if (disposed) throw new FuseloadError('bad-input', `pipeline ${info.fingerprint}: ${what} after dispose`);
    };
    const sessions: Partial<Record<Role, EngineSession>> = {};
    for (const [role, s] of Object.entries(loaded.sessions) as [Role, SessionShape][]) {
      sessions[role] = {
        ...s,
        run: async (feeds: Feeds) => {
          alive(`sessions.${role}.run`);
          return call('sessionRun', { handle, role, feeds: plainFeeds(feeds) });
        },
        // The pipeline owns its sessions: they go with dispose().
        release: async () => {},
      };
    }
    return {
      get info() {
        return info;
      },
      sessions,
      async run(feeds: Feeds) {
        alive('run');
        return call('run', { handle, feeds: plainFeeds(feeds) });
      },
      async generate(o: GenerateOptions): Promise<GenerateResult> {
        alive('generate');
        const { onStep, signal, ...rest } = o ?? ({} as GenerateOptions);
        return call('generate', { handle, options: rest, steps: !!onStep }, { onStep, signal });
      },
      async setLoras(loras: LoraOverlay[]) {
        alive('setLoras');
        info = await call('setLoras', { handle, loras });
      },
      async verified() {
        alive('verified');
        info = await call('verified', { handle });
      },
      async dispose() {
        if (disposed) return;
        disposed = true;
        await call('dispose', { handle });
      },
    };
  }

  return {
    async loadPipeline(o: LoadPipelineOptions): Promise<Pipeline> {
      const { onProgress, signal, ...rest } = o;
      return proxy(await call('load', { options: rest, progress: !!onProgress }, { onProgress, signal }));
    },
    cacheInfo: () => call('cacheInfo', {}),
    clearCache: () => call('clearCache', {}),
    clearMemory: () => call('clearMemory', {}),
    flush: () => call('flush', {}),
    terminate() {
      worker.terminate();
      failAll(new FuseloadError('aborted', 'fuseload worker terminated'));
    },
  };
}

/** Feeds as structured-cloneable data (an ORT Tensor or any TensorLike carries more than the three fields). */
function plainFeeds(feeds: Feeds): Feeds {
  return Object.fromEntries(Object.entries(feeds).map(([name, t]) => [name, { type: t.type, dims: [...t.dims], data: t.data }]));
}

function fromWire(e: WireError): Error {
  if (e.name === 'FuseloadError' && e.code) return new FuseloadError(e.code as FuseloadErrorCode, e.message);
  const error = new Error(e.message);
  error.name = e.name;
  return error;
}

function callSafely<T>(fn: ((event: T) => void) | undefined, event: T): void {
  try {
    fn?.(event);
  } catch {
    // A throwing progress bar must not break the load.
  }
}
