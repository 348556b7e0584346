import { describe, expect, it } from 'vitest';
import { encodeSafetensors } from '../../common/safetensors.ts';
import {
  applyLoraDelta,
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  loraFactor,
  moduleFromInitializerName,
  moduleFromNodeName,
  moduleMatchKey,
  parseLoraKey,
  readLora,
} from '../../common/lora/index.ts';
import { random } from '../fixtures/models.ts';

describe('LoRA keys → module', () => {
  const module = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
  const expected = moduleMatchKey(moduleFromNodeName('/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul')!);

  it('resolves kohya, PEFT and diffusers names of one module to what the node path gives', () => {
    expect(moduleFromNodeName('/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul')).toBe(module);
    const keys = [
      ['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight', 'kohya', 'down'],
      ['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight', 'kohya', 'up'],
      ['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha', 'kohya', 'alpha'],
      [`base_model.model.${module}.lora_A.weight`, 'peft', 'down'],
      [`base_model.model.${module}.lora_B.default.weight`, 'peft', 'up'],
      [`unet.${module}.lora_A.weight`, 'peft', 'down'],
      [`unet.${module}.lora.down.weight`, 'diffusers', 'down'],
      [`${module}.lora.up.weight`, 'diffusers', 'up'],
      [`unet.${module}.lora_linear_layer.up.weight`, 'diffusers', 'up'],
      ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight', 'diffusers', 'down'],
    ] as const;
    for (const [key, format, part] of keys) {
      expect(parseLoraKey(key), key).toMatchObject({ match: expected, format, part });
    }
    expect(moduleMatchKey(moduleFromInitializerName(`${module}.weight`)!)).toBe(expected);
  });

  it('maps to_out_lora to to_out.0 and leaves exporter names and other keys alone', () => {
    expect(parseLoraKey('unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight')?.module).toBe(
      'mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0',
    );
    expect(moduleFromInitializerName('onnx::MatMul_1234')).toBeUndefined();
    expect(moduleFromNodeName('MatMul_12')).toBeUndefined();
    expect(parseLoraKey('lora_unet_x.hada_w1_a')).toBeNull();
  });
});

/** Naive reference: ΔW[o][k] = f Σr up[o][r] down[r][k]. */
function naiveDelta(up: Float32Array, down: Float32Array, out: number, rank: number, k: number, f: number): Float64Array {
  const d = new Float64Array(out * k);
  for (let o = 0; o < out; o++) for (let j = 0; j < k; j++) for (let r = 0; r < rank; r++) d[o * k + j] += f * up[o * rank + r] * down[r * k + j];
  return d;
}

describe('applyLoraDelta', () => {
  const out = 6;
  const inDim = 5;
  const rank = 3;
  const up = random(1, out * rank);
  const down = random(2, rank * inDim);
  const delta = naiveDelta(up, down, out, rank, inDim, 0.5 * (2 / rank));

  it('adds scale·alpha/rank·up·down to an [out, in] weight', () => {
    const w = random(3, out * inDim);
    const before = w.slice();
    applyLoraDelta(w, { shape: [out, inDim], layout: 'oi' }, { data: up, shape: [out, rank] }, { data: down, shape: [rank, inDim] }, 2, 0.5);
    w.forEach((v, i) => expect(v).toBeCloseTo(before[i] + delta[i], 6));
  });

  it('adds the transposed delta to an [in, out] weight (MatMul, Gemm transB=0)', () => {
    const w = random(4, inDim * out);
    const before = w.slice();
    applyLoraDelta(w, { shape: [inDim, out], layout: 'io' }, { data: up, shape: [out, rank] }, { data: down, shape: [rank, inDim] }, 2, 0.5);
    for (let i = 0; i < inDim; i++) for (let o = 0; o < out; o++) expect(w[i * out + o]).toBeCloseTo(before[i * out + o] + delta[o * inDim + i], 6);
  });

  it('reshapes a LoCon k×k delta onto a conv weight', () => {
    const cin = 2;
    const kd = random(5, rank * cin * 9);
    const w = random(6, out * cin * 9);
    const before = w.slice();
    const d = naiveDelta(up, kd, out, rank, cin * 9, 1);
    applyLoraDelta(w, { shape: [out, cin, 3, 3], layout: 'oihw' }, { data: up, shape: [out, rank, 1, 1] }, { data: kd, shape: [rank, cin, 3, 3] }, 0, 1);
    w.forEach((v, i) => expect(v).toBeCloseTo(before[i] + d[i], 6));
  });

  it('treats alpha 0 or missing as alpha = rank, and refuses shapes that do not fit', () => {
    expect(loraFactor(undefined, 8)).toBe(1);
    expect(loraFactor(0, 8)).toBe(1);
    expect(loraFactor(4, 8)).toBe(0.5);
    expect(() =>
      applyLoraDelta(new Float32Array(out * inDim), { name: 'w', shape: [out, inDim], layout: 'io' }, { data: up, shape: [out, rank] }, { data: down, shape: [rank, inDim] }, 0, 1, 'k'),
    ).toThrow('k: LoRA up [6,3] · down [3,5] does not fit weight "w" [6,5] (layout io)');
  });
});

describe('fp16 / bf16 conversion', () => {
  it('matches the IEEE binary16 encoding, rounding to nearest even', () => {
    // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties go to the even one.
    const values = Float32Array.of(1, -2, 0.5, 65504, 1e-8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -24, Infinity, 1e6);
    const half = f32ToF16(values);
    expect(Array.from(half)).toEqual([0x3c00, 0xc000, 0x3800, 0x7bff, 0, 0x3c00, 0x3c02, 0x0001, 0x7c00, 0x7c00]);
    expect(Array.from(f16ToF32(half))).toEqual([1, -2, 0.5, 65504, 0, 1, 1 + 2 * 2 ** -10, 2 ** -24, Infinity, Infinity]);
    expect(Number.isNaN(f16ToF32(f32ToF16(Float32Array.of(NaN)))[0])).toBe(true);
  });

  it('round-trips every finite half exactly', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const finite = all.filter((h) => (h & 0x7c00) !== 0x7c00);
    expect(Array.from(f32ToF16(f16ToF32(finite)))).toEqual(Array.from(finite));
  });

  it('bf16 keeps the top 16 bits, rounding to nearest even', () => {
    const x = Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -3.5);
    expect(Array.from(bf16ToF32(f32ToBf16(x)))).toEqual([1, 1, 1 + 4 * 2 ** -8, -3.5]);
  });
});

describe('readLora', () => {
  it('groups up, down and alpha per module, counts unknown keys, checks ranks', () => {
    const m = 'lora_unet_blocks_0_proj';
    const bytes = encodeSafetensors({
      [`${m}.lora_down.weight`]: { dtype: 'F16', shape: [2, 3], data: new Uint16Array(6).fill(0x3800) },
      [`${m}.lora_up.weight`]: { dtype: 'BF16', shape: [4, 2], data: new Uint16Array(8).fill(0x3f80) },
      [`${m}.alpha`]: { dtype: 'F32', shape: [], data: Float32Array.of(1) },
      'lora_unet_x.hada_w1_a': { dtype: 'F32', shape: [1], data: Float32Array.of(0) },
    });
    const lora = readLora(bytes, 'l.safetensors');
    expect(lora.format).toBe('kohya');
    expect(lora.unrecognised).toEqual(['lora_unet_x.hada_w1_a']);
    const mod = lora.modules.get('unet|blocks_0_proj')!;
    expect(mod.alpha).toBe(1);
    expect(Array.from(mod.down!.data)).toEqual(new Array(6).fill(0.5));
    expect(Array.from(mod.up!.data)).toEqual(new Array(8).fill(1));
    expect(mod.keys).toHaveLength(3);
  });

  it('takes alpha from a PEFT config when the file has none (and rsLoRA scales by 1/√r)', () => {
    const bytes = encodeSafetensors({
      'base_model.model.a.lora_A.weight': { dtype: 'F32', shape: [4, 2], data: new Float32Array(8) },
      'base_model.model.a.lora_B.weight': { dtype: 'F32', shape: [2, 4], data: new Float32Array(8) },
    });
    expect(readLora(bytes, 'p', { lora_alpha: 8 }).modules.get('*|a')!.alpha).toBe(8);
    expect(loraFactor(readLora(bytes, 'p', { lora_alpha: 8, use_rslora: true }).modules.get('*|a')!.alpha, 4)).toBeCloseTo(8 / Math.sqrt(4), 12);
    expect(readLora(bytes, 'p').modules.get('*|a')!.alpha).toBeUndefined();
  });
});
