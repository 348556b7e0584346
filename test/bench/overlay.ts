/**
 * Load-time overlay bench (Node runtime: disk store, onnxruntime-node on CPU, a local HTTP origin;
 * then headless Chromium, onnxruntime-web on WASM and, with --webgpu-mib, SwiftShader WebGPU):
 *
 *   npx tsx test/bench/overlay.ts [--mib 256] [--dtype float16|float32] [--runs 5] [--gbit 1]
 *                                 [--browser true] [--webgpu-mib 0] [--steps N] [--only wasm|webgpu] [--keep]
 *
 * Two artifacts: the sample model with its LoRAs, and a synthetic base of ≥ --mib MiB (a chain
 * of [H, H] MatMuls, weights stored as --dtype: fp16 is Cast to fp32 before its MatMul) with two
 * rank-16 kohya LoRAs on every layer. For each:
 * - cold: a fresh runtime and an empty store, the base until usable (no store writes counted);
 * - load switch: the same runtime, the base in memory, `loadPipeline` with a new LoRA set or new
 *   scales until usable (median of --runs; the first switch to the second LoRA includes
 *   downloading it): load_switch_ratio = that / cold; bytes_ratio = most bytes one switch
 *   fetched / the artifact's size (counted at the origin). copy_switch_ratio: the same with
 *   switching off (LoRAs merged into shard copies for a new session, the path before switching).
 * Then, on the large base (docs/architecture.md, "Switching LoRAs without a new session"):
 * - switch_ratio = `p.setLoras(…)` (new set or scales, on the same sessions) / cold (target ≤ 0.1);
 * - step_ratio = one run with a rank-16 LoRA on every layer active / one run of the plain base
 *   session (no switching inputs at all): the mean of two identical plain sessions, one opened
 *   before the switchable ones and one after (twin_step_ratio: the second / the first, the floor
 *   of what the figure resolves), by CPU time per run (the median over interleaved rounds of the
 *   ratio within a round; on a shared CPU wall time also counts a neighbour's turns:
 *   step_wall_ratio reports it) of
 *   the thread that runs it: Node's main thread (one intra-op thread), the renderer's main
 *   thread on WASM, every Chromium thread on WebGPU (target ≤ 1.05); two_step_ratio: both LoRAs at once (rank 32 stacked); idle_step_ratio: the
 *   switchable session with no overlay / the plain one;
 * - mem_ratio = (peak RSS during --runs switches − RSS with the base loaded) / bytes of the
 *   targeted weights (target ≤ 1: never more than one copy of them). The base is measured after
 *   one switch there and back, so the merge and upload sessions (and on WebGPU their shaders,
 *   and the weight buffer onnxruntime-web pools once freed) are made; first_mem_ratio is the
 *   same against the base before that switch. In Node the peak is the kernel's (VmHWM, reset
 *   through /proc/self/clear_refs), in Chromium the summed RSS of its processes every 10 ms;
 * the same in Chromium as wasm_… (and webgpu_… with --webgpu-mib > 0, a base of that size, since
 * SwiftShader runs a GPU in software), plus wasm_weights_step_ratio: WASM with every weight fed
 * whole (copied into the heap on every run), the design it does not use.
 * Also both loads again over a link of --gbit Gbit/s shared by all requests (the origin here is
 * localhost, faster than any network a browser or server downloads a model over).
 * Last line: `BENCH overlay switch_ratio=… step_ratio=… …` (the large base's figures).
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { createLoader } from '../../common/loader/index.ts';
import type { LoraSwitchMode } from '../../common/loader/switch.ts';
import { f32ToBytes, f32ToF16 } from '../../common/lora/dtype.ts';
import type { LoraOverlay, ProgressEvent } from '../../common/pipeline.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { mulberry32 } from '../../common/sample-input.ts';
import { build } from '../../tools/build/build.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { DTYPE_CODES, encodeModel, setExternal } from '../../tools/onnx/model.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import type { SwitchOpen, SwitchRun, SwitchState } from '../browser/harness/lora-switch.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';
import { overlayArtifacts } from '../support/overlay-artifacts.ts';
import { writeTag } from '../support/tag.ts';
import { median } from '../support/bench.ts';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    dtype: { type: 'string', default: 'float16' },
    runs: { type: 'string', default: '5' },
    /** Interleaved runs per session for the per-run times (default max(--runs, 15)). */
    steps: { type: 'string' },
    /** Also measure over a link of this many Gbit/s (0: skip). */
    gbit: { type: 'string', default: '1' },
    /** Also measure switching in Chromium on WASM. */
    browser: { type: 'string', default: 'true' },
    /** Also on SwiftShader WebGPU, with a base of this many MiB (0: skip). */
    'webgpu-mib': { type: 'string', default: '0' },
    /** Node's `loraSwitch` for the setLoras figures (auto; `weights` measures merged weights fed whole on the CPU). */
    'node-mode': { type: 'string', default: 'auto' },
    /** Only Chromium's part on this provider (wasm: the --mib base; webgpu: the --webgpu-mib one), for diagnostics. */
    only: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const targetMib = Number(values.mib);
const baseDtype = values.dtype as 'float16' | 'float32';
const runs = Number(values.runs);
const HIDDEN = 4096;
const RANK = 16;

const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-overlay-'));
const quiet = { warn: () => {} };

interface Subject {
  name: string;
  dir: string;
  model: string;
  fingerprint: Digest;
  bytes: number;
  /** Two LoRA sets to switch between; scales are varied per run so every switch builds anew. */
  setA: (scale: number) => LoraOverlay[];
  setB: (scale: number) => LoraOverlay[];
  layers: number;
  /** Bytes of the weights the LoRAs land on. */
  targetedBytes: number;
}

/** ≥ mib of [HIDDEN, HIDDEN] weights, MatMul'd in a chain (Cast to fp32 when stored fp16), and two LoRAs. */
async function largeSubject(mib = targetMib, model = 'large', dtype = baseDtype): Promise<Subject> {
  const size = dtype === 'float16' ? 2 : 4;
  const tensorBytes = HIDDEN * HIDDEN * size;
  const layers = Math.max(1, Math.ceil((mib * 2 ** 20) / tensorBytes));
  const src = join(work, `${model}-src`);
  await mkdir(src, { recursive: true });
  const g = new GraphBuilder();
  let x = g.input('x', { dtype: 'float32', dims: [1, HIDDEN] });
  const data = await open(join(src, 'base.weights'), 'w');
  const rand = mulberry32(7);
  const row = new Float32Array(HIDDEN * HIDDEN);
  for (let i = 0; i < layers; i++) {
    for (let j = 0; j < row.length; j++) row[j] = (rand() - 0.5) / 32;
    await data.write(f32ToBytes(row, dtype));
    const name = `onnx::MatMul_${1000 + i}`;
    g.initializers.push({ name, dims: [HIDDEN, HIDDEN], dataType: DTYPE_CODES[dtype] });
    setExternal(g.initializers[i], { location: 'base.weights', offset: i * tensorBytes, length: tensorBytes });
    const w = dtype === 'float32' ? name : g.op('Cast', [name], { to: DTYPE_CODES.float32 }, `/layers.${i}/mlp/proj/Cast`);
    x = g.op('MatMul', [x, w], {}, `/layers.${i}/mlp/proj/MatMul`);
  }
  await data.close();
  g.rename(x, 'y');
  g.output('y', { dtype: 'float32', dims: [1, HIDDEN] });
  await writeFile(join(src, 'base.onnx'), encodeModel(g.model()));
  const out = join(work, `${model}-artifact`);
  const report = await build({ base: join(src, 'base.onnx'), name: model, out, store: null });
  await writeTag(out, model, report.fingerprint);
  const loras: Digest[] = [];
  for (const seed of [1, 2]) {
    const t: Record<string, SafetensorsInput> = {};
    const r = mulberry32(seed);
    const small = new Float32Array(RANK * HIDDEN);
    for (let i = 0; i < layers; i++) {
      const key = `lora_unet_layers_${i}_mlp_proj`;
      for (let j = 0; j < small.length; j++) small[j] = (r() - 0.5) / 16;
      t[`${key}.lora_down.weight`] = { dtype: 'F16', shape: [RANK, HIDDEN], data: f32ToF16(small) };
      for (let j = 0; j < small.length; j++) small[j] = (r() - 0.5) / 16;
      t[`${key}.lora_up.weight`] = { dtype: 'F16', shape: [HIDDEN, RANK], data: f32ToF16(small) };
      t[`${key}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
    }
    const bytes = encodeSafetensors(t);
    const digest = await sha256(bytes);
    await writeFile(join(out, 'blobs', 'sha256', digestHex(digest)), bytes);
    loras.push(digest);
  }
  await rm(src, { recursive: true, force: true });
  return {
    name: `${model} (${layers} × ${dtype} [${HIDDEN}, ${HIDDEN}], rank-${RANK} LoRA on every layer)`,
    dir: out,
    model,
    fingerprint: report.fingerprint,
    bytes: report.graph.size + report.bytes,
    setA: (s) => [{ digest: loras[0], scale: s }],
    setB: (s) => [{ digest: loras[1], scale: s }, { digest: loras[0], scale: -s / 2 }],
    layers,
    targetedBytes: layers * tensorBytes,
  };
}

async function sampleSubject(): Promise<Subject> {
  const fx = await overlayArtifacts([]);
  return {
    name: 'sample (kohya warm / diffusers detail + PEFT cool)',
    dir: fx.dir,
    model: 'sample',
    fingerprint: fx.base.fingerprint,
    bytes: fx.base.manifest.graph.size + fx.base.manifest.shards.reduce((n, s) => n + s.size, 0),
    setA: (s) => [{ digest: fx.loras.warm.digest, scale: s }],
    setB: (s) => [{ digest: fx.loras.detail.digest, scale: s }, { digest: fx.loras.cool.digest, scale: s, alpha: fx.coolAlpha }],
    layers: fx.base.manifest.tensors.filter((t) => t.module).length,
    targetedBytes: fx.base.manifest.tensors.filter((t) => t.module && t.layout !== 'none').reduce((n, t) => n + t.length, 0),
  };
}

/** fetch over one shared link of `bytesPerSecond`: each body chunk waits for its slot on it. */
function throttledFetch(bytesPerSecond: number): typeof fetch {
  let linkFree = 0;
  return async (input, init) => {
    const response = await fetch(input, init);
    if (!response.body) return response;
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) return controller.close();
        linkFree = Math.max(performance.now(), linkFree) + (value.byteLength / bytesPerSecond) * 1000;
        const wait = linkFree - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const value = await fn();
  return [performance.now() - t, value];
}

type Runtime = Pick<ReturnType<typeof createNodeRuntime>, 'loadPipeline' | 'flush'>;

/** Cold load time and switch times, with `fetch` for every request (the link). */
async function measure(subject: Subject, origin: Origin, tag: string, fetchFn: typeof fetch | undefined, withCopy: boolean) {
  const opts = (loras?: LoraOverlay[]) => ({ origin: origin.url, model: subject.model, fingerprint: subject.fingerprint, device: 'cpu' as const, loras });
  // Cold: empty store, fresh runtime (median of runs).
  const cold: number[] = [];
  for (let i = 0; i < Math.min(runs, 3); i++) {
    const root = join(work, `cold-${subject.model}-${tag}-${i}`);
    const rt = createNodeRuntime({ storeRoot: root, fetch: fetchFn, ...quiet });
    const [ms, p] = await time(() => rt.loadPipeline(opts()));
    cold.push(ms);
    await p.dispose();
    await rt.flush();
    await rm(root, { recursive: true, force: true });
  }

  const switches = async (rt: Runtime) => {
    let current = await rt.loadPipeline(opts());
    const first = await time(() => rt.loadPipeline(opts(subject.setA(1))));
    await current.dispose();
    current = first[1];
    await rt.flush();
    const times: number[] = [];
    /** ms until the engine session began (fetch + merge), the rest is session creation. */
    const toSession: number[] = [];
    let maxBytes = 0;
    for (let i = 0; i < runs; i++) {
      const set = i % 2 === 0 ? subject.setB(0.5 + i / 10) : subject.setA(0.5 + i / 10);
      origin.reset();
      const started = performance.now();
      let sessionAt = 0;
      const onProgress = (e: ProgressEvent) => void (e.phase === 'session' && e.loaded === 0 && !sessionAt && (sessionAt = performance.now() - started));
      const [ms, p] = await time(() => rt.loadPipeline({ ...opts(set), onProgress }));
      toSession.push(sessionAt);
      if (!p.info.overlays.length || p.info.overlays.every((o) => o.scale !== set[0].scale && o.scale !== set.at(-1)!.scale)) throw new Error('a switch did not apply its overlays');
      maxBytes = Math.max(maxBytes, origin.bytesServed());
      times.push(ms);
      await current.dispose();
      current = p;
      await rt.flush();
    }
    await current.dispose();
    return { first: first[0], median: median(times), toSession: median(toSession), maxBytes };
  };
  const node = await switches(createNodeRuntime({ storeRoot: join(work, `switch-${subject.model}-${tag}`), fetch: fetchFn, ...quiet }));
  let copy: typeof node | undefined;
  if (withCopy) {
    // Switching off: every overlay set merged into shard copies (onnxruntime for large weights) for a new session.
    const copyStore = new DiskStore(join(work, `switch-copy-${subject.model}-${tag}`), {});
    copy = await switches(createLoader({ engine: new OrtNodeEngine({ fileOf: (b) => copyStore.fileOf(b) }), store: copyStore, loraSwitch: false, ...quiet }));
  }
  return { cold: median(cold), node, copy };
}

// ---------------------------------------------------------------- switching without a new session

const f = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
const STEPS = values.steps ? Number(values.steps) : Math.max(runs, 25);
/** Node runs per timed block (see the per-run rounds below). */
const NODE_BLOCK = 8;

/**
 * Per-run cost of session `k` against the plain base, from rounds that interleave the sessions:
 * the median over rounds of the ratio within a round, so what a round shares (a neighbour's
 * turns, the clock) cancels. The base is the mean of two identical plain sessions (`bases`: the
 * first, opened before the switchable ones, and the last, its twin, opened after them): where a session's weights land in memory moves
 * its per-run time by a few per cent on WASM (one heap for all of them), about the target's
 * margin, and the two bracket that. `cpu`: by CPU time per run (what the run costs; this is the
 * figure held to the target); `wall`: by wall time (reported; on a shared CPU it also holds the
 * time a neighbour had the core).
 */
function stepRatio(steps: Steps, k: number, bases = [0, steps.cpu.length - 1]): { cpu: number; wall: number } {
  const paired = (xs: number[][]) => median(xs[k].map((x, i) => x / (bases.reduce((a, b) => a + xs[b][i], 0) / bases.length)));
  return { cpu: paired(steps.cpu), wall: paired(steps.wall) };
}

interface Steps {
  /** Per session, per round: ms of wall time per run, and ms of CPU time per run. */
  wall: number[][];
  cpu: number[][];
}

/**
 * CPU time (ms) these processes have used (/proc/<pid>/task/<tid>/schedstat, ns): every thread,
 * or with `mainThread` only each one's main thread (where onnxruntime-node with one intra-op
 * thread and onnxruntime-web's WASM run, away from garbage collectors and compilers).
 */
function cpuMs(pids: number[], mainThread = false): number {
  let ns = 0;
  for (const pid of pids) {
    try {
      for (const tid of mainThread ? [String(pid)] : readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // a thread or process went away
    }
  }
  return ns / 1e6;
}

/** `rounds` rounds, each running every session `block` times (in turn, the order reversed every other round), timed by the wall and by `cpu` (ms). */
async function interleave(sessions: number, rounds: number, block: number, runBlock: (k: number) => Promise<void>, cpu: () => number): Promise<Steps> {
  const steps: Steps = { wall: Array.from({ length: sessions }, () => []), cpu: Array.from({ length: sessions }, () => []) };
  for (let i = 0; i < rounds; i++) {
    // Every other round in reverse, so no session always runs right after the same one.
    for (let j = 0; j < sessions; j++) {
      const k = i % 2 === 0 ? j : sessions - 1 - j;
      const [t, c] = [performance.now(), cpu()];
      await runBlock(k);
      steps.wall[k].push((performance.now() - t) / block);
      steps.cpu[k].push((cpu() - c) / block);
    }
  }
  return steps;
}

/** The kernel's peak RSS of these processes (VmHWM, KiB → bytes), and how to reset it. */
function procKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
function resetPeak(pids: number[]): void {
  for (const pid of pids) writeFileSync(`/proc/${pid}/clear_refs`, '5');
}
const sum = (pids: number[], field: 'VmHWM' | 'VmRSS') => pids.reduce((n, pid) => n + procKiB(pid, field), 0);

/**
 * The peak of several processes' summed RSS, sampled every 10 ms (their own peaks fall at
 * different times, so adding VmHWMs would overstate it): for Chromium, whose renderer and GPU
 * process both hold weights, while this process only waits on the page.
 */
function sampleRss(pids: number[]): { stop(): number } {
  let peak = sum(pids, 'VmRSS');
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, sum(pids, 'VmRSS'));
    } catch {
      // a process went away
    }
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, sum(pids, 'VmRSS'));
    },
  };
}

/** A process and its descendants (Chromium: browser, renderers, GPU process). */
function processTree(root: number): number[] {
  const parent = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) for (const [pid, ppid] of parent) if (ppid === out[i]) out.push(pid);
  return out;
}

/** Alternating sets, new scales each time: `i` ↦ the overlays of switch i. */
const switchSet = (s: Subject, i: number) => (i % 2 === 0 ? s.setB(0.5 + i / 10) : s.setA(0.5 + i / 10));

/** Node: `setLoras` on the same sessions, per-run cost with an overlay active, memory during switches. */
async function nodeSwitching(s: Subject, origin: Origin, coldMs: number): Promise<string> {
  const root = join(work, `node-switching-${s.model}`);
  const store = new DiskStore(root, {});
  const opts = (loras?: LoraOverlay[]) => ({ origin: origin.url, model: s.model, fingerprint: s.fingerprint, device: 'cpu' as const, loras });
  // One intra-op thread: no worker spinning while it waits, so a run's CPU time is its work.
  const engine = () => new OrtNodeEngine({ fileOf: (b) => store.fileOf(b), intraOpNumThreads: 1 });
  const plainLoader = createLoader({ engine: engine(), store, loraSwitch: false, ...quiet });
  const loader = createLoader({ engine: engine(), store, loraSwitch: values['node-mode'] as LoraSwitchMode, ...quiet });
  const run = { x: { type: 'float32', dims: [1, HIDDEN], data: new Float32Array(HIDDEN).fill(0.1) } };
  const plain = await plainLoader.loadPipeline(opts());
  await plainLoader.flush();
  // Memory: the base loaded (warm, from the store), then the peak over the switches.
  const base = await loader.loadPipeline(opts());
  await base.run(run);
  const unswitchedRss = procKiB(process.pid, 'VmRSS');
  // One switch there and back first: merge sessions are made once, not per switch.
  await base.setLoras(switchSet(s, runs));
  await base.setLoras([]);
  await base.run(run);
  const baseRss = procKiB(process.pid, 'VmRSS');
  resetPeak([process.pid]);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await base.setLoras(switchSet(s, i));
    times.push(performance.now() - t);
  }
  const peak = procKiB(process.pid, 'VmHWM');
  const switchMs = median(times);
  const counts = base.info.loraSwitch?.model;
  // Per run: interleaved rounds of the plain session, the switchable one with an overlay, and one without.
  // The target's case: one rank-16 LoRA on every layer; beside it two at once (rank 32 stacked).
  await base.setLoras(s.setA(1));
  const idle = await loader.loadPipeline(opts());
  const two = await loader.loadPipeline(opts(s.setB(1)));
  // The plain base's twin, opened last on a loader of its own (one loader keeps one session per build).
  const twinLoader = createLoader({ engine: engine(), store, loraSwitch: false, ...quiet });
  const twin = await twinLoader.loadPipeline(opts());
  const sessions = [plain, base, idle, two, twin];
  // Runs in blocks: the kernel here counts a thread's CPU time in scheduler ticks (4 ms), a fifth of
  // one run, so a run timed alone reads as 4 or 5 ticks (a ratio of 0.8 or 1.25 between equal runs).
  const steps = await interleave(
    sessions.length,
    STEPS,
    NODE_BLOCK,
    async (k) => {
      for (let i = 0; i < NODE_BLOCK; i++) await sessions[k].run(run);
    },
    () => cpuMs([process.pid], true),
  );
  const [plainMs, overlayMs, idleMs, twoMs] = steps.wall.map(median);
  const [active, idleCost, twoCost] = [stepRatio(steps, 1), stepRatio(steps, 2), stepRatio(steps, 3)];
  const twinRatio = stepRatio(steps, sessions.length - 1, [0]);
  const targeted = s.targetedBytes;
  const memRatio = Math.max(0, peak - baseRss) / targeted;
  const firstMemRatio = Math.max(0, peak - unswitchedRss) / targeted;
  console.log(`  Node, setLoras on the same sessions (${JSON.stringify(counts)}): switch ${f(switchMs)} → ratio ${(switchMs / coldMs).toFixed(3)} of the cold load (target ≤ 0.1)`);
  console.log(`    per run (${STEPS} interleaved rounds, median wall time): plain base ${f(plainMs)}, one LoRA active ${f(overlayMs)}, two ${f(twoMs)}, switchable with no overlay ${f(idleMs)}`);
  console.log(`      / plain, CPU time (wall time): one LoRA ${active.cpu.toFixed(3)} (${active.wall.toFixed(3)}) (target ≤ 1.05); two ${twoCost.cpu.toFixed(3)} (${twoCost.wall.toFixed(3)}); no overlay ${idleCost.cpu.toFixed(3)} (${idleCost.wall.toFixed(3)})`);
  console.log(`      the plain base's twin / the plain base (the floor of what this resolves): ${twinRatio.cpu.toFixed(3)} (${twinRatio.wall.toFixed(3)})`);
  console.log(`    memory: base loaded ${mib(baseRss)} RSS, peak during switches ${mib(peak)} → +${mib(Math.max(0, peak - baseRss))} = ${memRatio.toFixed(3)} × the ${mib(targeted)} of targeted weights (target ≤ 1); above the base before its first switch: ${firstMemRatio.toFixed(3)} ×`);
  for (const p of sessions) await p.dispose();
  for (const l of [loader, plainLoader, twinLoader]) await l.clearMemory();
  return `switch_ratio=${(switchMs / coldMs).toFixed(3)} step_ratio=${active.cpu.toFixed(3)} step_wall_ratio=${active.wall.toFixed(3)} two_step_ratio=${twoCost.cpu.toFixed(3)} idle_step_ratio=${idleCost.cpu.toFixed(3)} twin_step_ratio=${twinRatio.cpu.toFixed(3)} mem_ratio=${memRatio.toFixed(3)} first_mem_ratio=${firstMemRatio.toFixed(3)} switch_ms=${switchMs.toFixed(0)} step_ms=${overlayMs.toFixed(1)} plain_step_ms=${plainMs.toFixed(1)}`;
}

/** Chromium on `device`: cold load, setLoras switches, per-run cost and memory, through window.loraSwitch (harness). */
async function browserSwitching(s: Subject, origin: Origin, device: 'wasm' | 'webgpu'): Promise<string> {
  const pagesDir = await buildPages(['harness']);
  const site = await startOrigin({ root: pagesDir });
  const browser = await launchChromium();
  const key = device;
  try {
    const page = await browser.newPage();
    await page.goto(site.url + PAGE_PATHS.harness);
    await page.waitForFunction(() => document.title === 'harness ready');
    const open = (o: Partial<SwitchOpen>) => page.evaluate((x) => window.loraSwitch.open(x), { origin: origin.url, model: s.model, fingerprint: s.fingerprint, device, ...o } as SwitchOpen);
    const run: SwitchRun = { plain: { name: 'x', dims: [1, HIDDEN] } };
    // Chromium's processes are this one's descendants (playwright spawns the browser).
    const pids = processTree(process.pid).filter((pid) => pid !== process.pid && /chrom/i.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8')));
    // Cold: a fresh loader (memory store), bytes from the origin, until usable.
    const cold = await open({});
    await page.evaluate(([i, r]) => window.loraSwitch.run(i, r), [cold.id, run] as const);
    const unswitchedRss = sum(pids, 'VmRSS');
    // One switch there and back first: the merge and upload sessions (and their shaders) are made once, not per switch.
    await page.evaluate(([id, l]) => window.loraSwitch.setLoras(id, l), [cold.id, switchSet(s, runs)] as const);
    await page.evaluate((id) => window.loraSwitch.setLoras(id, []), cold.id);
    await page.evaluate(([i, r]) => window.loraSwitch.run(i, r), [cold.id, run] as const);
    const baseRss = sum(pids, 'VmRSS');
    const sampler = sampleRss(pids);
    const times: number[] = [];
    let last: SwitchState = cold;
    const after: string[] = [];
    for (let i = 0; i < runs; i++) {
      last = await page.evaluate(([id, l]) => window.loraSwitch.setLoras(id, l), [cold.id, switchSet(s, i)] as const);
      times.push(last.ms);
      after.push(mib(sum(pids, 'VmRSS') - baseRss));
    }
    const peak = sampler.stop();
    if (last.sessions !== cold.sessions) throw new Error(`${device}: a switch created a session`);
    const switchMs = median(times);
    // The target's case: one rank-16 LoRA on every layer; beside it two at once (rank 32 stacked).
    await page.evaluate(([id, l]) => window.loraSwitch.setLoras(id, l), [cold.id, s.setA(1)] as const);
    const plain = await open({ mode: false });
    const idle = await open({});
    const two = await open({ loras: s.setB(1) });
    const ids = [plain.id, cold.id, idle.id, two.id];
    let weightsId: number | null = null;
    if (device === 'wasm') {
      // The design WASM does not use: every weight fed whole, copied into its heap on every run.
      const w = await open({ mode: 'weights', loras: switchSet(s, 0) });
      weightsId = w.id;
      ids.push(w.id);
    }
    // The plain base's twin, opened last on a loader of its own (one loader keeps one session per build).
    const twin = await open({ mode: false, loader: 'twin' });
    ids.push(twin.id);
    // CPU time: WASM runs on the renderer's main thread; SwiftShader's WebGPU on GPU-process threads (all of them, then).
    const block = 3;
    const renderers = pids.filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--type=renderer'));
    const cpu = device === 'wasm' ? () => cpuMs(renderers, true) : () => cpuMs(pids);
    const steps = await interleave(ids.length, STEPS, block, async (k) => void (await page.evaluate(([i, r, n]) => window.loraSwitch.run(i, r, n), [ids[k], run, block] as const)), cpu);
    const [plainMs, overlayMs, idleMs, twoMs, weightsMs] = steps.wall.map(median);
    const names = ['plain', 'one LoRA', 'idle', 'two LoRAs', ...(weightsId !== null ? ['weights'] : []), 'twin'];
    if (values.only) for (const [k, name] of names.entries()) console.log(`    ${name} CPU ms per run: ${[...steps.cpu[k]].sort((a, b) => a - b).map((x) => x.toFixed(1)).join(' ')}`);
    const [active, idleCost, twoCost] = [stepRatio(steps, 1), stepRatio(steps, 2), stepRatio(steps, 3)];
    const weights = weightsId !== null ? stepRatio(steps, 4) : null;
    const twinRatio = stepRatio(steps, ids.length - 1, [0]);
    const targeted = s.targetedBytes;
    const memRatio = Math.max(0, peak - baseRss) / targeted;
    const firstMemRatio = Math.max(0, peak - unswitchedRss) / targeted;
    console.log(`  Chromium ${device}: cold load ${f(cold.ms)}; setLoras ${f(switchMs)} (${JSON.stringify(last.info.loraSwitch)}) → ratio ${(switchMs / cold.ms).toFixed(3)} (target ≤ 0.1)`);
    console.log(`    per run (${STEPS} interleaved rounds of ${block}, median wall time): plain base ${f(plainMs)}, one LoRA active ${f(overlayMs)}, two ${f(twoMs)}, switchable with no overlay ${f(idleMs)}`);
    console.log(`      / plain, CPU time (wall time): one LoRA ${active.cpu.toFixed(3)} (${active.wall.toFixed(3)}) (target ≤ 1.05); two ${twoCost.cpu.toFixed(3)} (${twoCost.wall.toFixed(3)}); no overlay ${idleCost.cpu.toFixed(3)} (${idleCost.wall.toFixed(3)})`);
    if (weights) console.log(`    every weight fed whole instead (copied into the WASM heap per run): ${f(weightsMs)} → ${weights.cpu.toFixed(3)} (${weights.wall.toFixed(3)})`);
    console.log(`      the plain base's twin / the plain base (the floor of what this resolves): ${twinRatio.cpu.toFixed(3)} (${twinRatio.wall.toFixed(3)})`);
    console.log(`    memory above the base after each switch: ${after.join(', ')}`);
    console.log(`    memory (all Chromium processes, sampled): base loaded ${mib(baseRss)}, peak during switches ${mib(peak)} → +${mib(Math.max(0, peak - baseRss))} = ${memRatio.toFixed(3)} × the ${mib(targeted)} of targeted weights (target ≤ 1); above the base before its first switch: ${firstMemRatio.toFixed(3)} ×`);
    let out = `${key}_switch_ratio=${(switchMs / cold.ms).toFixed(3)} ${key}_step_ratio=${active.cpu.toFixed(3)} ${key}_step_wall_ratio=${active.wall.toFixed(3)} ${key}_two_step_ratio=${twoCost.cpu.toFixed(3)} ${key}_idle_step_ratio=${idleCost.cpu.toFixed(3)} ${key}_twin_step_ratio=${twinRatio.cpu.toFixed(3)} ${key}_mem_ratio=${memRatio.toFixed(3)} ${key}_first_mem_ratio=${firstMemRatio.toFixed(3)} ${key}_switch_ms=${switchMs.toFixed(0)} ${key}_cold_ms=${cold.ms.toFixed(0)} ${key}_step_ms=${overlayMs.toFixed(1)}`;
    if (weights) out += ` ${key}_weights_step_ratio=${weights.cpu.toFixed(3)}`;
    if (device === 'webgpu') out += ` webgpu_base_mib=${(s.bytes / 2 ** 20).toFixed(0)}`;
    return out;
  } finally {
    await browser.close();
    await site.close();
    await rm(pagesDir, { recursive: true, force: true });
  }
}

try {
  const only = values.only as 'wasm' | 'webgpu' | undefined;
  const subjects = only ? [] : [await sampleSubject()];
  if (targetMib > 0 && !only) subjects.push(await largeSubject());
  if (only) {
    const subject = only === 'webgpu' ? await largeSubject(Number(values['webgpu-mib']) || 64, 'gpu', 'float32') : await largeSubject();
    const o = await startOrigin({ root: subject.dir });
    try {
      console.log(`BENCH overlay ${await browserSwitching(subject, o, only)}`);
    } finally {
      await o.close();
    }
  }
  const gbit = Number(values.gbit);
  let last = '';
  for (const s of subjects) {
    const origin = await startOrigin({ root: s.dir });
    try {
      if (values.keep) console.log(`${s.dir} ${s.fingerprint} ${JSON.stringify(s.setA(1))}`);
      console.log(`${s.name}: artifact ${(s.bytes / 2 ** 20).toFixed(1)} MiB, ${s.layers} LoRA targets; medians of ${runs}`);
      const local = await measure(s, origin, 'local', undefined, true);
      const ratio = local.node.median / local.cold;
      const copyRatio = local.copy!.median / local.cold;
      const bytesRatio = local.node.maxBytes / s.bytes;
      console.log(`  localhost: cold load ${f(local.cold)}; first overlay ${f(local.node.first)}; loadPipeline switch ${f(local.node.median)} → ratio ${ratio.toFixed(3)}`);
      console.log(`  bytes fetched by a switch ≤ ${local.node.maxBytes} B = ${(bytesRatio * 100).toFixed(3)} % of the artifact`);
      console.log(`  the same switch merged into shard copies for a new session (switching off): ${f(local.copy!.median)} → ratio ${copyRatio.toFixed(3)}`);
      console.log(`    of that: LoRA fetch + merge ${f(local.copy!.toSession)}, then engine session creation ${f(local.copy!.median - local.copy!.toSession)}`);
      last = `BENCH overlay load_switch_ratio=${ratio.toFixed(3)} copy_switch_ratio=${copyRatio.toFixed(3)} bytes_ratio=${bytesRatio.toFixed(5)} load_switch_ms=${local.node.median.toFixed(0)} cold_ms=${local.cold.toFixed(0)}`;
      if (gbit > 0) {
        const link = await measure(s, origin, 'link', throttledFetch((gbit * 1e9) / 8), false);
        const r = link.node.median / link.cold;
        console.log(`  over a ${gbit} Gbit/s link: cold load ${f(link.cold)}; switch ${f(link.node.median)} → ratio ${r.toFixed(3)}`);
        last += ` load_switch_ratio_${gbit}gbit=${r.toFixed(3)}`;
      }
      if (s.model === 'large') {
        const sw = await nodeSwitching(s, origin, local.cold);
        last += ` ${sw}`;
        if (values.browser === 'true') last += ` ${await browserSwitching(s, origin, 'wasm')}`;
        const webgpuMib = Number(values['webgpu-mib']);
        if (webgpuMib > 0) {
          // fp32, read straight by each MatMul: what WebGPU feeds as device tensors (an fp16 weight behind its Cast rides a branch there too).
          const small = await largeSubject(webgpuMib, 'gpu', 'float32');
          const o = await startOrigin({ root: small.dir });
          try {
            last += ` ${await browserSwitching(small, o, 'webgpu')}`;
          } finally {
            await o.close();
          }
        }
      }
      last += ` base_mib=${(s.bytes / 2 ** 20).toFixed(0)} dtype=${s.model === 'large' ? baseDtype : 'float32'}`;
    } finally {
      await origin.close();
    }
  }
  console.log(last);
} finally {
  if (values.keep) console.log(`kept ${work}`);
  else await rm(work, { recursive: true, force: true });
}
