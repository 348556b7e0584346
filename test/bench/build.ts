/**
 * Build benchmark: a synthetic fp16 base of at least 1 GiB (external data) and a rank-16 LoRA
 * on every linear layer. Prints the build's wall time over `cp` + `sha256sum` of the same
 * bytes (measured in the same run, page cache equally warm), and the build's peak RSS
 * (the build runs in a child process that reports its own maxRSS).
 *
 *   npx tsx test/bench/build.ts [--gib 1] [--keep]
 *
 * Last line: `BENCH build ratio=<r> rss_mib=<m> …`, for tabulating.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { f32ToF16 } from '../../common/lora/dtype.ts';
import { writeMatMulBase } from '../support/bench-models.ts';

const args = process.argv.slice(2);
const gib = Number(args[args.indexOf('--gib') + 1] ?? 1) || 1;
const keep = args.includes('--keep');
const HIDDEN = 4096;
const RANK = 16;
const TENSOR_BYTES = HIDDEN * HIDDEN * 2;
const LAYERS = Math.ceil((gib * 1024 ** 3) / TENSOR_BYTES);

const dir = await mkdtemp(join(tmpdir(), 'fuseload-bench-'));
const bin = new URL('../../bin/fuseload.js', import.meta.url).pathname;

function seconds(fn: () => void): number {
  const t = performance.now();
  fn();
  return (performance.now() - t) / 1000;
}

try {
  // Base: LAYERS MatMul layers [HIDDEN, HIDDEN] fp16, weights in one external file.
  await writeMatMulBase(dir, LAYERS, HIDDEN);

  // LoRA: rank 16 on every layer, kohya keys, fp16.
  const lora: Record<string, SafetensorsInput> = {};
  const small = new Float32Array(RANK * HIDDEN);
  for (let i = 0; i < LAYERS; i++) {
    for (let j = 0; j < small.length; j++) small[j] = Math.sin(i * 7919 + j) * 0.02;
    const key = `lora_unet_layers_${i}_mlp_proj`;
    lora[`${key}.lora_down.weight`] = { dtype: 'F16', shape: [RANK, HIDDEN], data: f32ToF16(small) };
    lora[`${key}.lora_up.weight`] = { dtype: 'F16', shape: [HIDDEN, RANK], data: f32ToF16(small) };
    lora[`${key}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
  }
  await writeFile(join(dir, 'lora.safetensors'), encodeSafetensors(lora));
  const baseBytes = LAYERS * TENSOR_BYTES;

  // Reference: cp + sha256sum of the same bytes, before and after the build (page cache warm both times).
  const reference = () =>
    seconds(() => {
      execFileSync('cp', [join(dir, 'base.weights'), join(dir, 'copy.weights')]);
      execFileSync('sha256sum', [join(dir, 'base.weights')]);
    });
  reference(); // warm the page cache
  const ref1 = reference();
  await rm(join(dir, 'copy.weights'));

  const rssFile = join(dir, 'rss');
  const preload = `data:text/javascript,import fs from "node:fs"; process.on("exit", () => fs.writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`;
  let result: ReturnType<typeof spawnSync> | undefined;
  const buildSeconds = seconds(() => {
    result = spawnSync(
      process.execPath,
      ['--import', preload, bin, 'build', '--base', join(dir, 'base.onnx'), '--lora', join(dir, 'lora.safetensors'), '--name', 'bench', '--out', join(dir, 'out'), '--json'],
      { env: { ...process.env, PIPELINE_STORE: join(dir, 'store') }, encoding: 'utf8', maxBuffer: 64 << 20 },
    );
  });
  if (result!.status !== 0) throw new Error(`build failed: ${result!.stderr}`);
  const report = JSON.parse(String(result!.stdout));
  const rssMiB = Number(await readFile(rssFile, 'utf8')) / 1024;
  const ref2 = reference();
  const ref = (ref1 + ref2) / 2;
  const ratio = buildSeconds / ref;
  console.log(`base: ${LAYERS} × fp16 [${HIDDEN}, ${HIDDEN}] = ${(baseBytes / 1024 ** 3).toFixed(2)} GiB external data; LoRA rank ${RANK} on ${report.mergedTensors} layers (${report.loras[0].matched} keys matched)`);
  console.log(`artifact: ${report.shards} shards, fingerprint ${report.fingerprint}`);
  console.log(`build ${buildSeconds.toFixed(2)} s; cp + sha256sum ${ref1.toFixed(2)} s / ${ref2.toFixed(2)} s; ratio ${ratio.toFixed(2)} (target ≤ 1.5)`);
  console.log(`peak RSS ${rssMiB.toFixed(0)} MiB (target ≤ 512)`);
  console.log(`BENCH build ratio=${ratio.toFixed(2)} rss_mib=${rssMiB.toFixed(0)} build_s=${buildSeconds.toFixed(2)} ref_s=${ref.toFixed(2)} base_gib=${(baseBytes / 1024 ** 3).toFixed(2)} rank=${RANK}`);
} finally {
  if (!keep) await rm(dir, { recursive: true, force: true });
}
