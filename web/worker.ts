/**
 * The loader in a Web Worker (the other half of worker-client.ts): IndexedDB, Web Locks, hashing,
 * onnxruntime-web and the generation loop all run here, so the page's main thread only posts
 * messages and receives results. One BrowserLoader per worker, made on the `init` message.
 */
import { FuseloadError, isFuseloadError } from '../common/errors.ts';
import type { Role } from '../common/manifest.ts';
import type { Engine, EngineSession, Pipeline, ProgressEvent } from '../common/pipeline.ts';
import { type BrowserLoader, type BrowserLoaderOptions, createBrowserLoader } from './browser-loader.ts';
import { createOrtEngine } from './ort-engine.ts';
import { type Calls, type FromWorker, type LoadedPipeline, type Op, type SessionShape, type ToWorker, transferables, type WireError } from './worker-protocol.ts';

/** The slice of DedicatedWorkerGlobalScope used here (the DOM lib types `self` as a Window). */
interface WorkerScope {
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
  addEventListener(type: 'message', listener: (event: MessageEvent<ToWorker>) => void): void;
}

const scope = self as unknown as WorkerScope;
let loader: BrowserLoader | null = null;
const pipelines = new Map<number, Pipeline>();
const controllers = new Map<number, AbortController>();
let nextHandle = 1;

/** Progress events go out in batches, one message per 16 ms at most: a download reports every chunk. */
const PROGRESS_BATCH_MS = 16;

function post(message: FromWorker, transfer: Transferable[] = []): void {
  try {
    scope.postMessage(message, transfer);
  } catch {
    scope.postMessage(message); // a buffer that cannot move (shared, or still in use) is copied
  }
}

function makeLoader(options: Omit<BrowserLoaderOptions, 'warn' | 'engine'>): BrowserLoader {
  const warn = (message: string) => post({ type: 'warn', message });
  return createBrowserLoader({ ...options, engine: yielding(createOrtEngine({ wasmPaths: options.wasmPaths, warn })), warn });
}

function current(): BrowserLoader {
  loader ??= makeLoader({});
  return loader;
}

/**
 * The engine's sessions, each run first letting the worker take its messages: onnxruntime-web's
 * runs resolve without a macrotask, so a generation loop would otherwise never see an `abort`
 * (the page's AbortSignal) until it ended.
 */
function yielding(engine: Engine): Engine {
  const channel = new MessageChannel();
  const waiting: (() => void)[] = [];
  channel.port1.onmessage = () => waiting.shift()?.();
  const turn = () =>
    new Promise<void>((resolve) => {
      waiting.push(resolve);
      channel.port2.postMessage(null);
    });
  return {
    ...engine,
    providers: (device) => engine.providers(device),
    ...(engine.weightFeeding ? { weightFeeding: (provider) => engine.weightFeeding!(provider) } : {}),
    async create(...args) {
      const session = await engine.create(...args);
      const { runDevice } = session;
      return {
        ...session,
        run: async (feeds) => (await turn(), session.run(feeds)),
        release: () => session.release(),
        ...(runDevice ? { runDevice: async (...a: Parameters<typeof runDevice>) => (await turn(), runDevice.apply(session, a)) } : {}),
      };
    },
  };
}

function pipeline(handle: number): Pipeline {
  const p = pipelines.get(handle);
  if (!p) throw new FuseloadError('bad-input', `pipeline handle ${handle}: disposed or never loaded in this worker`);
  return p;
}

function shape(session: EngineSession): SessionShape {
  return {
    inputNames: [...session.inputNames],
    outputNames: [...session.outputNames],
    ...(session.inputTypes ? { inputTypes: { ...session.inputTypes } } : {}),
    ...(session.inputDims ? { inputDims: Object.fromEntries(Object.entries(session.inputDims).map(([k, v]) => [k, [...v]])) } : {}),
  };
}

/** Batches `progress` events of call `id`; `flush` sends what is left. */
function progressSender(id: number) {
  let queue: ProgressEvent[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (queue.length) post({ type: 'progress', id, events: queue });
    queue = [];
  };
  return {
    push(event: ProgressEvent) {
      queue.push(event);
      timer ??= setTimeout(flush, PROGRESS_BATCH_MS);
    },
    flush,
  };
}

type Handler<K extends Op> = (args: Calls[K]['args'], id: number, signal: AbortSignal) => Promise<{ value: Calls[K]['result']; transfer?: Transferable[] }>;

const handlers: { [K in Op]: Handler<K> } = {
  async load({ options, progress }, id, signal) {
    const sender = progressSender(id);
    try {
      const p = await current().loadPipeline({ ...options, signal, ...(progress ? { onProgress: (e) => sender.push(e) } : {}) });
      const handle = nextHandle++;
      pipelines.set(handle, p);
      const sessions: LoadedPipeline['sessions'] = {};
      for (const [role, session] of Object.entries(p.sessions) as [Role, EngineSession][]) sessions[role] = shape(session);
      return { value: { handle, info: p.info, sessions } };
    } finally {
      sender.flush();
    }
  },
  async run({ handle, feeds }) {
    const out = await pipeline(handle).run(feeds);
    return { value: out, transfer: transferables(Object.values(out)) };
  },
  async sessionRun({ handle, role, feeds }) {
    const session = pipeline(handle).sessions[role];
    if (!session) throw new FuseloadError('bad-input', `pipeline handle ${handle}: no ${role} session`);
    const out = await session.run(feeds);
    return { value: out, transfer: transferables(Object.values(out)) };
  },
  async generate({ handle, options, steps }, id, signal) {
    const result = await pipeline(handle).generate({
      ...options,
      signal,
      // Latents are the loop's own (read-only) array: copied into the message, never moved.
      ...(steps ? { onStep: (event) => post({ type: 'step', id, event }) } : {}),
    });
    return { value: result, transfer: transferables([result.image]) };
  },
  async setLoras({ handle, loras }) {
    const p = pipeline(handle);
    await p.setLoras(loras);
    return { value: p.info };
  },
  async verified({ handle }) {
    const p = pipeline(handle);
    await p.verified();
    return { value: p.info };
  },
  async dispose({ handle }) {
    const p = pipelines.get(handle);
    pipelines.delete(handle);
    await p?.dispose();
    return { value: undefined };
  },
  async cacheInfo() {
    return { value: await current().store.info() };
  },
  async clearCache() {
    await current().clearMemory();
    await current().store.clear();
    return { value: undefined };
  },
  async clearMemory() {
    await current().clearMemory();
    return { value: undefined };
  },
  async flush() {
    await current().flush();
    return { value: undefined };
  },
};

function wireError(e: unknown): WireError {
  if (isFuseloadError(e)) return { name: e.name, code: e.code, message: e.message };
  if (e instanceof Error) return { name: e.name, message: e.message };
  return { name: 'Error', message: String(e) };
}

scope.addEventListener('message', (event) => {
  const message = event.data;
  if (message.type === 'init') {
    if (loader) return post({ type: 'warn', message: 'createWorkerLoader: init after the first call is ignored' });
    loader = makeLoader(message.options);
    return;
  }
  if (message.type === 'abort') {
    controllers.get(message.id)?.abort(new FuseloadError('aborted', 'aborted by the page'));
    return;
  }
  const { id, op, args } = message;
  const controller = new AbortController();
  controllers.set(id, controller);
  const handler = handlers[op] as Handler<typeof op>;
  handler(args as never, id, controller.signal)
    .then(
      ({ value, transfer }) => post({ type: 'result', id, value }, transfer),
      (e: unknown) => post({ type: 'error', id, error: wireError(e) }),
    )
    .finally(() => controllers.delete(id));
});
