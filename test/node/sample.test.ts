import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobKey } from '../../common/keys.ts';
import { sampleFeeds } from '../../common/sample-input.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { type BuiltSample, buildSampleArtifact } from '../support/node-sample.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';

let work: string;
let plain: BuiltSample;
let merged: BuiltSample;
let origin: CountingOrigin;
let mergedOrigin: CountingOrigin;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-node-sample-'));
  plain = await buildSampleArtifact(join(work, 'plain'));
  merged = await buildSampleArtifact(join(work, 'merged'), { name: 'sample-warm', loras: [{ file: 'warm.safetensors', scale: 0.8 }] });
  origin = await startCountingOrigin(plain.dir);
  mergedOrigin = await startCountingOrigin(merged.dir);
});

afterAll(async () => {
  await origin.close();
  await mergedOrigin.close();
  await rm(work, { recursive: true, force: true });
});

/** onnxruntime-node on the built graph file itself: its shards are its siblings in blobs/sha256/. */
async function direct(dir: string, graph: string, feeds: ReturnType<typeof sampleFeeds>): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(join(dir, blobKey(graph as `sha256:${string}`)), { executionProviders: ['cpu'] });
  try {
    const latent = feeds.latent;
    const out = await session.run({ latent: new ort.Tensor('float32', latent.data as Float32Array, latent.dims) });
    return out.image.data as Float32Array;
  } finally {
    await session.release();
  }
}

describe('Node runtime on the sample model', () => {
  it.each([
    ['the base artifact', () => ({ art: plain, url: origin.url, model: 'sample' })],
    ['a LoRA-merged artifact', () => ({ art: merged, url: mergedOrigin.url, model: 'sample-warm' })],
  ])('%s: the pipeline output equals a direct onnxruntime-node run on the built files', async (_, pick) => {
    const { art, url, model } = pick();
    const store = join(work, `store-${model}`);
    const rt = createNodeRuntime({ storeRoot: store, warn: () => {} });
    const p = await rt.loadPipeline({ origin: url, model, tag: 'latest' });
    await rt.flush();
    expect(p.info.fingerprint).toBe(art.fingerprint);
    expect(p.info.provider).toBe('cpu');
    const feeds = sampleFeeds({ seed: 11, width: 64, height: 48 });
    const ours = (await p.run(feeds)).image;
    const theirs = await direct(art.dir, art.graph, feeds);
    expect(ours.dims).toEqual([1, 3, 48, 64]);
    expect(ours.data).toEqual(theirs);
    const values = Array.from(ours.data as Float32Array);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThanOrEqual(1);
    expect(new Set(values.map((v) => Math.round(v * 255))).size).toBeGreaterThan(32);
    await p.dispose();
  });

  it('the merged LoRA changes the image (the two artifacts are not the same model)', async () => {
    const feeds = sampleFeeds({ seed: 11, width: 32, height: 32 });
    const a = await direct(plain.dir, plain.graph, feeds);
    const b = await direct(merged.dir, merged.graph, feeds);
    const meanAbs = a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / a.length;
    expect(meanAbs).toBeGreaterThan(1e-3);
  });
});
