/**
 * SD-sized pipelines in the browser (`npx tsx test/bench/browser-large.ts [--gib 1.75] [--devices wasm,webgpu]`):
 * a synthetic fp16 text-to-image pipeline of `--gib` GiB in ≤ 64 MiB shards (fp32 weights of the same bytes
 * on a WebGPU adapter without shader-f16, such as SwiftShader: onnxruntime-web's WebGPU Gather fails on f16 there), loaded cold and then
 * warm in headless Chromium through `createWorkerLoader` (web/worker-client.ts), and one step
 * generated, on each device. Every load runs in a fresh browser (its renderer's peak resident
 * memory is then this load's own), and the renderer's and the GPU process's memory are read from
 * /proc (VmHWM: the kernel's peak; VmRSS sampled while the pipeline is held loaded).
 *
 * The pipeline: the tiny real-exporter graphs of test/fixtures/generate/tiny-sd, each given fp16
 * weights of 32 MiB (text encoder 12 %, UNet 83 %, VAE decoder 5 % of the bytes, as SD 1.5's
 * fp16 export), read by the graph through a Gather at an index computed from its input (so no
 * optimizer folds them away) and added to its output times zero (so the picture is the fixture's).
 *
 *   <device>_<cold|warm>_peak_ratio  = the renderer's peak RSS / the artifact's bytes (goal ≤ 1.3)
 *   <device>_<cold|warm>_held_ratio  = the renderer's RSS with the pipeline loaded and our bytes let go / the artifact:
 *                                      what onnxruntime-web itself keeps (its WASM heap or its GPU uploads' staging)
 *
 * Last line: `BENCH browser-large …`.
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { cp, mkdir, mkdtemp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { build } from '../../tools/build/build.ts';
import { DTYPE_CODES, decodeModel, encodeModel, type ModelProto, type NodeProto, setExternal, type TensorProto } from '../../tools/onnx/model.ts';
import type { WorkerHarnessResult } from '../browser/harness/worker-harness.ts';
import { CHROMIUM_ARGS, CHROMIUM_PATH } from '../support/chromium.ts';
import { startOrigin } from '../support/origin.ts';
import { TINY_SD } from '../support/tiny-sd-artifact.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';
import { writeTag } from '../support/tag.ts';

const MiB = 1024 * 1024;
const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const GIB = Number(arg('--gib', '1.75'));
const DEVICES = arg('--devices', 'wasm,webgpu').split(',') as ('wasm' | 'webgpu')[];
/** The loader's memory tier (default: the browser loader's own default). */
const MEMORY_BUDGET = args.includes('--memory-budget') ? Number(arg('--memory-budget', '0')) : undefined;
const WEIGHT_BYTES = 32 * MiB;
/** The longest a load may take here (a cold WebGPU load on SwiftShader takes about 25 s). */
const LOAD_DEADLINE_MS = Number(arg('--deadline-s', '300')) * 1000;
const SHARES: Record<string, number> = { text_encoder: 0.12, unet: 0.83, vae_decoder: 0.05 };
const MODEL_INDEX = {
  _class_name: 'OnnxStableDiffusionPipeline',
  scheduler: ['diffusers', 'EulerDiscreteScheduler'],
  text_encoder: ['onnxruntime', 'OnnxRuntimeModel'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['onnxruntime', 'OnnxRuntimeModel'],
  vae_decoder: ['onnxruntime', 'OnnxRuntimeModel'],
};
const GENERATE = { prompt: 'a photo of a red cat', seed: 7, steps: 1, guidanceScale: 3, scheduler: 'euler' as const, width: 64, height: 64 };

/** Adds `count` fp16 weights to the fixture's graph, read through a Gather at an input-derived index, into its first output × 0. */
async function weighted(role: string, dir: string, bytes: number, dtype: WeightDtype): Promise<number> {
  const model: ModelProto = decodeModel(await readFile(join(TINY_SD, role, 'model.onnx')), role);
  const g = model.graph!;
  const nodes: NodeProto[] = [];
  const input = g.input![0].name!;
  const output = g.output![0].name!;
  const n = (opType: string, inputs: string[], out: string, attribute: NodeProto['attribute'] = []) => void nodes.push({ opType, input: inputs, output: [out], name: `/probe/${out}`, attribute });
  const scalar = (name: string, dataType: number, raw: Uint8Array): TensorProto => ({ name, dims: [], dataType, rawData: raw });
  g.initializer!.push(scalar('probe_zero', DTYPE_CODES.float32, new Uint8Array(new Float32Array([0]).buffer)));
  // idx = int64(sum(float(input)) * 0): zero, but known only when the graph runs.
  n('Cast', [input], 'probe_x', [{ name: 'to', type: 2, i: DTYPE_CODES.float32 }]);
  n('ReduceSum', ['probe_x'], 'probe_sum', [{ name: 'keepdims', type: 2, i: 0 }]);
  n('Mul', ['probe_sum', 'probe_zero'], 'probe_fzero');
  n('Cast', ['probe_fzero'], 'probe_idx', [{ name: 'to', type: 2, i: DTYPE_CODES.int64 }]);
  const data = await open(join(dir, 'model.onnx_data'), 'w');
  let offset = 0;
  let acc = 'probe_fzero';
  for (let i = 0; offset < bytes; i++) {
    const width = dtype === 'float16' ? 2 : 4;
    const size = Math.min(WEIGHT_BYTES, bytes - offset) - ((Math.min(WEIGHT_BYTES, bytes - offset)) % width);
    if (size === 0) break;
    const chunk = new Uint16Array(size / 2);
    randomFillSync(chunk);
    // fp16: finite, |w| < 0.5; fp32: the same bits as pairs, the exponent's top bits cleared (finite, small).
    for (let j = dtype === 'float16' ? 0 : 1; j < chunk.length; j += width / 2) chunk[j] &= 0xa7ff;
    await data.write(new Uint8Array(chunk.buffer), 0, size, offset);
    const name = `probe_w${i}`;
    const t: TensorProto = { name, dims: [size / width], dataType: DTYPE_CODES[dtype] };
    setExternal(t, { location: 'model.onnx_data', offset, length: size });
    g.initializer!.push(t);
    offset += size;
    n('Gather', [name, 'probe_idx'], `probe_g${i}`, [{ name: 'axis', type: 2, i: 0 }]);
    n('Cast', [`probe_g${i}`], `probe_f${i}`, [{ name: 'to', type: 2, i: DTYPE_CODES.float32 }]);
    n('Add', [acc, `probe_f${i}`], `probe_acc${i}`);
    acc = `probe_acc${i}`;
  }
  await data.close();
  n('Mul', [acc, 'probe_zero'], 'probe_out');
  // The first output, plus the probe (zero): rename what makes it, add after.
  for (const node of g.node!) node.output = node.output!.map((o) => (o === output ? `${output}_before_probe` : o));
  n('Add', [`${output}_before_probe`, 'probe_out'], output);
  g.node!.push(...nodes);
  await writeFile(join(dir, 'model.onnx'), encodeModel(model));
  return offset;
}

type WeightDtype = 'float16' | 'float32';

async function largeArtifact(dtype: WeightDtype): Promise<{ dir: string; fingerprint: string; bytes: number; shards: number; maxShard: number }> {
  const home = join(tmpdir(), `fuseload-bench-sd-${GIB}gib${dtype === 'float16' ? '' : `-${dtype}`}`);
  const done = join(home, 'done.json');
  if (!(await stat(done).catch(() => null))) {
    await rm(home, { recursive: true, force: true });
    const base = join(home, 'diffusers');
    for (const folder of ['tokenizer', 'scheduler']) await cp(join(TINY_SD, folder), join(base, folder), { recursive: true });
    await writeFile(join(base, 'model_index.json'), JSON.stringify(MODEL_INDEX, null, 1));
    for (const [role, share] of Object.entries(SHARES)) {
      await mkdir(join(base, role), { recursive: true });
      if (role === 'vae_decoder') await cp(join(TINY_SD, role, 'config.json'), join(base, role, 'config.json'));
      await weighted(role, join(base, role), Math.round(GIB * 1024 ** 3 * share), dtype);
    }
    const out = join(home, 'origin');
    const report = await build({ base, name: 'sd-large', out, store: null });
    await writeTag(out, 'sd-large', report.fingerprint);
    await rm(base, { recursive: true, force: true });
    const manifest = JSON.parse(await readFile(join(out, 'manifests', 'sha256', `${report.fingerprint.slice(7)}.json`), 'utf8'));
    const blobs = [...Object.values(manifest.components as Record<string, { graph: { size: number }; shards: { size: number }[] }>).flatMap((c) => [c.graph, ...c.shards]), ...Object.values(manifest.assets as Record<string, { size: number }>)];
    const shards = Object.values(manifest.components as Record<string, { shards: { size: number }[] }>).flatMap((c) => c.shards);
    await writeFile(
      done,
      JSON.stringify({ fingerprint: report.fingerprint, bytes: blobs.reduce((a, b) => a + b.size, 0), shards: shards.length, maxShard: Math.max(...shards.map((s) => s.size)) }),
    );
  }
  return { dir: join(home, 'origin'), ...JSON.parse(await readFile(done, 'utf8')) };
}

/** The browser's processes (found by their --user-data-dir), by type, with RSS and peak RSS in bytes. */
async function chromiumMemory(profile: string): Promise<{ type: string; pid: number; rss: number; hwm: number }[]> {
  const out: { type: string; pid: number; rss: number; hwm: number }[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes(profile) && !cmdline.includes(`--user-data-dir=${profile}`)) continue;
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
    const type = /--type=([a-z-]+)/.exec(cmdline)?.[1] ?? 'browser';
    out.push({ type, pid: Number(pid), rss: kb('VmRSS'), hwm: kb('VmHWM') });
  }
  return out;
}

/** Whether this Chromium's WebGPU adapter can run f16 shaders. */
async function shaderF16(pageUrl: string): Promise<boolean> {
  const profile = await mkdtemp(join(tmpdir(), 'fuseload-bench-large-probe-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS });
  try {
    const page = await context.newPage();
    await page.goto(pageUrl);
    await page.waitForFunction(() => document.title === 'harness ready');
    return (await page.evaluate(() => window.harness.webgpuAdapter())).shaderF16 === true;
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

/** The process the page runs in: the renderer that grew the most. */
const renderer = (ps: Awaited<ReturnType<typeof chromiumMemory>>) => ps.filter((p) => p.type === 'renderer').sort((a, b) => b.hwm - a.hwm)[0];
const gpu = (ps: Awaited<ReturnType<typeof chromiumMemory>>) => ps.find((p) => p.type === 'gpu-process');
/** The browser process: where Chromium keeps Blob bytes it has not paged to disk (the shards the loader hands on as Blobs). */
const browserProcess = (ps: Awaited<ReturnType<typeof chromiumMemory>>) => ps.find((p) => p.type === 'browser');

interface Measured {
  result: WorkerHarnessResult;
  baseline: number;
  peak: number;
  held: number;
  gpuPeak: number;
  browserPeak: number;
}

async function measure(profile: string, pagesUrl: string, origin: string, device: 'wasm' | 'webgpu'): Promise<Measured> {
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS });
  try {
    const page = await context.newPage();
    await page.goto(pagesUrl);
    await page.waitForFunction(() => document.title === 'harness ready');
    const baseline = renderer(await chromiumMemory(profile))?.rss ?? 0;
    const memoryBudget = MEMORY_BUDGET;
    const running = page.evaluate((o) => window.workerHarness.load(o), {
      origin,
      model: 'sd-large',
      tag: 'latest',
      device,
      generate: GENERATE,
      hold: true,
      ...(memoryBudget !== undefined ? { loader: { memoryBudgetBytes: memoryBudget } } : {}),
    });
    // Held: the pipeline is loaded and has generated; our own copies of its bytes are let go by now.
    let settled = false;
    void running.then(
      () => (settled = true),
      () => (settled = true),
    );
    // A load that never ends fails the bench, saying where it stood, instead of holding it forever.
    const deadline = Date.now() + LOAD_DEADLINE_MS;
    while (!settled && !(await page.evaluate(() => window.workerHarness.holding()))) {
      if (Date.now() > deadline) {
        const last = await page.evaluate(() => window.workerHarness.lastProgress());
        const files = await page.evaluate(() => window.workerHarness.progressByFile());
        throw new Error(`${device}: the load did not finish in ${LOAD_DEADLINE_MS / 1000} s; its last progress event: ${JSON.stringify(last)}; each file's last: ${JSON.stringify(files)}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    if (settled) return { result: await running, baseline, peak: 0, held: 0, gpuPeak: 0, browserPeak: 0 };
    await new Promise((r) => setTimeout(r, 3000));
    const held = renderer(await chromiumMemory(profile))?.rss ?? 0;
    await page.evaluate(() => window.workerHarness.release());
    const result = await running;
    const ps = await chromiumMemory(profile);
    return { result, baseline, peak: renderer(ps)?.hwm ?? 0, held, gpuPeak: gpu(ps)?.hwm ?? 0, browserPeak: browserProcess(ps)?.hwm ?? 0 };
  } finally {
    await context.close();
  }
}

async function main() {
  const pagesDir = await buildPages(['harness']);
  const site = await startOrigin({ root: pagesDir });
  const values: string[] = [];
  const gibOf = (b: number) => `${(b / 1024 ** 3).toFixed(2)} GiB`;
  try {
    for (const device of DEVICES) {
      // SwiftShader's WebGPU adapter has no shader-f16, and onnxruntime-web's WebGPU Gather takes
      // f16 anyway and fails at the first run: there the same bytes are fp32 weights.
      const dtype: WeightDtype = device === 'webgpu' && !(await shaderF16(site.url + PAGE_PATHS.harness)) ? 'float32' : 'float16';
      const t0 = Date.now();
      const art = await largeArtifact(dtype);
      console.log(`${device}: artifact of ${dtype} weights, ${(art.bytes / 1024 ** 3).toFixed(2)} GiB in ${art.shards} shards (largest ${(art.maxShard / MiB).toFixed(1)} MiB), ready in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      values.push(`${device}_gib=${(art.bytes / 1024 ** 3).toFixed(2)}`, `${device}_max_shard_mib=${(art.maxShard / MiB).toFixed(0)}`, `${device}_dtype=${dtype}`);
      const origin = await startOrigin({ root: art.dir });
      const profile = await mkdtemp(join(tmpdir(), 'fuseload-bench-large-'));
      try {
        for (const phase of ['cold', 'warm'] as const) {
          const m = await measure(profile, site.url + PAGE_PATHS.harness, origin.url, device);
          const r = m.result;
          if (!r.ok) throw new Error(`${device} ${phase}: ${r.error?.message}`);
          const sources = new Set(Object.values(r.info!.sources));
          const want = phase === 'cold' ? 'network' : 'store';
          if (sources.size !== 1 || !sources.has(want)) throw new Error(`${device} ${phase}: blobs came from ${[...sources].join(', ')}`);
          const loadMs = (r.heldMs ?? r.ms) - 3000;
          console.log(
            `${device} ${phase}: provider ${r.info!.provider}, loaded and one step generated (${r.image!.width}×${r.image!.height}, ${r.image!.unetCalls} UNet calls) in ${(loadMs / 1000).toFixed(1)} s; ` +
              `renderer peak ${gibOf(m.peak)} (${(m.peak / art.bytes).toFixed(2)}× the artifact), held ${gibOf(m.held)} (${(m.held / art.bytes).toFixed(2)}×), before the load ${gibOf(m.baseline)}; ` +
              `GPU process peak ${gibOf(m.gpuPeak)}, browser process peak ${gibOf(m.browserPeak)}; main-thread long tasks: ${r.longTasks.length ? r.longTasks.join(', ') + ' ms' : 'none'}`,
          );
          for (const w of r.warnings) console.log(`  warning: ${w}`);
          values.push(
            `${device}_${phase}_peak_ratio=${(m.peak / art.bytes).toFixed(2)}`,
            `${device}_${phase}_held_ratio=${(m.held / art.bytes).toFixed(2)}`,
            `${device}_${phase}_s=${(loadMs / 1000).toFixed(1)}`,
            `${device}_${phase}_gpu_gib=${(m.gpuPeak / 1024 ** 3).toFixed(2)}`,
            `${device}_${phase}_browser_gib=${(m.browserPeak / 1024 ** 3).toFixed(2)}`,
            `${device}_${phase}_longtasks=${r.longTasks.length}`,
          );
        }
      } finally {
        await rm(profile, { recursive: true, force: true });
        await origin.close();
      }
    }
  } finally {
    await site.close();
    await rm(pagesDir, { recursive: true, force: true });
  }
  console.log(`BENCH browser-large ${values.join(' ')}`);
}

execFileSync('true'); // fail early where child processes cannot start (the bench reads /proc of the browser's)
await main();
