/**
 * The text-to-image loop on real onnxruntime-node sessions over a tiny generated pipeline
 * (test/fixtures/generate/make_tiny_sd.py), against that script's independent torch reference
 * of the same generation; and its wiring (guidance batching, dtypes, SDXL, abort, bad input)
 * on sessions written in the test.
 */
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isFuseloadError } from '../../common/errors.ts';
import {
  describeInputs,
  generateImage,
  guidanceEmbedding,
  readTextToImageAssets,
  type GenerateOptions,
  type PromptTokenizer,
  type SessionLike,
  type TextToImageAssets,
  type TextToImageParts,
} from '../../common/generate/index.ts';
import type { Feeds, TensorLike } from '../../common/pipeline.ts';

const DIR = new URL('../fixtures/generate/tiny-sd/', import.meta.url);
const ref = JSON.parse(readFileSync(new URL('reference.json', DIR), 'utf8')) as {
  prompt: string;
  negative_prompt: string;
  width: number;
  height: number;
  steps: number;
  guidance_scale: number;
  cond_ids: number[];
  uncond_ids: number[];
  noise: number[];
  timesteps: number[];
  final_latents: number[];
  image_rgba_base64: string;
  guidance_1: { final_latents: number[]; image_rgba_base64: string };
};
const json = (path: string) => JSON.parse(readFileSync(new URL(path, DIR), 'utf8')) as unknown;

interface CountingSession extends SessionLike {
  calls: number;
  feeds: Feeds[];
  release(): Promise<void>;
}

/** An onnxruntime-node session as the loop sees it, counting its runs. */
async function ortSession(path: string): Promise<CountingSession> {
  const session = await ort.InferenceSession.create(new URL(path, DIR).pathname);
  const s: CountingSession = {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    ...describeInputs(session.inputMetadata),
    calls: 0,
    feeds: [],
    async run(feeds) {
      s.calls++;
      s.feeds.push(feeds);
      const inputs: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type as 'float32', t.data as Float32Array, t.dims);
      const out = await session.run(inputs);
      const result: Feeds = {};
      for (const [name, t] of Object.entries(out)) result[name] = { type: t.type, dims: t.dims, data: t.data as TensorLike['data'] };
      return result;
    },
    release: () => session.release(),
  };
  return s;
}

let assets: TextToImageAssets;
let tokenizer: PromptTokenizer;
let textEncoder: CountingSession;
let unet: CountingSession;
let unetBatch1: CountingSession;
let unetFp16: CountingSession;
let vae: CountingSession;

beforeAll(async () => {
  ort.env.logLevel = 'error';
  assets = await readTextToImageAssets(async (path) => {
    try {
      return readFileSync(new URL(path, DIR));
    } catch {
      return null; // no model_index.json here
    }
  });
  tokenizer = assets.tokenizer;
  [textEncoder, unet, unetBatch1, unetFp16, vae] = await Promise.all(
    ['text_encoder', 'unet', 'unet-batch1-int64', 'unet-fp16', 'vae_decoder'].map((m) => ortSession(`${m}/model.onnx`)),
  );
});
afterAll(async () => {
  await Promise.all([textEncoder, unet, unetBatch1, unetFp16, vae].map((s) => s?.release()));
});

function parts(over: Partial<TextToImageParts> = {}): TextToImageParts {
  for (const s of [textEncoder, unet, unetBatch1, unetFp16, vae]) {
    s.calls = 0;
    s.feeds = [];
  }
  return {
    text_encoder: textEncoder,
    unet,
    vae_decoder: vae,
    ...assets,
    ...over,
  };
}

function referenceOptions(over: Partial<GenerateOptions> = {}): GenerateOptions {
  return {
    prompt: ref.prompt,
    steps: ref.steps,
    guidanceScale: ref.guidance_scale,
    scheduler: 'euler',
    width: ref.width,
    height: ref.height,
    latents: Float32Array.from(ref.noise),
    ...over,
  };
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string) {
  expect(actual.length, what).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (1 + Math.abs(expected[i])));
  expect(worst, `${what}: worst relative difference`).toBeLessThanOrEqual(tol);
}

function imageDiff(actual: Uint8ClampedArray, base64: string): { max: number; mean: number } {
  const expected = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  expect(actual.length).toBe(expected.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / expected.length };
}

describe('one generation against the torch reference', () => {
  it('reads the pipeline\'s assets: Euler config, VAE scaling factor, CLIP tokenizer from vocab.json + merges.txt', () => {
    expect(assets.schedulerConfig).toMatchObject({ _class_name: 'EulerDiscreteScheduler' });
    expect(assets).toMatchObject({ vaeScalingFactor: 0.18215, vaeScaleFactor: 8 });
    expect(assets.tokenizer_2).toBeUndefined();
  });

  it('tokenizes the prompt and the empty negative prompt to the reference ids', () => {
    expect(Array.from(tokenizer.encode(ref.prompt).ids)).toEqual(ref.cond_ids);
    expect(Array.from(tokenizer.encode(ref.negative_prompt).ids)).toEqual(ref.uncond_ids);
  });

  it('Euler, 4 steps, guidance 3, fixed latents: same latents and image; one batch-2 UNet call per step', async () => {
    const steps: { step: number; timestep: number; latents?: Float32Array }[] = [];
    const p = parts();
    const result = await generateImage(p, referenceOptions({ onStep: (e) => steps.push(e) }));
    expect(steps.map((e) => e.timestep)).toEqual(ref.timesteps);
    expect(steps.map((e) => e.step)).toEqual([1, 2, 3, 4]);
    expectClose(steps[3].latents!, ref.final_latents, 1e-4, 'final latents');
    expect(result.image.width).toBe(ref.width);
    expect(result.image.height).toBe(ref.height);
    const diff = imageDiff(result.image.data, ref.image_rgba_base64);
    expect(diff.max).toBeLessThanOrEqual(1);
    expect(result).toMatchObject({ steps: 4, scheduler: 'euler', guidanceScale: 3, unetCalls: 4, promptTruncated: false });
    expect(unet.calls).toBe(4);
    expect(textEncoder.calls).toBe(2);
    expect(vae.calls).toBe(1);
    const feed = unet.feeds[0];
    expect(feed.sample.dims).toEqual([2, 4, ref.height / 8, ref.width / 8]);
    expect(feed.timestep).toMatchObject({ type: 'float32', dims: [2] });
    expect(feed.encoder_hidden_states.dims).toEqual([2, 77, 16]);
    expect(textEncoder.feeds[0].input_ids.type).toBe('int32');
    expect(result.timings.totalMs).toBeGreaterThanOrEqual(result.timings.denoiseMs);
  });

  it('a UNet fixed at batch 1 with int64 timesteps: two calls per step, the same image', async () => {
    const result = await generateImage(parts({ unet: unetBatch1 }), referenceOptions());
    expect(result.unetCalls).toBe(8);
    expect(unetBatch1.calls).toBe(8);
    expect(unetBatch1.feeds[0].sample.dims).toEqual([1, 4, ref.height / 8, ref.width / 8]);
    expect(unetBatch1.feeds[0].timestep.type).toBe('int64');
    expect(unetBatch1.feeds[0].timestep.data).toEqual(BigInt64Array.from([751n]));
    expect(imageDiff(result.image.data, ref.image_rgba_base64).max).toBeLessThanOrEqual(1);
  });

  it('an fp16 UNet: float16 in and out at the edges, latents and image within fp16 rounding', async () => {
    let last: Float32Array | undefined;
    const result = await generateImage(parts({ unet: unetFp16 }), referenceOptions({ onStep: (e) => (last = e.latents) }));
    expectClose(last!, ref.final_latents, 5e-3, 'final latents');
    expect(unetFp16.feeds[0].sample.type).toBe('float16');
    expect(unetFp16.feeds[0].sample.data).toBeInstanceOf(Uint16Array);
    expect(unetFp16.feeds[0].timestep.type).toBe('float16');
    const diff = imageDiff(result.image.data, ref.image_rgba_base64);
    expect(diff.max).toBeLessThanOrEqual(2);
    expect(diff.mean).toBeLessThan(0.05);
  });

  it('guidance 1 skips the unconditional pass: one batch-1 call per step, one text encoding', async () => {
    const steps: Float32Array[] = [];
    const result = await generateImage(parts(), referenceOptions({ guidanceScale: 1, onStep: (e) => steps.push(e.latents!) }));
    expect(result.unetCalls).toBe(4);
    expect(unet.feeds[0].sample.dims[0]).toBe(1);
    expect(textEncoder.calls).toBe(1);
    expectClose(steps[3], ref.guidance_1.final_latents, 1e-4, 'final latents');
    expect(imageDiff(result.image.data, ref.guidance_1.image_rgba_base64).max).toBeLessThanOrEqual(1);
  });
});

describe('seeds and schedulers', () => {
  it('a seed makes the same image again, another seed another; no seed picks one and returns it', async () => {
    const opts = { prompt: 'a red cat', steps: 2, width: 32, height: 32, guidanceScale: 2 };
    const a = await generateImage(parts(), { ...opts, seed: 42 });
    const b = await generateImage(parts(), { ...opts, seed: 42 });
    const c = await generateImage(parts(), { ...opts, seed: 43 });
    expect(a.seed).toBe(42);
    expect(b.image.data).toEqual(a.image.data);
    expect(c.image.data).not.toEqual(a.image.data);
    const d = await generateImage(parts(), opts);
    expect(Number.isSafeInteger(d.seed)).toBe(true);
    expect((await generateImage(parts(), { ...opts, seed: d.seed })).image.data).toEqual(d.image.data);
  });

  it('every scheduler runs the loop, the noisy ones reproducibly from the seed', async () => {
    for (const scheduler of ['euler-ancestral', 'ddim', 'dpm++2m', 'lcm'] as const) {
      const opts = { prompt: 'a blue dog', steps: 3, width: 16, height: 16, seed: 5, scheduler };
      const a = await generateImage(parts(), opts);
      const b = await generateImage(parts(), opts);
      expect(a.scheduler).toBe(scheduler);
      expect(b.image.data, scheduler).toEqual(a.image.data);
    }
  });
});

describe('abort', () => {
  it('stops between steps with a typed error, before the VAE runs', async () => {
    const controller = new AbortController();
    const p = parts();
    const error = await generateImage(
      p,
      referenceOptions({ signal: controller.signal, onStep: (e) => e.step === 2 && controller.abort(new Error('user left')) }),
    ).catch((e: unknown) => e);
    expect(isFuseloadError(error) && error.code).toBe('aborted');
    expect((error as Error).message).toBe('generate: aborted after 2 of 4 steps');
    expect(unet.calls).toBe(2);
    expect(vae.calls).toBe(0);
  });

  it('an already-aborted signal runs nothing', async () => {
    const error = await generateImage(parts(), referenceOptions({ signal: AbortSignal.abort() })).catch((e: unknown) => e);
    expect(isFuseloadError(error) && error.code).toBe('aborted');
    expect(textEncoder.calls).toBe(0);
  });
});

describe('bad input: one line naming the field, nothing run', () => {
  const cases: [Partial<GenerateOptions> | Record<string, unknown>, RegExp][] = [
    [{ prompt: '' }, /^prompt: must not be empty$/],
    [{ prompt: 42 }, /^prompt: must be a string, got number$/],
    [{ prompt: 'x'.repeat(1001) }, /^prompt: has 1001 characters, more than the 1000 allowed$/],
    [{ negativePrompt: 7 }, /^negativePrompt: must be a string/],
    [{ steps: 0 }, /^steps: must be an integer from 1 to 150, got 0$/],
    [{ steps: 2.5 }, /^steps: /],
    [{ steps: 151 }, /^steps: /],
    [{ guidanceScale: Number.NaN }, /^guidanceScale: must be a number from 0 to 30, got NaN$/],
    [{ guidanceScale: 31 }, /^guidanceScale: /],
    [{ width: 100 }, /^width: must be a multiple of 8 from 8 to 2048, got 100$/],
    [{ height: 4096 }, /^height: /],
    [{ width: -8 }, /^width: /],
    [{ seed: -1 }, /^seed: must be an integer from 0 to 9007199254740991, got -1$/],
    [{ seed: 1.5 }, /^seed: /],
    [{ scheduler: 'plms' }, /^scheduler: "plms" is not one of euler, euler-ancestral, ddim, dpm\+\+2m, lcm$/],
    [{ latents: new Float32Array(3) }, /^latents: must hold 192 values \(\[1, 4, 6, 8\]\), got 3$/],
    [{ latents: [1, 2, 3] }, /^latents: must be a Float32Array$/],
    [{ steps: 60, scheduler: 'lcm' }, /^steps: LCM takes at most original_inference_steps \(50\) steps, got 60$/],
  ];
  for (const [over, message] of cases) {
    it(JSON.stringify(over, (_k, v) => (v instanceof Float32Array ? `Float32Array(${v.length})` : v)).slice(0, 60), async () => {
      const p = parts();
      const error = await generateImage(p, referenceOptions(over as Partial<GenerateOptions>)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(message);
      expect((error as Error).message).not.toContain('\n');
      expect(isFuseloadError(error) && error.code).toBe('bad-input');
      expect(textEncoder.calls + unet.calls + vae.calls).toBe(0);
    });
  }

  it('a UNet whose graph fixes 64×64 latents refuses other sizes', async () => {
    const fixed: SessionLike = { ...fake([]), inputNames: ['sample', 'timestep', 'encoder_hidden_states'], outputNames: ['out_sample'], inputDims: { sample: ['batch', 4, 64, 64] } };
    await expect(generateImage(parts({ unet: fixed }), { prompt: 'a cat', width: 256 })).rejects.toThrow(/^width: this UNet takes 512 only/);
  });
});

// ----------------------------------------------------------------------------- wiring, on sessions written here

/** A session that returns `make(feeds)` for its outputs and records what it was fed. */
function fake(outputNames: string[], make: (feeds: Feeds) => Feeds = () => ({}), extra: Partial<SessionLike> = {}): SessionLike & { seen: Feeds[] } {
  const seen: Feeds[] = [];
  return {
    inputNames: [],
    outputNames,
    seen,
    async run(feeds) {
      seen.push(feeds);
      return make(feeds);
    },
    ...extra,
  };
}
const f32 = (dims: number[], fill: (i: number) => number = () => 0): TensorLike => {
  const n = dims.reduce((a, b) => a * b, 1);
  return { type: 'float32', dims, data: Float32Array.from({ length: n }, (_, i) => fill(i)) };
};

describe('wiring', () => {
  const L = 77;

  function sdxlParts() {
    // Two encoders with hidden_states.N outputs; the loop must take the penultimate ones.
    const te1 = fake(['last_hidden_state', 'pooler_output', 'hidden_states.0', 'hidden_states.1', 'hidden_states.2'], () => ({
      last_hidden_state: f32([1, L, 2], () => 9),
      pooler_output: f32([1, 2], () => 9),
      'hidden_states.0': f32([1, L, 2], () => 9),
      'hidden_states.1': f32([1, L, 2], (i) => 1 + (i % 2)), // penultimate: 1, 2 per token
      'hidden_states.2': f32([1, L, 2], () => 9),
    }), { inputNames: ['input_ids'], inputTypes: { input_ids: 'int64' } });
    const te2 = fake(['text_embeds', 'last_hidden_state', 'hidden_states.0', 'hidden_states.1', 'hidden_states.2'], () => ({
      text_embeds: f32([1, 3], (i) => 10 + i),
      last_hidden_state: f32([1, L, 3], () => 9),
      'hidden_states.0': f32([1, L, 3], () => 9),
      'hidden_states.1': f32([1, L, 3], (i) => 3 + (i % 3)), // penultimate: 3, 4, 5 per token
      'hidden_states.2': f32([1, L, 3], () => 9),
    }), { inputNames: ['input_ids'] });
    const unetSdxl = fake(['out_sample'], (feeds) => ({ out_sample: f32(feeds.sample.dims as number[]) }), {
      inputNames: ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'],
    });
    const vaeFake = fake(['sample'], (feeds) => ({ sample: f32([1, 3, feeds.latent_sample.dims[2] * 8, feeds.latent_sample.dims[3] * 8]) }), {
      inputNames: ['latent_sample'],
    });
    return { te1, te2, unetSdxl, vaeFake };
  }

  it('SDXL: both encoders\' penultimate states side by side, text_embeds from the second, time_ids, zero negative', async () => {
    const { te1, te2, unetSdxl, vaeFake } = sdxlParts();
    await generateImage(
      { text_encoder: te1, text_encoder_2: te2, unet: unetSdxl, vae_decoder: vaeFake, tokenizer, schedulerConfig: json('scheduler/scheduler_config.json') },
      { prompt: 'a red cat', steps: 1, width: 64, height: 32, guidanceScale: 5, seed: 1 },
    );
    expect(te1.seen).toHaveLength(1); // the negative prompt is zeros, not encoded
    expect(te1.seen[0].input_ids.type).toBe('int64');
    const feed = unetSdxl.seen[0];
    expect(feed.encoder_hidden_states.dims).toEqual([2, L, 5]);
    const ehs = feed.encoder_hidden_states.data as Float32Array;
    expect(Array.from(ehs.subarray(0, 5))).toEqual([0, 0, 0, 0, 0]); // unconditional: zeros
    expect(Array.from(ehs.subarray(L * 5, L * 5 + 10))).toEqual([1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
    expect(feed.text_embeds.dims).toEqual([2, 3]);
    expect(Array.from(feed.text_embeds.data as Float32Array)).toEqual([0, 0, 0, 10, 11, 12]);
    expect(feed.time_ids.dims).toEqual([2, 6]);
    expect(Array.from(feed.time_ids.data as Float32Array)).toEqual([32, 64, 0, 0, 32, 64, 32, 64, 0, 0, 32, 64]);
  });

  it('SDXL with a negative prompt encodes it', async () => {
    const { te1, te2, unetSdxl, vaeFake } = sdxlParts();
    await generateImage(
      { text_encoder: te1, text_encoder_2: te2, unet: unetSdxl, vae_decoder: vaeFake, tokenizer, schedulerConfig: {} },
      { prompt: 'a red cat', negativePrompt: 'a dog', steps: 1, width: 16, height: 16, seed: 1 },
    );
    expect(te1.seen).toHaveLength(2);
    expect(te2.seen).toHaveLength(2);
  });

  it('names by diffusers\' ONNX names first, by position otherwise; the last hidden state by name', async () => {
    const te = fake(['pooler_output', 'last_hidden_state'], () => ({ pooler_output: f32([1, 4], () => 7), last_hidden_state: f32([1, L, 4], () => 1) }), {
      inputNames: ['ids'],
    });
    const u = fake(['noise'], (feeds) => ({ noise: f32(feeds.x.dims as number[]) }), { inputNames: ['x', 't', 'context'] });
    const v = fake(['image'], () => ({ image: f32([1, 3, 16, 16]) }), { inputNames: ['z'] });
    const roles: string[] = [];
    const result = await generateImage(
      { text_encoder: te, unet: u, vae_decoder: v, tokenizer, schedulerConfig: {} },
      { prompt: 'cat', steps: 2, width: 16, height: 16, seed: 3 },
      { run: (role, session, feeds) => (roles.push(role), session.run(feeds as Feeds)) },
    );
    expect(Object.keys(te.seen[0])).toEqual(['ids']);
    expect(Object.keys(u.seen[0]).sort()).toEqual(['context', 't', 'x']);
    expect(Array.from((u.seen[0].context.data as Float32Array).subarray(0, 4))).toEqual([1, 1, 1, 1]);
    expect(Object.keys(v.seen[0])).toEqual(['z']);
    expect(roles).toEqual(['text_encoder', 'text_encoder', 'unet', 'unet', 'vae_decoder']);
    expect(Array.from(result.image.data.subarray(0, 4))).toEqual([128, 128, 128, 255]); // (0 + 1) / 2 · 255
  });

  it('an LCM-distilled UNet gets the guidance embedding as timestep_cond and no unconditional pass', async () => {
    const te = fake(['last_hidden_state'], () => ({ last_hidden_state: f32([1, L, 4]) }), { inputNames: ['input_ids'] });
    const u = fake(['out_sample'], (feeds) => ({ out_sample: f32(feeds.sample.dims as number[]) }), {
      inputNames: ['sample', 'timestep', 'encoder_hidden_states', 'timestep_cond'],
      inputDims: { timestep_cond: ['batch', 8] },
    });
    const v = fake(['sample'], () => ({ sample: f32([1, 3, 16, 16]) }), { inputNames: ['latent_sample'] });
    const result = await generateImage(
      { text_encoder: te, unet: u, vae_decoder: v, tokenizer, schedulerConfig: { _class_name: 'LCMScheduler' } },
      { prompt: 'cat', width: 16, height: 16, seed: 3 },
    );
    expect(result).toMatchObject({ scheduler: 'lcm', steps: 4, guidanceScale: 8.5, unetCalls: 4 });
    expect(te.seen).toHaveLength(1);
    expect(u.seen[0].timestep_cond.dims).toEqual([1, 8]);
    expect(Array.from(u.seen[0].timestep_cond.data as Float32Array)).toEqual(Array.from(guidanceEmbedding(7.5, 8)));
    expect(u.seen.map((f) => Number((f.timestep.data as Float32Array)[0]))).toEqual([999, 759, 499, 259]);
  });

  it('a text encoder with a fixed sequence length other than the tokenizer\'s is a shape mismatch', async () => {
    const te = fake(['last_hidden_state'], () => ({}), { inputNames: ['input_ids'], inputDims: { input_ids: [1, 64] } });
    const error = await generateImage(parts({ text_encoder: te }), { prompt: 'cat', width: 16, height: 16 }).catch((e: unknown) => e);
    expect(isFuseloadError(error) && error.code).toBe('shape-mismatch');
    expect((error as Error).message).toBe('text_encoder: takes 64 tokens, the tokenizer makes 77');
  });
});
