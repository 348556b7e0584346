/**
 * The graph sample, for tests and benches of the `graph` path (one plain ONNX model, `p.run`):
 * a PROCEDURAL image generator, not a trained one. `fuseload sample` and `npm start` use the
 * trained text-to-image pipeline instead (./sample.ts). Its weights come from a seeded PRNG;
 * it maps a latent of coordinate and noise channels to an RGB image through the layer kinds a
 * diffusion UNet has (3×3 and 1×1 convs, self-attention, a feed-forward), named as a diffusers
 * export names them, so LoRAs in every key format have something to land on. Its inputs and
 * outputs: common/sample-input.ts (`sampleFeeds`, `imageToRgba`).
 *
 *   latent [1,8,H,W] → conv_in (3×3) → tanh → proj_in (1×1) → avg-pool 4 → tokens
 *   → attn1 (to_q/to_k/to_v/to_out.0, MatMul) → ff (net.0.proj Gemm, net.2 MatMul via Transpose)
 *   → un-pool (linear resize ×4) → proj_out (1×1) → + skip → conv_out (3×3) → sigmoid → image [1,3,H,W]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { mulberry32, SAMPLE_LATENT_CHANNELS } from '../../common/sample-input.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { encodeModel, type ModelProto } from '../onnx/model.ts';

export const SAMPLE_CHANNELS = 32;
const ATTN = '/down_blocks.0/attentions.0/transformer_blocks.0';
const MOD = 'down_blocks.0.attentions.0';

/** Deterministic weights: uniform in ±gain·√3/√fanIn, from a PRNG seeded by the name. */
function randomWeights(name: string, count: number, fanIn: number, gain = 1): Float32Array {
  let seed = 2166136261;
  for (let i = 0; i < name.length; i++) seed = Math.imul(seed ^ name.charCodeAt(i), 16777619);
  const rand = mulberry32(seed);
  const bound = (gain * Math.sqrt(3)) / Math.sqrt(fanIn);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = (2 * rand() - 1) * bound;
  return out;
}

export function sampleModel(): ModelProto {
  const C = SAMPLE_CHANNELS;
  const F = 4 * C;
  const g = new GraphBuilder();
  const w = (name: string, dims: number[], fanIn: number, gain = 1) => g.weight(name, dims, randomWeights(name, dims.reduce((a, b) => a * b, 1), fanIn, gain));
  const latent = g.input('latent', { dtype: 'float32', dims: [1, SAMPLE_LATENT_CHANNELS, 'height', 'width'] });

  const h0 = g.op('Conv', [latent, w('conv_in.weight', [C, SAMPLE_LATENT_CHANNELS, 3, 3], 72, 2), w('conv_in.bias', [C], 72)], { pads: [1, 1, 1, 1], kernel_shape: [3, 3] }, '/conv_in/Conv');
  const h1 = g.op('Tanh', [h0], {}, '/conv_act/Tanh');
  const p0 = g.op('Conv', [h1, w(`${MOD}.proj_in.weight`, [C, C, 1, 1], C), w(`${MOD}.proj_in.bias`, [C], C)], { kernel_shape: [1, 1] }, '/down_blocks.0/attentions.0/proj_in/Conv');
  const p1 = g.op('AveragePool', [p0], { kernel_shape: [4, 4], strides: [4, 4] }, `/down_blocks.0/attentions.0/AveragePool`);
  const poolShape = g.op('Shape', [p1], {}, '/down_blocks.0/attentions.0/Shape');
  const t0 = g.op('Reshape', [p1, g.int64('tokens_shape', [1, C, -1])], {}, '/down_blocks.0/attentions.0/Reshape');
  const x = g.op('Transpose', [t0], { perm: [0, 2, 1] }, '/down_blocks.0/attentions.0/Transpose');

  // Exporter-style weight names (onnx::MatMul_*): only the node path says which module they are.
  const q = g.op('MatMul', [x, w('onnx::MatMul_201', [C, C], C)], {}, `${ATTN}/attn1/to_q/MatMul`);
  const k = g.op('MatMul', [x, w('onnx::MatMul_202', [C, C], C)], {}, `${ATTN}/attn1/to_k/MatMul`);
  const v = g.op('MatMul', [x, w('onnx::MatMul_203', [C, C], C)], {}, `${ATTN}/attn1/to_v/MatMul`);
  const kT = g.op('Transpose', [k], { perm: [0, 2, 1] }, `${ATTN}/attn1/Transpose`);
  const scores = g.op('MatMul', [q, kT], {}, `${ATTN}/attn1/MatMul`);
  const scaled = g.op('Mul', [scores, g.weight('attn_scale', [], Float32Array.of(1 / Math.sqrt(C)))], {}, `${ATTN}/attn1/Mul`);
  const probs = g.op('Softmax', [scaled], { axis: -1 }, `${ATTN}/attn1/Softmax`);
  const av = g.op('MatMul', [probs, v], {}, `${ATTN}/attn1/MatMul_1`);
  const o = g.op('MatMul', [av, w('onnx::MatMul_204', [C, C], C)], {}, `${ATTN}/attn1/to_out.0/MatMul`);
  const o2 = g.op('Add', [o, w(`${MOD}.transformer_blocks.0.attn1.to_out.0.bias`, [C], C)], {}, `${ATTN}/attn1/to_out.0/Add`);
  const x1 = g.op('Add', [x, o2], {}, `${ATTN}/Add`);

  const x2d = g.op('Reshape', [x1, g.int64('rows_shape', [-1, C])], {}, `${ATTN}/ff/Reshape`);
  const f0 = g.op('Gemm', [x2d, w(`${MOD}.transformer_blocks.0.ff.net.0.proj.weight`, [F, C], C), w(`${MOD}.transformer_blocks.0.ff.net.0.proj.bias`, [F], C)], { transB: 1 }, `${ATTN}/ff/net.0/proj/Gemm`);
  const f1 = g.op('Tanh', [f0], {}, `${ATTN}/ff/net.1/Tanh`);
  // Stored [out, in] as torch keeps it and transposed in the graph, as exporters often do.
  const w2 = g.op('Transpose', [w('onnx::Transpose_205', [C, F], F)], { perm: [1, 0] }, `${ATTN}/ff/net.2/Transpose`);
  const f2 = g.op('MatMul', [f1, w2], {}, `${ATTN}/ff/net.2/MatMul`);
  const x3 = g.op('Add', [x1, f2], {}, `${ATTN}/ff/Add`);

  const t1 = g.op('Transpose', [x3], { perm: [0, 2, 1] }, '/down_blocks.0/attentions.0/Transpose_1');
  const t2 = g.op('Reshape', [t1, poolShape], {}, '/down_blocks.0/attentions.0/Reshape_1');
  const up = g.op('Resize', [t2, '', g.weight('upsample_scales', [4], Float32Array.of(1, 1, 4, 4))], { mode: 'linear' }, '/down_blocks.0/attentions.0/Resize');
  const r = g.op('Conv', [up, w(`${MOD}.proj_out.weight`, [C, C, 1, 1], C), w(`${MOD}.proj_out.bias`, [C], C)], { kernel_shape: [1, 1] }, '/down_blocks.0/attentions.0/proj_out/Conv');
  const h2 = g.op('Add', [h1, r], {}, '/down_blocks.0/Add');
  const h3 = g.op('Tanh', [h2], {}, '/down_blocks.0/Tanh');
  const y = g.op('Conv', [h3, w('conv_out.weight', [3, C, 3, 3], 9 * C, 3), w('conv_out.bias', [3], 9 * C)], { pads: [1, 1, 1, 1], kernel_shape: [3, 3] }, '/conv_out/Conv');
  const image = g.op('Sigmoid', [y], {}, '/Sigmoid');
  g.rename(image, 'image');
  g.output('image', { dtype: 'float32', dims: [1, 3, 'height', 'width'] });
  return g.model(17, 'fuseload sample (procedural)');
}

function lora(name: string, shape: number[], fanIn: number, gain: number): SafetensorsInput {
  return { dtype: 'F32', shape, data: randomWeights(name, shape.reduce((a, b) => a * b, 1), fanIn, gain) };
}

const RANK = 4;

/** kohya keys, incl. LoCon on conv_out (3×3) and proj_in (1×1), with alpha tensors. */
export function warmLora(): Uint8Array {
  const C = SAMPLE_CHANNELS;
  const t: Record<string, SafetensorsInput> = {};
  const add = (module: string, down: number[], up: number[], gain: number) => {
    t[`${module}.lora_down.weight`] = lora(`warm.${module}.down`, down, down.slice(1).reduce((a, b) => a * b, 1), 1);
    t[`${module}.lora_up.weight`] = lora(`warm.${module}.up`, up, RANK, gain);
    t[`${module}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK / 2) };
  };
  add('lora_unet_conv_out', [RANK, C, 3, 3], [3, RANK, 1, 1], 3);
  add('lora_unet_down_blocks_0_attentions_0_proj_in', [RANK, C, 1, 1], [C, RANK, 1, 1], 1.5);
  add('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0', [RANK, C], [C, RANK], 1.5);
  return encodeSafetensors(t, { format: 'kohya', note: 'procedural sample LoRA' });
}

/** PEFT keys; alpha and r come from the adapter_config.json written beside it. */
export function coolLora(): { weights: Uint8Array; config: Record<string, unknown> } {
  const C = SAMPLE_CHANNELS;
  const t: Record<string, SafetensorsInput> = {};
  const add = (module: string, inDim: number, outDim: number, gain: number) => {
    t[`base_model.model.${module}.lora_A.weight`] = lora(`cool.${module}.A`, [RANK, inDim], inDim, 1);
    t[`base_model.model.${module}.lora_B.weight`] = lora(`cool.${module}.B`, [outDim, RANK], RANK, gain);
  };
  add(`${MOD}.transformer_blocks.0.attn1.to_q`, C, C, 3);
  add(`${MOD}.transformer_blocks.0.attn1.to_v`, C, C, 3);
  add(`${MOD}.transformer_blocks.0.ff.net.0.proj`, C, 4 * C, 2);
  add(`${MOD}.proj_out`, C, C, 2);
  return {
    weights: encodeSafetensors(t, { format: 'peft', note: 'procedural sample LoRA' }),
    config: { peft_type: 'LORA', r: RANK, lora_alpha: 2 * RANK, target_modules: ['to_q', 'to_v', 'proj', 'proj_out'] },
  };
}

/** diffusers keys (`unet.….lora.down.weight`). */
export function detailLora(): Uint8Array {
  const C = SAMPLE_CHANNELS;
  const t: Record<string, SafetensorsInput> = {};
  const add = (module: string, down: number[], up: number[], gain: number) => {
    t[`unet.${module}.lora.down.weight`] = lora(`detail.${module}.down`, down, down.slice(1).reduce((a, b) => a * b, 1), 1);
    t[`unet.${module}.lora.up.weight`] = lora(`detail.${module}.up`, up, RANK, gain);
  };
  add(`${MOD}.transformer_blocks.0.ff.net.2`, [RANK, 4 * C], [C, RANK], 2);
  add(`${MOD}.transformer_blocks.0.attn1.to_k`, [RANK, C], [C, RANK], 3);
  add('conv_in', [RANK, 8, 3, 3], [C, RANK, 1, 1], 2);
  return encodeSafetensors(t, { format: 'diffusers', note: 'procedural sample LoRA' });
}

export const GRAPH_SAMPLE_FILES = ['model.onnx', 'warm.safetensors', 'cool.safetensors', 'cool.adapter_config.json', 'detail.safetensors'];

/** Writes model.onnx and the three LoRAs (cool's PEFT config as cool.adapter_config.json). */
export async function writeGraphSample(dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const cool = coolLora();
  const files: [string, Uint8Array | string][] = [
    ['model.onnx', encodeModel(sampleModel())],
    ['warm.safetensors', warmLora()],
    ['cool.safetensors', cool.weights],
    ['cool.adapter_config.json', `${JSON.stringify(cool.config, null, 2)}\n`],
    ['detail.safetensors', detailLora()],
  ];
  for (const [name, bytes] of files) await writeFile(join(dir, name), bytes);
  return files.map(([name]) => name);
}
