/**
 * The device-resident loop (common/generate/device) on an emulated device: onnxruntime-node
 * sessions whose outputs are handed out as opaque device tensors and counted when copied back,
 * the way web/ort-engine.ts does on WebGPU. On the tiny real pipeline it makes the CPU loop's
 * image for every scheduler and UNet layout, reads back once per image and holds nothing after,
 * abort included; the scheduler's coefficient form runs the same in the step graph as on the CPU.
 */
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isFuseloadError } from '../../common/errors.ts';
import { concatGraph, STEP, stepGraph, type StepGraphSpec, stepInputs } from '../../common/generate/device/step-graph.ts';
import { type DeviceFeeds, type DeviceSessionLike, type DeviceTensor, isDeviceTensor, type SessionDevice } from '../../common/generate/device/types.ts';
import { describeInputs, generateImage, readTextToImageAssets, type GenerateOptions, type SessionLike, type TextToImageAssets, type TextToImageParts } from '../../common/generate/index.ts';
import { applyLinearStep, type LinearStep } from '../../common/generate/schedulers/linear.ts';
import type { Feeds, TensorLike } from '../../common/pipeline.ts';

const DIR = new URL('../fixtures/generate/tiny-sd/', import.meta.url);
const ref = JSON.parse(readFileSync(new URL('reference.json', DIR), 'utf8')) as { prompt: string; image_rgba_base64: string; noise: number[] };

/** A device whose memory is the CPU's: what matters is that tensors pass as handles and every copy back is counted. */
class EmulatedDevice implements SessionDevice {
  readbacks = 0;
  liveTensors = 0;
  readonly #data = new WeakMap<DeviceTensor, TensorLike>();

  /** `session` on this device: `run` copies every output back, `runDevice` keeps the ones asked for. */
  place<S extends SessionLike>(session: S): S & DeviceSessionLike {
    const device = this;
    return {
      ...session,
      device,
      release: async () => {},
      async run(feeds: Feeds) {
        const out = await session.run(device.#unwrap(feeds));
        device.readbacks += Object.keys(out).length;
        return out;
      },
      async runDevice(feeds: DeviceFeeds, keep: readonly string[], read: readonly string[] = []) {
        const out = await session.run(device.#unwrap(feeds));
        const result: DeviceFeeds = {};
        for (const name of keep) result[name] = device.#hold(out[name]);
        for (const name of read) {
          device.readbacks++;
          result[name] = out[name];
        }
        return result;
      },
    };
  }

  async createSession(graph: Uint8Array): Promise<DeviceSessionLike> {
    this.graphsCreated++;
    return this.place(await ortSession(graph));
  }

  graphsCreated = 0;

  #hold(t: TensorLike): DeviceTensor {
    if (!t) throw new Error('emulated device: no such output');
    this.liveTensors++;
    let disposed = false;
    const held: DeviceTensor = {
      location: 'device',
      type: t.type,
      dims: t.dims,
      dispose: () => {
        if (disposed) throw new Error('emulated device: disposed twice');
        disposed = true;
        this.liveTensors--;
        this.#data.delete(held);
      },
    };
    this.#data.set(held, t);
    return held;
  }

  #unwrap(feeds: DeviceFeeds): Feeds {
    const out: Feeds = {};
    for (const [name, t] of Object.entries(feeds)) {
      if (!isDeviceTensor(t)) {
        out[name] = t;
        continue;
      }
      const data = this.#data.get(t);
      if (!data) throw new Error(`emulated device: input "${name}" is disposed or not this device's`);
      out[name] = data;
    }
    return out;
  }
}

async function ortSession(model: string | Uint8Array): Promise<SessionLike & { calls: number }> {
  const session = typeof model === 'string' ? await ort.InferenceSession.create(new URL(model, DIR).pathname) : await ort.InferenceSession.create(model);
  const s = {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    ...describeInputs(session.inputMetadata),
    calls: 0,
    async run(feeds: Feeds): Promise<Feeds> {
      s.calls++;
      const inputs: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type as 'float32', t.data as Float32Array, t.dims);
      const out = await session.run(inputs);
      const result: Feeds = {};
      for (const [name, t] of Object.entries(out)) result[name] = { type: t.type, dims: t.dims, data: t.data as TensorLike['data'] };
      return result;
    },
  };
  return s;
}

let assets: TextToImageAssets;
let cpu: Record<'text_encoder' | 'unet' | 'unetBatch1' | 'unetFp16' | 'vae', SessionLike>;

beforeAll(async () => {
  ort.env.logLevel = 'error';
  assets = await readTextToImageAssets(async (path) => {
    try {
      return readFileSync(new URL(path, DIR));
    } catch {
      return null;
    }
  });
  const [text_encoder, unet, unetBatch1, unetFp16, vae] = await Promise.all(
    ['text_encoder', 'unet', 'unet-batch1-int64', 'unet-fp16', 'vae_decoder'].map((m) => ortSession(`${m}/model.onnx`)),
  );
  cpu = { text_encoder, unet, unetBatch1, unetFp16, vae };
});
afterAll(() => {});

function onDevice(device: EmulatedDevice, unet: SessionLike = cpu.unet): TextToImageParts {
  return { ...assets, text_encoder: device.place(cpu.text_encoder), unet: device.place(unet), vae_decoder: device.place(cpu.vae) };
}

const OPTIONS: GenerateOptions = { prompt: 'a photo of a red cat', seed: 7, steps: 4, guidanceScale: 3, scheduler: 'euler', width: 64, height: 48 };

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

describe('the loop on a device', () => {
  const cases: [string, Partial<GenerateOptions>, keyof typeof cpu][] = [
    ['euler, guidance as one batch-2 call', {}, 'unet'],
    ['euler-ancestral (fresh noise each step)', { scheduler: 'euler-ancestral' }, 'unet'],
    ['dpm++2m (the last step\'s x₀ kept on the device)', { scheduler: 'dpm++2m', steps: 6 }, 'unet'],
    ['ddim (clip_sample)', { scheduler: 'ddim' }, 'unet'],
    ['lcm (re-noising, no noise after the last step)', { scheduler: 'lcm' }, 'unet'],
    ['guidance 1: one batch-1 call per step', { guidanceScale: 1 }, 'unet'],
    ['a UNet fixed at batch 1 with int64 timesteps: two calls per step', {}, 'unetBatch1'],
    ['an fp16 UNet: casts on the device', { scheduler: 'dpm++2m' }, 'unetFp16'],
  ];
  for (const [label, over, unet] of cases) {
    it(`${label}: the CPU loop's image, one readback, nothing held after`, async () => {
      const options = { ...OPTIONS, ...over };
      const expected = await generateImage({ ...assets, text_encoder: cpu.text_encoder, unet: cpu[unet], vae_decoder: cpu.vae }, options);
      expect(expected.deviceResident).toBe(false);
      const device = new EmulatedDevice();
      const got = await generateImage(onDevice(device, cpu[unet]), options);
      expect(got.deviceResident).toBe(true);
      expect(got.unetCalls).toBe(expected.unetCalls);
      expect(device.readbacks).toBe(1);
      expect(device.liveTensors).toBe(0);
      expect(maxDiff(got.image.data, expected.image.data)).toBeLessThanOrEqual(unet === 'unetFp16' ? 2 : 1);
    });
  }

  it('matches the torch reference from fixed latents', async () => {
    const device = new EmulatedDevice();
    const r = await generateImage(onDevice(device), { ...OPTIONS, prompt: ref.prompt, latents: Float32Array.from(ref.noise) });
    const expected = Uint8Array.from(atob(ref.image_rgba_base64), (c) => c.charCodeAt(0));
    expect(maxDiff(r.image.data, expected)).toBeLessThanOrEqual(1);
  });

  it('every call goes through hooks.run: the encoders keep their states, the steps run as scheduler graphs, the VAE is read', async () => {
    const device = new EmulatedDevice();
    const calls: string[] = [];
    const r = await generateImage(onDevice(device), OPTIONS, {
      run: (role, session, feeds, keep, read) => {
        calls.push(`${role} keep=${keep?.join(',')} read=${read?.join(',') ?? ''}`);
        return session.runDevice!(feeds, keep!, read);
      },
    });
    expect(r.deviceResident).toBe(true);
    expect(calls).toEqual([
      'text_encoder keep=last_hidden_state read=',
      'text_encoder keep=last_hidden_state read=',
      'conditioning keep=y read=',
      'scheduler keep=x_next,model_in read=',
      ...Array.from({ length: 3 }, () => ['unet keep=out_sample read=', 'scheduler keep=x_next,model_in read=']).flat(),
      'unet keep=out_sample read=',
      'scheduler keep=vae_in read=',
      'vae_decoder keep= read=sample',
    ]);
    // The graphs' sessions are made once per device and structure, then reused by later images.
    const made = device.graphsCreated;
    await generateImage(onDevice(device), OPTIONS);
    expect(device.graphsCreated).toBe(made);
  });

  it('an abort between steps frees everything it held; the next image is unaffected', async () => {
    const device = new EmulatedDevice();
    const controller = new AbortController();
    const error = await generateImage(onDevice(device), { ...OPTIONS, signal: controller.signal, onStep: (e) => e.step === 2 && controller.abort() }).catch((e: unknown) => e);
    expect(isFuseloadError(error) && error.code).toBe('aborted');
    expect(device.liveTensors).toBe(0);
    expect(device.readbacks).toBe(0);
    const clean = await generateImage(onDevice(device), OPTIONS);
    const expected = await generateImage(onDevice(new EmulatedDevice()), OPTIONS);
    expect(clean.image.data).toEqual(expected.image.data);
    expect(device.liveTensors).toBe(0);
  });

  it('a session that fails mid-loop frees everything too', async () => {
    const device = new EmulatedDevice();
    let calls = 0;
    const failing: SessionLike = {
      ...cpu.unet,
      run: async (feeds) => {
        if (++calls === 3) throw new Error('device lost');
        return cpu.unet.run(feeds);
      },
    };
    await expect(generateImage(onDevice(device, failing), OPTIONS)).rejects.toThrow('device lost');
    expect(device.liveTensors).toBe(0);
  });

  it('falls back to the CPU loop where a step is not linear (dynamic thresholding), or the VAE is on another device', async () => {
    const device = new EmulatedDevice();
    const thresholded = await generateImage({ ...onDevice(device), schedulerConfig: { ...(assets.schedulerConfig as object), _class_name: 'DDIMScheduler', thresholding: true } }, { ...OPTIONS, scheduler: 'ddim' });
    expect(thresholded.deviceResident).toBe(false);
    const split = await generateImage({ ...onDevice(device), vae_decoder: new EmulatedDevice().place(cpu.vae) }, OPTIONS);
    expect(split.deviceResident).toBe(false);
    const off = await generateImage(onDevice(device), { ...OPTIONS, deviceResident: false });
    expect(off.deviceResident).toBe(false);
    expect(device.liveTensors).toBe(0);
  });

  it('a text encoder on the CPU: its states go up once, the rest stays resident', async () => {
    const device = new EmulatedDevice();
    const r = await generateImage({ ...onDevice(device), text_encoder: cpu.text_encoder }, OPTIONS);
    expect(r.deviceResident).toBe(true);
    expect(device.readbacks).toBe(1);
    expect(device.liveTensors).toBe(0);
  });
});

describe('SDXL on a device', () => {
  const L = 77;
  const f32 = (dims: number[], fill: (i: number) => number = () => 0): TensorLike => ({ type: 'float32', dims, data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => fill(i)) });
  function fake(outputNames: string[], make: (feeds: Feeds) => Feeds, extra: Partial<SessionLike> = {}): SessionLike & { seen: Feeds[] } {
    const seen: Feeds[] = [];
    return { inputNames: [], outputNames, seen, run: async (feeds) => (seen.push(feeds), make(feeds)), ...extra };
  }

  it('joins both encoders\' penultimate states and batches zeros for the negative, all on the device', async () => {
    const te1 = fake(['last_hidden_state', 'hidden_states.0', 'hidden_states.1', 'hidden_states.2'], () => ({
      last_hidden_state: f32([1, L, 2], () => 9),
      'hidden_states.0': f32([1, L, 2], () => 9),
      'hidden_states.1': f32([1, L, 2], (i) => 1 + (i % 2)),
      'hidden_states.2': f32([1, L, 2], () => 9),
    }), { inputNames: ['input_ids'] });
    const te2 = fake(['text_embeds', 'hidden_states.0', 'hidden_states.1', 'hidden_states.2'], () => ({
      text_embeds: f32([1, 3], (i) => 10 + i),
      'hidden_states.0': f32([1, L, 3], () => 9),
      'hidden_states.1': f32([1, L, 3], (i) => 3 + (i % 3)),
      'hidden_states.2': f32([1, L, 3], () => 9),
    }), { inputNames: ['input_ids'] });
    const unet = fake(['out_sample'], (feeds) => ({ out_sample: f32(feeds.sample.dims as number[]) }), { inputNames: ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'] });
    const vae = fake(['sample'], (feeds) => ({ sample: f32([1, 3, feeds.latent_sample.dims[2] * 8, feeds.latent_sample.dims[3] * 8]) }), { inputNames: ['latent_sample'] });
    const device = new EmulatedDevice();
    const r = await generateImage(
      { text_encoder: device.place(te1), text_encoder_2: device.place(te2), unet: device.place(unet), vae_decoder: device.place(vae), tokenizer: assets.tokenizer, schedulerConfig: assets.schedulerConfig },
      { prompt: 'a red cat', steps: 2, width: 64, height: 32, guidanceScale: 5, seed: 1 },
    );
    expect(r.deviceResident).toBe(true);
    expect(device.readbacks).toBe(1);
    expect(device.liveTensors).toBe(0);
    const feed = unet.seen[0];
    expect(feed.encoder_hidden_states.dims).toEqual([2, L, 5]);
    const ehs = feed.encoder_hidden_states.data as Float32Array;
    expect(Array.from(ehs.subarray(0, 5))).toEqual([0, 0, 0, 0, 0]);
    expect(Array.from(ehs.subarray(L * 5, L * 5 + 10))).toEqual([1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
    expect(Array.from(feed.text_embeds.data as Float32Array)).toEqual([0, 0, 0, 10, 11, 12]);
    expect(Array.from(feed.time_ids.data as Float32Array)).toEqual([32, 64, 0, 0, 32, 64, 32, 64, 0, 0, 32, 64]);
  });
});

describe('the step graph is the scheduler\'s recipe', () => {
  const n = 24;
  const dims = [1, 4, 2, 3];
  const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 3);
  const uncond = Float32Array.from({ length: n }, (_, i) => Math.cos(i));
  const condOut = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.7) * 1.5);
  const h = Float32Array.from({ length: n }, (_, i) => 0.1 * i - 1);
  const noise = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.3));
  const g = 3;
  const both = new Float32Array(2 * n);
  both.set(uncond);
  both.set(condOut, n);
  const eps = uncond.map((u, i) => u + g * (condOut[i] - u));
  const t = (data: Float32Array, d: number[]) => new ort.Tensor('float32', data, d);
  const close = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
    expect(a.length, what).toBe(b.length);
    for (let i = 0; i < b.length; i++) expect(Math.abs(a[i] - b[i]), `${what}[${i}]`).toBeLessThan(1e-5 * (1 + Math.abs(b[i])));
  };

  async function run(spec: StepGraphSpec, step: LinearStep, values: { nextScale?: number; outScale?: number }) {
    const graph = stepGraph(spec);
    const session = await ort.InferenceSession.create(graph.graph);
    const feeds: Record<string, ort.Tensor> = { [STEP.sample]: t(x, dims), [STEP.unet[0]]: t(both, [2, 4, 2, 3]), [STEP.history(0)]: t(h, dims), [STEP.noise]: t(noise, dims) };
    for (const [name, f] of Object.entries(stepInputs(graph, { step, guidance: g, ...values }))) feeds[name] = t(f.data, f.dims);
    const out = await session.run(feeds);
    await session.release();
    return { graph, out };
  }

  it('with clip and a kept data prediction: guidance, clip, history, noise and the next input, as applyLinearStep computes them', async () => {
    const step: LinearStep = { denoise: { sample: 0.8, model: -0.6 }, clip: 1, sample: 0.9, denoised: 0.3, model: 0.05, history: [-0.2], noise: 0.1 };
    const spec: StepGraphSpec = { unet: 'pair', unetType: 'float32', history: 1, noise: true, clip: true, keepSample: true, keepDenoised: true, next: { batch: 2, type: 'float32' } };
    const { graph, out } = await run(spec, step, { nextScale: 0.5 });
    expect(graph.denoises).toBe(true);
    const cpuStep = applyLinearStep(step, x, eps, [h], noise);
    close(out[STEP.out.sample].data as Float32Array, cpuStep.next, 'x_next');
    close(out[STEP.out.denoised].data as Float32Array, cpuStep.denoised, 'denoised');
    expect(out[STEP.out.next].dims).toEqual([2, 4, 2, 3]);
    const next = out[STEP.out.next].data as Float32Array;
    close(next.subarray(0, n), cpuStep.next.map((v) => v * 0.5), 'model_in[0]');
    close(next.subarray(n), cpuStep.next.map((v) => v * 0.5), 'model_in[1]');
  });

  it('folded (no clip, nothing kept), the last step: the VAE input is x\' / scaling factor', async () => {
    const step: LinearStep = { denoise: { sample: 1, model: -2.5 }, sample: 0.4, denoised: 0.6, model: 0, history: [0.3], noise: 0.2 };
    const spec: StepGraphSpec = { unet: 'pair', unetType: 'float32', history: 1, noise: true, clip: false, keepSample: false, keepDenoised: false, vae: { type: 'float32' } };
    const { graph, out } = await run(spec, step, { outScale: 0.18215 });
    expect(graph.denoises).toBe(false);
    close(out[STEP.out.vae].data as Float32Array, applyLinearStep(step, x, eps, [h], noise).next.map((v) => v / 0.18215), 'vae_in');
  });

  it('encodes graphs onnxruntime loads as they are: concat with a cast, every step layout', async () => {
    const concat = await ort.InferenceSession.create(concatGraph(['float32', 'float16'], 3, 0, 'float32'));
    expect(concat.inputNames).toEqual(['t0', 't1']);
    await concat.release();
    for (const unet of ['none', 'one', 'first', 'pair', 'two'] as const) {
      for (const unetType of ['float32', 'float16'] as const) {
        const spec: StepGraphSpec = { unet, unetType, history: 0, noise: false, clip: false, keepSample: true, keepDenoised: false, next: { batch: 2, type: unetType } };
        const session = await ort.InferenceSession.create(stepGraph(spec).graph);
        expect([...session.outputNames].sort()).toEqual([STEP.out.next, STEP.out.sample]);
        await session.release();
      }
    }
  });
});
