/**
 * `fuseload sample`: a procedural model that runs in onnxruntime, LoRAs that visibly change
 * its image, and a build of it that is byte-identical twice.
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
import { writeSample } from '../../tools/sample/sample.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-sample-'));
  await writeSample(join(dir, 'sample'));
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

describe('sample model', () => {
  it('writes the model and three LoRAs, deterministically', async () => {
    await writeSample(join(dir, 'again'));
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
