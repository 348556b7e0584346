/**
 * CUDA check for a GPU host: builds the sample artifact, loads it through the Node runtime
 * with device 'cuda' and with 'cpu', asserts the CUDA provider really ran, and that its
 * images match the CPU's within tolerance. Prints the figures; exits 1 on any failure.
 *
 * onnxruntime-node ships without its CUDA provider libraries (this project installs with
 * ONNXRUNTIME_NODE_INSTALL=skip). On the GPU host, with CUDA 12 and cuDNN 9 installed:
 *
 *   ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --foreground-scripts
 *   npx tsx test/cuda/check.ts
 *
 * (npm 11 skips unapproved dependency install scripts during `npm ci`/`npm install`, but an
 * explicitly named `npm rebuild <pkg>` runs the package's postinstall, which is what
 * downloads libonnxruntime_providers_{shared,cuda}.so next to the binding. `--allow-scripts`
 * is refused in a project; `npm install-scripts approve onnxruntime-node` is the persistent
 * alternative, and edits package.json.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sampleFeeds } from '../../common/sample-input.ts';
import type { Device, Pipeline } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { buildSampleArtifact } from '../support/node-sample.ts';
import { startCountingOrigin } from '../support/node-origin.ts';

/** CUDA convolutions may use TF32 and other algorithms than MLAS; outputs are in [0, 1]. */
const MAX_ABS = 5e-3;
const MEAN_ABS = 5e-4;
const SIZES = [
  { width: 64, height: 64 },
  { width: 256, height: 256 },
  { width: 512, height: 512 },
];

const work = await mkdtemp(join(tmpdir(), 'fuseload-cuda-'));
const artifact = await buildSampleArtifact(work);
const origin = await startCountingOrigin(artifact.dir);
let failed = false;
const fail = (message: string) => {
  failed = true;
  console.error(`FAIL ${message}`);
};

async function load(device: Device): Promise<{ pipeline: Pipeline; ms: number }> {
  const runtime = createNodeRuntime({ storeRoot: join(work, `store-${device}`), warn: (m) => console.error(`warning: ${m}`) });
  const started = performance.now();
  try {
    const pipeline = await runtime.loadPipeline({ origin: origin.url, model: 'sample', tag: 'latest', device });
    return { pipeline, ms: performance.now() - started };
  } finally {
    await runtime.flush(); // store writes run behind the load; let them land before cleanup
  }
}

async function timedRun(p: Pipeline, feeds: ReturnType<typeof sampleFeeds>): Promise<{ out: Float32Array; ms: number }> {
  await p.run(feeds); // warm-up: CUDA picks kernels on the first run of a shape
  const started = performance.now();
  const out = (await p.run(feeds)).image.data as Float32Array;
  return { out, ms: performance.now() - started };
}

try {
  const cpu = await load('cpu');
  let cuda: { pipeline: Pipeline; ms: number } | null = null;
  try {
    cuda = await load('cuda');
  } catch (e) {
    fail(`device 'cuda' did not load: ${(e as Error).message}`);
  }
  if (cuda) {
    if (cuda.pipeline.info.provider !== 'cuda') fail(`provider is ${cuda.pipeline.info.provider}, expected cuda`);
    console.log(`load  cpu ${cpu.ms.toFixed(0)} ms  cuda ${cuda.ms.toFixed(0)} ms  (fingerprint ${artifact.fingerprint})`);
    const auto = await load('auto');
    if (auto.pipeline.info.provider !== 'cuda') fail(`device 'auto' chose ${auto.pipeline.info.provider}: ${JSON.stringify(auto.pipeline.info.fallbacks)}`);
    await auto.pipeline.dispose();
    for (const size of SIZES) {
      const feeds = sampleFeeds({ seed: 42, ...size });
      const a = await timedRun(cpu.pipeline, feeds);
      const b = await timedRun(cuda.pipeline, feeds);
      let max = 0;
      let sum = 0;
      for (let i = 0; i < a.out.length; i++) {
        const d = Math.abs(a.out[i] - b.out[i]);
        if (!(d <= max)) max = d; // NaN propagates into a failure
        sum += d;
      }
      const mean = sum / a.out.length;
      console.log(
        `${size.width}x${size.height}  cpu ${a.ms.toFixed(1)} ms  cuda ${b.ms.toFixed(1)} ms  max|Δ| ${max.toExponential(2)}  mean|Δ| ${mean.toExponential(2)}`,
      );
      if (!(max <= MAX_ABS) || !(mean <= MEAN_ABS)) fail(`${size.width}x${size.height}: cuda differs from cpu (max ${max}, mean ${mean})`);
    }
    await cuda.pipeline.dispose();
  }
  await cpu.pipeline.dispose();
} finally {
  await origin.close();
  await rm(work, { recursive: true, force: true });
}
console.log(failed ? 'CUDA CHECK FAILED' : 'CUDA CHECK OK: provider cuda, outputs match cpu');
process.exit(failed ? 1 : 0);
