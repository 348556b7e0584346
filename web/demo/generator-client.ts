/**
 * The page's side of the generator worker: promises for its answers, callbacks for progress
 * and steps. `stop()` ends the worker outright — a step in flight cannot be interrupted any
 * other way — and starts a fresh one; what it had downloaded is in IndexedDB already (writes
 * are whole transactions, so nothing half-written stays behind).
 */
import type { ProgressEvent, Provider } from '../../common/pipeline.ts';
import type { CacheInfo, WebGpuAdapterReport } from '../index.ts';
import type { FromWorker, Generated, ToWorker } from './generator-protocol.ts';

type Request = ToWorker extends infer T ? (T extends { id: number } ? Omit<T, 'id'> : never) : never;

export interface GenerateHandlers {
  onProgress?: (event: ProgressEvent) => void;
  onLoaded?: (provider: Provider) => void;
  onStep?: (step: number, steps: number, latents: Float32Array | undefined) => void;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  handlers: GenerateHandlers;
}

/** An error from the worker, with the loader's `code` kept so the page can explain it. */
export class GeneratorError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'GeneratorError';
  }
}

export class GeneratorClient {
  #worker!: Worker;
  #next = 1;
  readonly #pending = new Map<number, Pending>();

  constructor() {
    this.#spawn();
  }

  generate(request: Omit<Extract<ToWorker, { type: 'generate' }>, 'id' | 'type'>, handlers: GenerateHandlers = {}): Promise<Generated> {
    return this.#call({ type: 'generate', ...request }, handlers) as Promise<Generated>;
  }

  cacheInfo(): Promise<CacheInfo> {
    return this.#call({ type: 'cache-info' }) as Promise<CacheInfo>;
  }

  clearCache(): Promise<void> {
    return this.#call({ type: 'clear-cache' }) as Promise<void>;
  }

  webgpuAdapter(): Promise<WebGpuAdapterReport> {
    return this.#call({ type: 'adapter' }) as Promise<WebGpuAdapterReport>;
  }

  /** Ends whatever the worker is doing; every call in flight fails with code `aborted`. */
  stop(): void {
    this.#worker.terminate();
    this.#failAll(new GeneratorError('generate: stopped', 'aborted'));
    this.#spawn();
  }

  #call(request: Request, handlers: GenerateHandlers = {}): Promise<unknown> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, handlers });
      this.#worker.postMessage({ ...request, id } as ToWorker);
    });
  }

  #spawn(): void {
    const worker = new Worker(new URL('./generator-worker.ts', import.meta.url), { type: 'module', name: 'fuseload generator' });
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const m = event.data;
      const pending = this.#pending.get(m.id);
      if (!pending) return;
      switch (m.type) {
        case 'progress':
          return pending.handlers.onProgress?.(m.event);
        case 'loaded':
          return pending.handlers.onLoaded?.(m.provider);
        case 'step':
          return pending.handlers.onStep?.(m.step, m.steps, m.latents);
        case 'done':
          this.#pending.delete(m.id);
          return pending.resolve(m.value);
        case 'error':
          this.#pending.delete(m.id);
          return pending.reject(new GeneratorError(m.error.message, m.error.code));
      }
    };
    // A worker that fails to start (its script did not load) or throws outside a request.
    worker.onerror = (event) => {
      event.preventDefault();
      this.#failAll(new GeneratorError(`the generator worker failed: ${event.message || 'its script did not load'} — reload the page`));
    };
    this.#worker = worker;
  }

  #failAll(error: Error): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) p.reject(error);
  }
}
