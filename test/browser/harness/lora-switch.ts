/**
 * `window.loraSwitch`: what the LoRA switching test and bench drive in the page
 * (test/browser/lora-switch.test.ts, test/bench/overlay.ts). Pipelines stay open in the page
 * between calls, by id; every engine `create` that makes a component session (one with
 * external data) is counted, so a test can say a switch made none.
 */
import { createLoader, type Loader } from '../../../common/loader/index.ts';
import type { LoraSwitchMode } from '../../../common/loader/switch.ts';
import type { Device, Engine, GenerateOptions, LoraOverlay, Pipeline, PipelineInfo } from '../../../common/pipeline.ts';
import { sampleFeeds } from '../../../common/sample-input.ts';
import { MemoryStore } from '../../../common/store.ts';
import { createOrtEngine } from '../../../web/index.ts';

export interface SwitchOpen {
  origin: string;
  model: string;
  fingerprint: string;
  device: Device;
  loras?: LoraOverlay[];
  /** The loader's `loraSwitch` (default 'auto'). */
  mode?: LoraSwitchMode | false;
  overlayOrtMinElements?: number;
  /** Open on a loader of this name of its own (a loader keeps one session per build: a twin needs another). */
  loader?: string;
}

/** One run: the sample model's feeds (`sample`) or a plain float input `x` of `dims` filled with 0.1 (`plain`). */
export type SwitchRun = { sample: { seed: number; width: number; height: number } } | { plain: { name: string; dims: number[] } };

export interface SwitchState {
  id: number;
  info: Omit<PipelineInfo, 'manifest'>;
  /** Component sessions the page's engine created so far (for this loader). */
  sessions: number;
  ms: number;
}

interface Open {
  loader: Loader;
  engine: { sessions: number };
  pipeline: Pipeline;
}

let nextId = 1;
const open = new Map<number, Open>();
const loaders = new Map<string, { loader: Loader; engine: { sessions: number } }>();

function counted(engine: Engine): Engine & { sessions: number } {
  const counter = {
    ...engine,
    sessions: 0,
    async create(...args: Parameters<Engine['create']>) {
      const session = await engine.create(...args);
      if (args[1].length) counter.sessions++;
      return session;
    },
  };
  return counter;
}

function loaderFor(o: SwitchOpen) {
  const key = JSON.stringify([o.mode ?? 'auto', o.overlayOrtMinElements ?? null, o.loader ?? null]);
  let got = loaders.get(key);
  if (!got) {
    const engine = counted(createOrtEngine());
    got = { loader: createLoader({ engine, store: new MemoryStore(), warn: (m) => warnings.push(m), loraSwitch: o.mode, overlayOrtMinElements: o.overlayOrtMinElements }), engine };
    loaders.set(key, got);
  }
  return got;
}

const warnings: string[] = [];

function state(id: number, ms: number): SwitchState {
  const o = open.get(id)!;
  const { manifest: _manifest, ...info } = o.pipeline.info;
  return { id, info, sessions: o.engine.sessions, ms };
}

function feedsOf(run: SwitchRun) {
  if ('sample' in run) return sampleFeeds(run.sample);
  const n = run.plain.dims.reduce((a, b) => a * b, 1);
  return { [run.plain.name]: { type: 'float32', dims: run.plain.dims, data: new Float32Array(n).fill(0.1) } };
}

export const loraSwitch = {
  warnings: () => [...warnings],

  /** Loads a pipeline (on the loader of this mode and `loader` name, shared by every open with them). */
  async open(o: SwitchOpen): Promise<SwitchState> {
    const { loader, engine } = loaderFor(o);
    const t = performance.now();
    const pipeline = await loader.loadPipeline({ origin: o.origin, model: o.model, fingerprint: o.fingerprint, device: o.device, loras: o.loras });
    const id = nextId++;
    open.set(id, { loader, engine, pipeline });
    return state(id, performance.now() - t);
  },

  async setLoras(id: number, loras: LoraOverlay[]): Promise<SwitchState> {
    const t = performance.now();
    await open.get(id)!.pipeline.setLoras(loras);
    return state(id, performance.now() - t);
  },

  /** Runs `times` and returns the last output (first output only, as numbers) and each run's ms. */
  async run(id: number, run: SwitchRun, times = 1): Promise<{ output: number[]; ms: number[] }> {
    const p = open.get(id)!.pipeline;
    const ms: number[] = [];
    let output: number[] = [];
    for (let i = 0; i < times; i++) {
      const feeds = feedsOf(run);
      const t = performance.now();
      const out = await p.run(feeds);
      ms.push(performance.now() - t);
      if (i === times - 1) output = Array.from(Object.values(out)[0].data as Float32Array);
    }
    return { output, ms };
  },

  /** Interleaved runs of several pipelines (`times` rounds, one run each per round): fair per-run times on a shared CPU. */
  async runInterleaved(ids: number[], run: SwitchRun, times: number): Promise<number[][]> {
    const ms: number[][] = ids.map(() => []);
    for (let i = 0; i < times; i++) {
      for (const [k, id] of ids.entries()) {
        const feeds = feedsOf(run);
        const t = performance.now();
        await open.get(id)!.pipeline.run(feeds);
        ms[k].push(performance.now() - t);
      }
    }
    return ms;
  },

  async generate(id: number, options: Omit<GenerateOptions, 'latents' | 'onStep' | 'signal'>): Promise<{ rgba: number[]; width: number; height: number }> {
    const r = await open.get(id)!.pipeline.generate(options);
    return { rgba: Array.from(r.image.data), width: r.image.width, height: r.image.height };
  },

  async dispose(id: number): Promise<void> {
    await open.get(id)?.pipeline.dispose();
    open.delete(id);
  },

  /** Forgets every loader (their sessions go with their last pipeline). */
  async reset(): Promise<void> {
    for (const id of [...open.keys()]) await loraSwitch.dispose(id);
    for (const { loader } of loaders.values()) await loader.clearMemory();
    loaders.clear();
    warnings.length = 0;
  },
};

declare global {
  interface Window {
    loraSwitch: typeof loraSwitch;
  }
}
window.loraSwitch = loraSwitch;
