/**
 * Generate bench: `npx tsx test/bench/generate.ts [--images 25] [--steps 20] [--threads 1] [--webgpu-images 4] [--webgpu-steps 4] [--pipeline DIR]`
 *
 * Per image, on a pipeline built by `build()` from a diffusers ONNX directory (tools/sample/pipeline
 * when it is there, else the tiny real-exporter fixture test/fixtures/generate/tiny-sd):
 *
 * - node_ratio  = p.generate() in Node (onnxruntime-node, CPU) over a bare loop that makes the same
 *                 session calls with the same feeds (recorded from one generate) and nothing else:
 *                 what tokenizing, scheduling, noise, feeds and the image cost on top (target ≤ 1.05);
 * - wasm_ratio  = the same in headless Chromium on WASM (target ≤ 1.05);
 * - webgpu_resident_ratio = the WebGPU loop with latents, text and noise predictions on the GPU
 *                 (one readback per image) over the same loop reading every step back
 *                 (`deviceResident: false`), on SwiftShader here (reported). A software adapter is
 *                 slow (seconds per UNet call of the sample pipeline), so this one takes fewer
 *                 images and steps (--webgpu-images, --webgpu-steps), both sides alike.
 *
 * Each image is timed right beside its baseline (after untimed rounds); a ratio is the median of
 * those pairs' ratios, so the machine's drift (other work on a shared box) cancels within a pair. Node's
 * sessions run on --threads intra-op threads (1: on a shared two-core box more only adds noise,
 * and both sides of the ratio run the same sessions). Prints a breakdown, then
 * `BENCH generate node_ratio=… wasm_ratio=… webgpu_resident_ratio=…`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { GenerateOptions } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import type { HarnessLoad } from '../browser/harness/harness.ts';
import { launchChromium } from '../support/chromium.ts';
import { median, timeGenerate } from '../support/generate-replay.ts';
import { startOrigin } from '../support/origin.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { tinySdArtifact } from '../support/tiny-sd-artifact.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';

const SAMPLE = join(REPO_ROOT, 'tools/sample/pipeline');
const { values } = parseArgs({
  options: {
    images: { type: 'string', default: '25' },
    steps: { type: 'string', default: '20' },
    threads: { type: 'string', default: '1' },
    'webgpu-images': { type: 'string', default: '4' },
    'webgpu-steps': { type: 'string', default: '4' },
    pipeline: { type: 'string' },
  },
});
const images = Number(values.images);
const source = values.pipeline ?? (existsSync(join(SAMPLE, 'model_index.json')) ? SAMPLE : undefined);
// The sample pipeline draws 64×64; the fixture's UNet takes any multiple of 8.
const options: GenerateOptions = { prompt: 'a photo of a red cat', seed: 7, steps: Number(values.steps), guidanceScale: 3, width: 64, height: 64 };

const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-generate-'));
const ms = (x: number) => `${x.toFixed(1)} ms`;
const pairedRatio = (a: readonly number[], b: readonly number[]) => median(a.map((x, i) => x / b[i]));
try {
  const artifact = await tinySdArtifact({ work, source, model: 'bench-generate' });
  console.log(`pipeline: ${source ?? 'test/fixtures/generate/tiny-sd'}; ${options.steps} steps, ${options.width}×${options.height}, guidance ${options.guidanceScale}; ${images} images each`);
  const origin = await startOrigin({ root: artifact.dir });

  // Node: onnxruntime-node on the CPU.
  const runtime = createNodeRuntime({ storeRoot: join(work, 'store'), warn: () => {}, engine: { intraOpNumThreads: Number(values.threads) } });
  const p = await runtime.loadPipeline({ origin: origin.url, model: artifact.model, tag: 'latest', device: 'cpu' });
  const node = await timeGenerate(p, options, images);
  await p.dispose();
  await runtime.flush();
  const nodeRatio = pairedRatio(node.generateMs, node.bareMs);
  console.log(`node:   generate ${ms(median(node.generateMs))} (${ms(median(node.inCallsMs))} in session calls), bare loop ${ms(median(node.bareMs))} (${node.sessionCalls} session calls)`);

  // Chromium: WASM, then WebGPU resident and read back per step.
  const pagesDir = await buildPages(['harness']);
  const site = await startOrigin({ root: pagesDir });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.goto(`${site.url}/${PAGE_PATHS.harness}`);
    await page.waitForFunction(() => document.title === 'harness ready');
    const evaluate = async (device: 'wasm' | 'webgpu', generateBench: NonNullable<HarnessLoad['generateBench']>) => {
      const load: HarnessLoad = { origin: origin.url, model: artifact.model, tag: 'latest', device, reuse: true, keepEvents: false, generateBench };
      const r = await page.evaluate((l) => window.harness.load(l), load);
      if (!r.ok || !r.generateBench) throw new Error(`${device}: ${r.error?.message}`);
      if (r.info?.components.unet?.provider !== device) throw new Error(`${device}: the UNet ran on ${r.info?.components.unet?.provider}`);
      return r.generateBench;
    };
    const wasm = await evaluate('wasm', { options, images });
    if ('versus' in wasm) throw new Error('wasm: no times');
    const wasmRatio = pairedRatio(wasm.generateMs, wasm.bareMs);
    console.log(`wasm:   generate ${ms(median(wasm.generateMs))} (${ms(median(wasm.inCallsMs))} in session calls), bare loop ${ms(median(wasm.bareMs))} (${wasm.sessionCalls} session calls)`);
    const gpuOptions = { ...options, steps: Number(values['webgpu-steps']) };
    const gpu = await evaluate('webgpu', { options: gpuOptions, versus: { ...gpuOptions, deviceResident: false }, images: Number(values['webgpu-images']), warmup: 1 });
    if (!('versus' in gpu)) throw new Error('webgpu: no comparison');
    const { versus: v } = gpu;
    if (!v.deviceResident || v.versusDeviceResident) throw new Error('webgpu: the loop did not run as asked (resident, then per step)');
    const webgpuRatio = pairedRatio(v.ms, v.versusMs);
    console.log(
      `webgpu: ${gpuOptions.steps} steps: resident ${ms(median(v.ms))} (${v.readbacks} readback per image), ` +
        `reading back every step ${ms(median(v.versusMs))} (${v.versusReadbacks} readbacks)`,
    );
    console.log(`BENCH generate node_ratio=${nodeRatio.toFixed(3)} wasm_ratio=${wasmRatio.toFixed(3)} webgpu_resident_ratio=${webgpuRatio.toFixed(3)}`);
  } finally {
    await browser.close();
    await site.close();
    await origin.close();
    await rm(pagesDir, { recursive: true, force: true });
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
