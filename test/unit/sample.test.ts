/**
 * `fuseload sample`: the trained text-to-image pipeline (tools/sample/pipeline) copied whole
 * with its LoRAs, ready for `fuseload build --base <dir>`; and the procedural graph sample
 * (tools/sample/graph-sample.ts) the graph path's tests and benches use: a model that runs in
 * onnxruntime, LoRAs that visibly change its image, and a build of it that is byte-identical twice.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { decodeManifest, schema1 } from '../../common/manifest.ts';
import { matchLora, parsePeftConfig, readLora } from '../../common/lora/index.ts';
import { imageToRgba, sampleFeeds } from '../../common/sample-input.ts';
import { build } from '../../tools/build/build.ts';
import { writeGraphSample } from '../../tools/sample/graph-sample.ts';
import { examplePrompts, SAMPLE_PIPELINE_DIR, writeSample } from '../../tools/sample/sample.ts';
import { runCli } from '../support/cli.ts';

/** The pipeline `fuseload sample` copies; FUSELOAD_SAMPLE_FROM points it elsewhere, as for `npm start`. */
const FROM = process.env.FUSELOAD_SAMPLE_FROM || SAMPLE_PIPELINE_DIR;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-sample-'));
  await writeGraphSample(join(dir, 'sample'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function image(modelPath: string, seed = 1, size = 64): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(modelPath);
  const feeds = sampleFeeds({ seed, width: size, height: size });
  const out = await session.run({ latent: new ort.Tensor('float32', feeds.latent.data as Float32Array, feeds.latent.dims) });
  await session.release();
  expect(out.image.dims).toEqual([1, 3, size, size]);
  return out.image.data as Float32Array;
}

function meanAbsDiff(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
  return s / a.length;
}

async function builtGraph(out: string, manifestPath: string): Promise<string> {
  const m = schema1(await decodeManifest(new Uint8Array(await readFile(manifestPath)), 'm'));
  return join(out, 'blobs', 'sha256', digestHex(m.graph.digest));
}

describe('the graph sample (tests and benches)', () => {
  it('writes the model and three LoRAs, deterministically', async () => {
    await writeGraphSample(join(dir, 'again'));
    for (const f of ['model.onnx', 'warm.safetensors', 'cool.safetensors', 'cool.adapter_config.json', 'detail.safetensors']) {
      expect(await readFile(join(dir, 'again', f))).toEqual(await readFile(join(dir, 'sample', f)));
    }
  });

  it('generates an RGB image in [0, 1] with dynamic size that depends on the seed', async () => {
    const model = join(dir, 'sample', 'model.onnx');
    const a = await image(model, 1);
    expect(Math.min(...a)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...a)).toBeLessThanOrEqual(1);
    expect(Math.max(...a) - Math.min(...a)).toBeGreaterThan(0.5); // not a flat colour
    expect(meanAbsDiff(a, await image(model, 2))).toBeGreaterThan(0.005);
    expect((await image(model, 1, 32)).length).toBe(3 * 32 * 32);
    const rgba = imageToRgba({ type: 'float32', dims: [1, 3, 64, 64], data: a });
    expect(rgba).toMatchObject({ width: 64, height: 64 });
    expect(rgba.data[0]).toBe(Math.round(a[0] * 255));
    expect(rgba.data[1]).toBe(Math.round(a[64 * 64] * 255));
    expect(rgba.data[3]).toBe(255);
  });

  it('builds twice to the same fingerprint; each LoRA matches every key and visibly changes the image', async () => {
    const s = join(dir, 'sample');
    const base = join(s, 'model.onnx');
    const plain = await build({ base, name: 'sample', out: join(dir, 'plain'), store: null });
    const baseImage = await image(await builtGraph(join(dir, 'plain'), plain.manifest));
    expect(baseImage).toEqual(await image(base));
    for (const [lora, format] of [['warm', 'kohya'], ['cool', 'peft'], ['detail', 'diffusers']] as const) {
      const opts = { base, loras: [{ path: join(s, `${lora}.safetensors`), scale: 1 }], name: 'sample', strict: true, store: null };
      const one = await build({ ...opts, out: join(dir, `${lora}-1`) });
      const two = await build({ ...opts, out: join(dir, `${lora}-2`) });
      expect(two.fingerprint).toBe(one.fingerprint);
      expect(one.loras[0]).toMatchObject({ format, unmatched: 0 });
      const changed = await image(await builtGraph(join(dir, `${lora}-1`), one.manifest));
      expect(meanAbsDiff(changed, baseImage), lora).toBeGreaterThan(0.02);
    }
  });

  it('a runtime can map each LoRA onto the tensor index of a clean artifact, as the build did', async () => {
    const s = join(dir, 'sample');
    const plain = await build({ base: join(s, 'model.onnx'), name: 'sample', out: join(dir, 'plain-index'), store: null });
    const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(plain.manifest)), 'm'));
    const config = parsePeftConfig(JSON.parse(await readFile(join(s, 'cool.adapter_config.json'), 'utf8')), 'cool.adapter_config.json');
    for (const lora of ['warm', 'cool', 'detail']) {
      const bytes = new Uint8Array(await readFile(join(s, `${lora}.safetensors`)));
      const overlay = matchLora(readLora(bytes, lora, lora === 'cool' ? config : undefined), manifest.tensors, lora);
      const built = await build({ base: join(s, 'model.onnx'), loras: [{ path: join(s, `${lora}.safetensors`), scale: 1 }], name: 'sample', out: join(dir, `index-${lora}`), store: null });
      expect(overlay.matchedKeys).toEqual(built.loras[0].matchedKeys);
      expect(overlay.unmatchedKeys).toEqual([]);
      for (const { target } of overlay.applications) expect(target.layout).not.toBe('none');
    }
  });

  it('sampleFeeds is seeded and refuses sizes the model cannot pool', () => {
    const a = sampleFeeds({ seed: 7, width: 8, height: 4 }).latent;
    expect(a.dims).toEqual([1, 8, 4, 8]);
    expect(sampleFeeds({ seed: 7, width: 8, height: 4 }).latent.data).toEqual(a.data);
    expect(sampleFeeds({ seed: 8, width: 8, height: 4 }).latent.data).not.toEqual(a.data);
    expect(() => sampleFeeds({ seed: 1, width: 10, height: 8 })).toThrow(/multiples of 4/);
  });
});

describe('the sample pipeline (`fuseload sample`, `npm start`)', () => {
  it('copies the diffusers ONNX directory and its three LoRAs byte for byte', async () => {
    const out = join(dir, 'pipeline');
    const s = await writeSample(out, { from: FROM });
    for (const f of ['model_index.json', 'text_encoder/model.onnx', 'unet/model.onnx', 'vae_decoder/model.onnx', 'scheduler/scheduler_config.json', 'sample_palette.json']) {
      expect(s.files).toContain(f);
    }
    // Buffer.equals: a deep equality over megabytes of weights would take half a minute.
    for (const f of s.files) expect((await readFile(join(out, f))).equals(await readFile(join(FROM, f))), f).toBe(true);
    expect(s.loras.map((l) => [l.name, l.format])).toEqual([['outline', 'kohya'], ['pastel', 'peft'], ['stripes', 'diffusers']]);
    expect(s.files).toContain('loras/pastel.adapter_config.json');
    expect(examplePrompts(s.palette)[0]).toBe('a red circle on a blue background');
  });

  it('builds as a text-to-image pipeline, and every LoRA lands with no key left over', async () => {
    const src = join(dir, 'pipeline-build');
    const s = await writeSample(src, { from: FROM });
    const base = await build({ base: src, name: 'sample', out: join(dir, 'pipeline-out'), store: null });
    expect(base).toMatchObject({ schema: 'fuseload.pipeline/2', kind: 'text-to-image' });
    expect(Object.keys(base.components)).toEqual(expect.arrayContaining(['text_encoder', 'unet', 'vae_decoder']));
    expect(base.assets).toEqual(expect.arrayContaining(['model_index.json', 'scheduler/scheduler_config.json']));
    for (const l of s.loras) {
      const merged = await build({ base: src, loras: [{ path: join(src, l.file), scale: 1 }], name: 'sample', out: join(dir, 'pipeline-out'), store: null, strict: true });
      expect(merged.loras[0], l.name).toMatchObject({ format: l.format, unmatched: 0 });
      expect(merged.loras[0].matched, l.name).toBeGreaterThan(0);
      expect(merged.fingerprint).not.toBe(base.fingerprint);
    }
  });

  it('refuses a directory without the pipeline, and one inside the pipeline, in one line each', async () => {
    await expect(writeSample(join(dir, 'x'), { from: join(dir, 'nothing-here') })).rejects.toThrow(/nothing-here: the trained sample pipeline is not there \(no model_index\.json\)/);
    await expect(writeSample(join(FROM, 'copy'), { from: FROM })).rejects.toThrow(/is inside the sample pipeline itself/);
  });

  it('`fuseload sample <dir>` writes the committed pipeline and says what it is and what to run next', async () => {
    const out = join(dir, 'cli');
    const r = await runCli(['sample', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${out}: wrote the sample pipeline (`);
    expect(r.stdout).toMatch(/loras\/outline\.safetensors \(kohya\)/);
    expect(r.stdout).toContain(`Next: fuseload build --base ${out} --name sample`);
    expect((await readFile(join(out, 'unet', 'model.onnx_data'))).equals(await readFile(join(SAMPLE_PIPELINE_DIR, 'unet', 'model.onnx_data')))).toBe(true);
  });
});
