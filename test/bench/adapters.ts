/**
 * Adapter-type benchmark (issue 14): `fuseload build` of a synthetic fp16 base of at least
 * 256 MiB (external data, MatMul layers [4096, 4096]) with a LoHa, and with a LoKr, on every
 * linear layer, against the same build with a plain LoRA of the same rank. Prints each
 * build's wall time over the plain-LoRA build's (each build a fresh child process with a
 * fresh store; page cache warm), and the same for CPU time. `--runs` rounds of the three builds
 * side by side; a ratio is the median of the rounds' ratios (LoHa over the LoRA build of the same
 * round), so the machine's weather lands on both sides of each (best of each, before, could pair
 * one side's lucky build with the other's unlucky ones). User CPU time apart: on a VM whose page
 * faults and page-cache writes cost its host's time, system time swings from build to build and
 * takes the wall time with it (the same 256 MiB LoRA build took 1.2–3.5 s within minutes), while
 * the adapters' own math is in user time.
 *
 *   npx tsx test/bench/adapters.ts [--mib 256] [--runs 3] [--keep]
 *
 * Last line: `BENCH adapters loha_ratio=<r> lokr_ratio=<r> …`, for tabulating.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToF16 } from '../../common/lora/dtype.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { writeMatMulBase } from '../support/bench-models.ts';
import { median, numberFlag } from '../support/bench.ts';

const args = process.argv.slice(2);
const mib = numberFlag(args, '--mib', 256);
const runs = numberFlag(args, '--runs', 3);
const keep = args.includes('--keep');
const HIDDEN = 4096;
const RANK = 16;
/** LoKr's Kronecker factor: w1 [8, 8] full, w2 = w2_a·w2_b [512, 512] of rank RANK. */
const KRON = 8;
const TENSOR_BYTES = HIDDEN * HIDDEN * 2;
const LAYERS = Math.ceil((mib * 1024 ** 2) / TENSOR_BYTES);

const dir = await mkdtemp(join(tmpdir(), 'fuseload-bench-adapters-'));
const bin = new URL('../../bin/fuseload.js', import.meta.url).pathname;

function factor(n: number, seed: number): Uint16Array {
  const v = new Float32Array(n);
  for (let j = 0; j < n; j++) v[j] = Math.sin(seed * 7919 + j) * 0.02;
  return f32ToF16(v);
}

try {
  // Base: LAYERS MatMul layers [HIDDEN, HIDDEN] fp16, weights in one external file.
  await writeMatMulBase(dir, LAYERS, HIDDEN);

  // Three adapters of rank RANK on every layer, kohya keys, fp16 factors.
  const files: Record<'lora' | 'loha' | 'lokr', Record<string, SafetensorsInput>> = { lora: {}, loha: {}, lokr: {} };
  for (let i = 0; i < LAYERS; i++) {
    const m = `lora_unet_layers_${i}_mlp_proj`;
    const alpha: SafetensorsInput = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
    const f16 = (shape: number[], seed: number): SafetensorsInput => ({ dtype: 'F16', shape, data: factor(shape[0] * shape[1], seed) });
    files.lora[`${m}.lora_down.weight`] = f16([RANK, HIDDEN], i);
    files.lora[`${m}.lora_up.weight`] = f16([HIDDEN, RANK], i + 0.5);
    files.lora[`${m}.alpha`] = alpha;
    files.loha[`${m}.hada_w1_a`] = f16([HIDDEN, RANK], i);
    files.loha[`${m}.hada_w1_b`] = f16([RANK, HIDDEN], i + 0.25);
    files.loha[`${m}.hada_w2_a`] = f16([HIDDEN, RANK], i + 0.5);
    files.loha[`${m}.hada_w2_b`] = f16([RANK, HIDDEN], i + 0.75);
    files.loha[`${m}.alpha`] = alpha;
    files.lokr[`${m}.lokr_w1`] = f16([KRON, KRON], i);
    files.lokr[`${m}.lokr_w2_a`] = f16([HIDDEN / KRON, RANK], i + 0.25);
    files.lokr[`${m}.lokr_w2_b`] = f16([RANK, HIDDEN / KRON], i + 0.5);
    files.lokr[`${m}.alpha`] = alpha;
  }
  for (const [type, t] of Object.entries(files)) await writeFile(join(dir, `${type}.safetensors`), encodeSafetensors(t));

  /** One build in a fresh process with a fresh store (no cache hit): its wall time, CPU time (the child reports its own) and report. */
  let n = 0;
  const usageFile = join(dir, 'usage');
  const preload = `data:text/javascript,import fs from "node:fs"; process.on("exit", () => { const u = process.resourceUsage(); fs.writeFileSync(${JSON.stringify(usageFile)}, u.userCPUTime + " " + u.systemCPUTime); });`;
  const buildOnce = async (type: keyof typeof files) => {
    const out = join(dir, `out-${n}`);
    const store = join(dir, `store-${n++}`);
    const started = performance.now();
    const result = spawnSync(process.execPath, ['--import', preload, bin, 'build', '--base', join(dir, 'base.onnx'), '--lora', join(dir, `${type}.safetensors`), '--name', 'bench', '--out', out, '--json'], {
      env: { ...process.env, PIPELINE_STORE: store },
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    const seconds = (performance.now() - started) / 1000;
    if (result.status !== 0) throw new Error(`${type} build failed: ${result.stderr}`);
    const report = JSON.parse(result.stdout);
    const [user, system] = (await readFile(usageFile, 'utf8')).split(' ').map((us) => Number(us) / 1e6);
    const cpu = user + system;
    await rm(out, { recursive: true, force: true });
    await rm(store, { recursive: true, force: true });
    return { seconds, cpu, user, report };
  };

  await buildOnce('lora'); // warm the page cache and onnxruntime's files
  // Interleaved rounds: the types see the same machine.
  const wall: Record<string, number[]> = { lora: [], loha: [], lokr: [] };
  const cpu: Record<string, number[]> = { lora: [], loha: [], lokr: [] };
  const user: Record<string, number[]> = { lora: [], loha: [], lokr: [] };
  for (let r = 0; r < runs; r++) {
    for (const type of ['lora', 'loha', 'lokr'] as const) {
      const run = await buildOnce(type);
      const lora = run.report.loras[0];
      if (run.report.mergedTensors !== LAYERS || lora.unmatched !== 0) throw new Error(`${type}: merged ${run.report.mergedTensors} of ${LAYERS} layers, ${lora.unmatched} keys unmatched`);
      if (lora.types[type]?.matched !== lora.matched) throw new Error(`${type}: the report counts ${JSON.stringify(lora.types)}`);
      wall[type].push(run.seconds);
      cpu[type].push(run.cpu);
      user[type].push(run.user);
    }
  }
  const ratio = (type: string, of: Record<string, number[]>) => median(of[type].map((x, r) => x / of.lora[r])).toFixed(2);
  const mid = Object.fromEntries(Object.entries(wall).map(([k, v]) => [k, median(v)]));
  const cpus = Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, median(v)]));
  const baseMiB = (LAYERS * TENSOR_BYTES) / 1024 ** 2;
  console.log(`base: ${LAYERS} × fp16 [${HIDDEN}, ${HIDDEN}] = ${baseMiB.toFixed(0)} MiB external data; rank ${RANK} on every layer (LoKr: w1 [${KRON},${KRON}] ⊗ rank-${RANK} w2)`);
  console.log(`build with LoRA ${mid.lora.toFixed(2)} s, LoHa ${mid.loha.toFixed(2)} s, LoKr ${mid.lokr.toFixed(2)} s (medians of ${runs}); CPU ${cpus.lora.toFixed(2)} / ${cpus.loha.toFixed(2)} / ${cpus.lokr.toFixed(2)} s`);
  console.log(`LoHa / LoRA ${ratio('loha', wall)}, LoKr / LoRA ${ratio('lokr', wall)} (target ≤ 1.3; medians of the rounds' ratios); CPU time ${ratio('loha', cpu)}, ${ratio('lokr', cpu)}; user CPU time ${ratio('loha', user)}, ${ratio('lokr', user)}`);
  console.log(
    `BENCH adapters loha_ratio=${ratio('loha', wall)} lokr_ratio=${ratio('lokr', wall)} loha_cpu_ratio=${ratio('loha', cpu)} lokr_cpu_ratio=${ratio('lokr', cpu)} loha_user_ratio=${ratio('loha', user)} lokr_user_ratio=${ratio('lokr', user)} lora_s=${mid.lora.toFixed(2)} loha_s=${mid.loha.toFixed(2)} lokr_s=${mid.lokr.toFixed(2)} base_mib=${baseMiB.toFixed(0)} rank=${RANK}`,
  );
} finally {
  if (!keep) await rm(dir, { recursive: true, force: true });
}
