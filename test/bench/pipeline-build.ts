/**
 * Pipeline build benchmark (issue "Pipelines, not graphs"): a synthetic three-component
 * diffusers ONNX directory of at least 1 GiB fp16 (text encoder: attention projections as
 * MatMul; UNet: 3×3 convs and attention projections; VAE decoder: convs), external data,
 * and one kohya LoRA (rank 16) on every attention and conv layer of text encoder and UNet.
 * Prints the build's wall time over `cp` + `sha256sum` of the same bytes (same run, page
 * cache warm for both) and the build's peak RSS (the build runs in a child process).
 *
 *   npx tsx test/bench/pipeline-build.ts [--gib 1] [--keep]
 *
 * Last line: `BENCH pipeline-build ratio=<r> rss_mib=<m> …`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToF16 } from '../../common/lora/dtype.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { DTYPE_CODES, encodeModel, setExternal } from '../../tools/onnx/model.ts';

const args = process.argv.slice(2);
const gib = Number(args[args.indexOf('--gib') + 1] ?? 1) || 1;
const keep = args.includes('--keep');
const RANK = 16;
const dir = await mkdtemp(join(tmpdir(), 'fuseload-bench-pipeline-'));
const bin = new URL('../../bin/fuseload.js', import.meta.url).pathname;

interface Layer {
  module: string;
  op: 'MatMul' | 'Conv';
  /** Torch layout: [out, in] or [out, in, 3, 3]. */
  shape: number[];
  lora: boolean;
}

const seconds = (fn: () => void) => {
  const t = performance.now();
  fn();
  return (performance.now() - t) / 1000;
};
const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** One component: its layers as fp16 initializers in one external file `model.onnx_data`. */
async function writeComponent(role: string, layers: Layer[]): Promise<number> {
  const out = join(dir, 'pipe', role);
  await mkdir(out, { recursive: true });
  const g = new GraphBuilder();
  const x = g.input('x', { dtype: 'float16', dims: [1, 8] });
  const data = await open(join(out, 'model.onnx_data'), 'w');
  let offset = 0;
  for (const [i, layer] of layers.entries()) {
    const dims = layer.op === 'MatMul' ? [layer.shape[1], layer.shape[0]] : layer.shape; // MatMul stores [in, out]
    const bytes = numel(dims) * 2;
    const chunk = new Uint16Array(numel(dims));
    randomFillSync(chunk);
    for (let j = 0; j < chunk.length; j++) chunk[j] &= 0xa7ff; // finite, |w| < 0.5
    await data.write(new Uint8Array(chunk.buffer), 0, bytes, offset);
    const name = layer.op === 'MatMul' ? `onnx::MatMul_${1000 + i}` : `${layer.module}.weight`;
    g.initializers.push({ name, dims, dataType: DTYPE_CODES.float16 });
    setExternal(g.initializers.at(-1)!, { location: 'model.onnx_data', offset, length: bytes });
    offset += bytes;
    const path = `/${layer.module.replace(/\.(?=[a-z_])/g, '/')}`;
    // Each layer reads the input: the graph only has to name its weights the way exporters do.
    const y = g.op(layer.op, [x, name], layer.op === 'Conv' ? { kernel_shape: [3, 3] } : {}, `${path}/${layer.op}`);
    g.rename(y, `y${i}`);
    g.output(`y${i}`, { dtype: 'float16', dims: [1] });
  }
  await data.close();
  await writeFile(join(out, 'model.onnx'), encodeModel(g.model()));
  return offset;
}

try {
  // Sizes: text encoder 1/8, UNet 3/4, VAE 1/8 of the total.
  const target = gib * 1024 ** 3;
  const H = 1024;
  const attn = (prefix: string) => ['to_q', 'to_k', 'to_v', 'to_out.0'].map((p) => `${prefix}.${p}`);
  const te: Layer[] = [];
  for (let i = 0; numel([H, H]) * 2 * te.length < target / 8; i++) {
    for (const p of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) te.push({ module: `text_model.encoder.layers.${i}.self_attn.${p}`, op: 'MatMul', shape: [H, H], lora: true });
  }
  const unet: Layer[] = [];
  let unetBytes = 0;
  for (let b = 0; unetBytes < (target * 3) / 4; b++) {
    const C = 640;
    for (const conv of ['conv1', 'conv2']) unet.push({ module: `down_blocks.${b}.resnets.0.${conv}`, op: 'Conv', shape: [C, C, 3, 3], lora: true });
    for (const m of [...attn(`down_blocks.${b}.attentions.0.transformer_blocks.0.attn1`), ...attn(`down_blocks.${b}.attentions.0.transformer_blocks.0.attn2`)]) {
      unet.push({ module: m, op: 'MatMul', shape: [C, C], lora: true });
    }
    unetBytes = unet.reduce((n, l) => n + numel(l.shape) * 2, 0);
  }
  const vae: Layer[] = [];
  for (let i = 0; vae.reduce((n, l) => n + numel(l.shape) * 2, 0) < target / 8; i++) vae.push({ module: `decoder.up_blocks.${i}.resnets.0.conv1`, op: 'Conv', shape: [512, 512, 3, 3], lora: false });

  const bytes = (await writeComponent('text_encoder', te)) + (await writeComponent('unet', unet)) + (await writeComponent('vae_decoder', vae));
  await mkdir(join(dir, 'pipe', 'tokenizer'), { recursive: true });
  await writeFile(join(dir, 'pipe', 'tokenizer', 'vocab.json'), '{"a</w>":0}');
  await writeFile(join(dir, 'pipe', 'tokenizer', 'merges.txt'), '#version: 0.2\n');
  await mkdir(join(dir, 'pipe', 'scheduler'), { recursive: true });
  await writeFile(join(dir, 'pipe', 'scheduler', 'scheduler_config.json'), '{"num_train_timesteps":1000}');
  await writeFile(
    join(dir, 'pipe', 'model_index.json'),
    JSON.stringify({ _class_name: 'OnnxStableDiffusionPipeline', text_encoder: ['transformers', 'CLIPTextModel'], unet: ['diffusers', 'OnnxRuntimeModel'], vae_decoder: ['diffusers', 'OnnxRuntimeModel'], tokenizer: ['transformers', 'CLIPTokenizer'], scheduler: ['diffusers', 'PNDMScheduler'] }),
  );

  // One kohya LoRA over both components (lora_te_ and lora_unet_), fp16, rank 16.
  const lora: Record<string, SafetensorsInput> = {};
  for (const [prefix, layers] of [['lora_te_', te], ['lora_unet_', unet]] as const) {
    for (const [i, l] of layers.entries()) {
      if (!l.lora) continue;
      const key = `${prefix}${l.module.replace(/\./g, '_')}`;
      const inner = numel(l.shape) / l.shape[0];
      const down = new Float32Array(RANK * inner).map((_, j) => Math.sin(i * 7919 + j) * 0.02);
      const up = new Float32Array(l.shape[0] * RANK).map((_, j) => Math.cos(i * 104729 + j) * 0.02);
      lora[`${key}.lora_down.weight`] = { dtype: 'F16', shape: l.op === 'Conv' ? [RANK, l.shape[1], 3, 3] : [RANK, l.shape[1]], data: f32ToF16(down) };
      lora[`${key}.lora_up.weight`] = { dtype: 'F16', shape: l.op === 'Conv' ? [l.shape[0], RANK, 1, 1] : [l.shape[0], RANK], data: f32ToF16(up) };
      lora[`${key}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
    }
  }
  await writeFile(join(dir, 'lora.safetensors'), encodeSafetensors(lora));

  const files = ['text_encoder', 'unet', 'vae_decoder'].map((r) => join(dir, 'pipe', r, 'model.onnx_data'));
  const reference = () =>
    seconds(() => {
      for (const [i, f] of files.entries()) execFileSync('cp', [f, join(dir, `copy${i}`)]);
      execFileSync('sha256sum', files);
    });
  reference(); // warm the page cache
  const ref1 = reference();
  for (let i = 0; i < files.length; i++) await rm(join(dir, `copy${i}`));

  const rssFile = join(dir, 'rss');
  const preload = `data:text/javascript,import fs from "node:fs"; process.on("exit", () => fs.writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`;
  let result: ReturnType<typeof spawnSync> | undefined;
  const buildSeconds = seconds(() => {
    result = spawnSync(
      process.execPath,
      ['--import', preload, bin, 'build', '--base', join(dir, 'pipe'), '--lora', join(dir, 'lora.safetensors'), '--name', 'bench', '--out', join(dir, 'out'), '--json'],
      { env: { ...process.env, PIPELINE_STORE: join(dir, 'store') }, encoding: 'utf8', maxBuffer: 64 << 20 },
    );
  });
  if (result!.status !== 0) throw new Error(`build failed: ${result!.stderr}`);
  const report = JSON.parse(String(result!.stdout));
  const rssMiB = Number(await readFile(rssFile, 'utf8')) / 1024;
  const ref2 = reference();
  const ref = (ref1 + ref2) / 2;
  const ratio = buildSeconds / ref;
  console.log(`pipeline: ${(bytes / 1024 ** 3).toFixed(2)} GiB fp16 in text_encoder (${te.length} layers), unet (${unet.length}), vae_decoder (${vae.length}); LoRA rank ${RANK}: ${report.loras[0].matched} keys matched, ${report.mergedTensors} tensors merged`);
  console.log(`build ${buildSeconds.toFixed(2)} s; cp + sha256sum ${ref1.toFixed(2)} s / ${ref2.toFixed(2)} s; ratio ${ratio.toFixed(2)} (target ≤ 1.0); peak RSS ${rssMiB.toFixed(0)} MiB (target ≤ 512)`);
  console.log(`BENCH pipeline-build ratio=${ratio.toFixed(2)} rss_mib=${rssMiB.toFixed(0)} build_s=${buildSeconds.toFixed(2)} ref_s=${ref.toFixed(2)} gib=${(bytes / 1024 ** 3).toFixed(2)}`);
} finally {
  if (!keep) await rm(dir, { recursive: true, force: true });
}
