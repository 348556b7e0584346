/**
 * Build benchmark: a synthetic fp16 base of at least 1 GiB (external data) and a rank-16 LoRA
 * on every linear layer. Prints the build's wall time over `cp` + `sha256sum` of the same
 * bytes (page cache equally warm), and the build's peak RSS (the build runs in a child process
 * that reports its own maxRSS). `--runs` builds, each between two references (ref, build, ref,
 * build, …, ref): each build's ratio is over the mean of its neighbours, and the median is the
 * figure, so one build slowed by the machine (writeback, a neighbour) does not decide it.
 *
 *   npx tsx test/bench/build.ts [--gib 1] [--runs 3] [--keep]
 *
 * Last line: `BENCH build ratio=<r> rss_mib=<m> …`, for tabulating.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { f32ToF16 } from '../../common/lora/dtype.ts';
import { writeMatMulBase } from '../support/bench-models.ts';
import { median, neighbourRatios, numberFlag, spread } from '../support/bench.ts';

const args = process.argv.slice(2);
const gib = numberFlag(args, '--gib', 1);
const runs = numberFlag(args, '--runs', 3);
const SETTLE_MS = 4000;
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

  // Reference: cp + sha256sum of the same bytes (page cache warm).
  const reference = () => {
    const s = seconds(() => {
      execFileSync('cp', [join(dir, 'base.weights'), join(dir, 'copy.weights')]);
      execFileSync('sha256sum', [join(dir, 'base.weights')]);
    });
    rmSync(join(dir, 'copy.weights'));
    return s;
  };

  const rssFile = join(dir, 'rss');
  const preload = `data:text/javascript,import fs from "node:fs"; process.on("exit", () => fs.writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`;
  /** One build in a fresh process with a fresh store and output: its seconds, peak RSS and report. */
  const build = async (round: number) => {
    const out = join(dir, `out-${round}`);
    const store = join(dir, `store-${round}`);
    let result: ReturnType<typeof spawnSync> | undefined;
    const s = seconds(() => {
      result = spawnSync(process.execPath, ['--import', preload, bin, 'build', '--base', join(dir, 'base.onnx'), '--lora', join(dir, 'lora.safetensors'), '--name', 'bench', '--out', out, '--json'], {
        env: { ...process.env, PIPELINE_STORE: store },
        encoding: 'utf8',
        maxBuffer: 64 << 20,
      });
    });
    if (result!.status !== 0) throw new Error(`build failed: ${result!.stderr}`);
    const report = JSON.parse(String(result!.stdout));
    const rssMiB = Number(await readFile(rssFile, 'utf8')) / 1024;
    await rm(out, { recursive: true, force: true });
    await rm(store, { recursive: true, force: true });
    return { seconds: s, rssMiB, report };
  };

  // Every timed step starts from the same state of free memory: the files the step before it
  // deleted written back and let go of for a few seconds. Pages just freed are reused at no cost,
  // pages freed a while ago can cost a VM's host a fault each (a bare 1 GiB dd through the page
  // cache here: 0.4 s right after an rm, 6.9 s a while later; 0.6 s with O_DIRECT either way), and
  // the reference, right after the rm of its own copy, always got the cheap ones.
  const settle = async () => {
    execFileSync('sync');
    await sleep(SETTLE_MS);
  };
  reference(); // warm the page cache
  await settle();
  const refs = [reference()];
  const builds: Awaited<ReturnType<typeof build>>[] = [];
  for (let r = 0; r < runs; r++) {
    await settle();
    builds.push(await build(r));
    await settle();
    refs.push(reference());
  }
  const ratios = neighbourRatios(builds.map((b) => b.seconds), refs);
  const ratio = median(ratios);
  const buildSeconds = median(builds.map((b) => b.seconds));
  const ref = median(refs);
  const rssMiB = Math.max(...builds.map((b) => b.rssMiB));
  const { report } = builds[0];
  if (new Set(builds.map((b) => b.report.fingerprint)).size !== 1) throw new Error(`builds of the same inputs gave fingerprints ${builds.map((b) => b.report.fingerprint).join(', ')}`);
  console.log(`base: ${LAYERS} × fp16 [${HIDDEN}, ${HIDDEN}] = ${(baseBytes / 1024 ** 3).toFixed(2)} GiB external data; LoRA rank ${RANK} on ${report.mergedTensors} layers (${report.loras[0].matched} keys matched)`);
  console.log(`artifact: ${report.shards} shards, fingerprint ${report.fingerprint}`);
  console.log(`builds ${builds.map((b) => b.seconds.toFixed(2)).join(' / ')} s; cp + sha256sum ${refs.map((x) => x.toFixed(2)).join(' / ')} s`);
  console.log(`ratio ${spread(ratios)} (median [min–max] of ${runs}; target ≤ 1.5)`);
  console.log(`peak RSS ${rssMiB.toFixed(0)} MiB (target ≤ 512)`);
  console.log(`BENCH build ratio=${ratio.toFixed(2)} rss_mib=${rssMiB.toFixed(0)} build_s=${buildSeconds.toFixed(2)} ref_s=${ref.toFixed(2)} base_gib=${(baseBytes / 1024 ** 3).toFixed(2)} rank=${RANK} runs=${runs}`);
} finally {
  if (!keep) await rm(dir, { recursive: true, force: true });
}
