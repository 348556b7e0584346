/**
 * `window.workerHarness` (test/browser/worker.test.ts): the loader in a Web Worker through
 * `createWorkerLoader`, and the page's main thread watched for long tasks (PerformanceObserver
 * `longtask`) while it loads, runs and generates. `onMainThread` does the same work with the
 * page's own loader, to show the observer does see what a main-thread load costs.
 */
import { sampleFeeds } from '../../../common/sample-input.ts';
import type { Device, GenerateOptions, Pipeline, PipelineInfo } from '../../../common/pipeline.ts';
import { createBrowserLoader, createWorkerLoader } from '../../../web/index.ts';
import type { WorkerInit } from '../../../web/worker-protocol.ts';

export interface WorkerHarnessLoad {
  origin: string;
  model: string;
  tag?: string;
  fingerprint?: string;
  device?: Device;
  /** Run the sample graph on these feeds. */
  run?: { seed: number; width: number; height: number };
  /** Generate on a text-to-image pipeline. */
  generate?: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'>;
  /** Abort a first generate after this many steps (its `signal`), then generate again. */
  abortAfterStep?: number;
  /** Run the load and generation with the page's own loader instead (the longtask observer's control). */
  onMainThread?: boolean;
  /** Options for the loader (the worker's, or the page's with onMainThread). */
  loader?: WorkerInit;
  /** Keep the pipeline loaded (no dispose) until `window.workerHarness.release()`, for a memory reading meanwhile. */
  hold?: boolean;
  /** Load with one worker loader kept across the calls that ask for it (started by the first), as a page keeps its loader. */
  reuse?: boolean;
}

export interface WorkerHarnessResult {
  ok: boolean;
  error?: { name: string; code?: string; message: string };
  info?: Omit<PipelineInfo, 'manifest'>;
  output?: { dims: number[]; data: number[] };
  image?: { width: number; height: number; rgba: number[]; unetCalls: number };
  steps: number[];
  /** With abortAfterStep: how a first generate of ABORTED_STEPS steps ended, and the last step it reported. */
  aborted?: { code?: string; message: string; lastStep: number };
  progressEvents: number;
  /** What each session says it takes, from the proxies. */
  sessionInputs: Record<string, string[]>;
  /** Main-thread long tasks (ms) seen from the call to the end. */
  longTasks: number[];
  /** What the loader warned of. */
  warnings: string[];
  /** ms from the loadPipeline call until it resolved (sessions built, digests perhaps still being checked). */
  resolvedMs?: number;
  /** ms from the loadPipeline call until the pipeline's verified() resolved: usable. */
  loadMs?: number;
  /** With hold: ms from the call until release(). */
  heldMs?: number;
  /** What run() said after dispose(). */
  afterDispose?: { code?: string; message: string };
  ms: number;
}

const ABORTED_STEPS = 50;
let held: (() => void) | null = null;
/** The worker loader `reuse` loads share, and where its warnings go (the latest call's list). */
let kept: ReturnType<typeof createWorkerLoader> | null = null;
let keptWarn: (m: string) => void = () => {};

async function load(options: WorkerHarnessLoad): Promise<WorkerHarnessResult> {
  const longTasks: number[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) longTasks.push(Math.round(entry.duration));
  });
  observer.observe({ type: 'longtask' });
  const started = performance.now();
  byFile.clear();
  const steps: number[] = [];
  let progressEvents = 0;
  const warnings: string[] = [];
  const warn = (m: string) => void warnings.push(m);
  const worker = options.onMainThread ? null : options.reuse ? (kept ??= createWorkerLoader({ ...options.loader, warn: (m) => keptWarn(m) })) : createWorkerLoader({ ...options.loader, warn });
  keptWarn = warn;
  const loader = worker ?? createBrowserLoader({ ...options.loader, warn });
  const result: WorkerHarnessResult = { ok: false, steps, progressEvents: 0, sessionInputs: {}, longTasks, warnings, ms: 0 };
  try {
    const loading = performance.now();
    const p: Pipeline = await loader.loadPipeline({
      origin: options.origin,
      model: options.model,
      tag: options.tag,
      fingerprint: options.fingerprint,
      device: options.device,
      onProgress: (e) => {
        progressEvents++;
        lastProgress = { phase: e.phase, file: e.file.slice(0, 15), loaded: e.loaded, total: e.total, ...(e.component ? { component: e.component } : {}) };
        byFile.set(lastProgress.file, `${e.phase} ${e.loaded}/${e.total}`);
      },
    });
    result.resolvedMs = performance.now() - loading;
    // Every digest verified (runs wait for it themselves); the info is final then.
    await p.verified();
    result.loadMs = performance.now() - loading;
    const { manifest: _manifest, ...info } = p.info;
    result.info = info;
    for (const [role, s] of Object.entries(p.sessions)) result.sessionInputs[role] = [...(s?.inputNames ?? [])];
    if (options.run) {
      const out = await p.run(sampleFeeds(options.run));
      result.output = { dims: [...out.image.dims], data: Array.from(out.image.data as Float32Array) };
    }
    if (options.generate) {
      if (options.abortAfterStep !== undefined) {
        // The abort crosses to the worker while its loop runs on: a long loop, so it lands mid-way.
        const controller = new AbortController();
        let last = 0;
        const e = await p
          .generate({
            ...options.generate,
            steps: ABORTED_STEPS,
            signal: controller.signal,
            onStep: (s) => {
              last = s.step;
              if (s.step === options.abortAfterStep) controller.abort(new Error('test abort'));
            },
          })
          .then((): Error & { code?: string } => new Error('generate was not aborted'), (err: unknown) => err as Error & { code?: string });
        result.aborted = { code: e.code, message: e.message, lastStep: last };
      }
      const r = await p.generate({ ...options.generate, onStep: (e) => void steps.push(e.step) });
      result.image = { width: r.image.width, height: r.image.height, rgba: Array.from(r.image.data), unetCalls: r.unetCalls };
    }
    if (options.hold) {
      await new Promise<void>((resolve) => (held = resolve));
      result.heldMs = Math.round(performance.now() - started);
    }
    await p.dispose();
    result.afterDispose = await p.run({}).then(
      () => ({ message: 'run after dispose did not fail' }),
      (e: Error & { code?: string }) => ({ code: e.code, message: e.message }),
    );
    result.ok = true;
  } catch (e) {
    const err = e as Error & { code?: string };
    result.error = { name: err.name, code: err.code, message: err.message };
  } finally {
    // Entries are delivered after the task that ended them: give the observer a turn before reading it.
    await new Promise((r) => setTimeout(r, 100));
    for (const entry of observer.takeRecords()) longTasks.push(Math.round(entry.duration));
    observer.disconnect();
    await loader.flush();
    if (!options.reuse) worker?.terminate();
  }
  result.progressEvents = progressEvents;
  result.ms = performance.now() - started;
  return result;
}

/** The last progress event of the load running (for a bench that gives up on it). */
let lastProgress: { phase: string; file: string; loaded: number; total: number; component?: string } | null = null;
/** Each file's last progress event, `<phase> <loaded>/<total>` (for a bench that gives up on a load: where each file stood). */
const byFile = new Map<string, string>();

const workerHarness = {
  load,
  lastProgress: () => lastProgress,
  progressByFile: () => Object.fromEntries(byFile),
  /** Ends a `hold`: the held pipeline is disposed and its load() resolves. */
  release() {
    held?.();
    held = null;
  },
  /** Whether a `hold` load is waiting for release(). */
  holding: () => held !== null,
};

declare global {
  interface Window {
    workerHarness: typeof workerHarness;
  }
}
window.workerHarness = workerHarness;
