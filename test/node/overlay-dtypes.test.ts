/**
 * Load-time overlays on fp16 and bf16 weights and on every layer kind a LoRA can land on
 * (MatMul, MatMul via Transpose, Gemm transB 0/1, Conv 1×1 and 3×3): the test fixture model,
 * built by `fuseload build` with and without the LoRA, against the overlay on the base, both
 * through the JavaScript math and through the onnxruntime merge graph.
 */
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex, sha256 } from '../../common/digest.ts';
import { createLoader } from '../../common/loader/index.ts';
import type { Feeds } from '../../common/pipeline.ts';
import { MemoryStore } from '../../common/store.ts';
import { build } from '../../tools/build/build.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { BATCH, fixtureModel, IMAGE, LAYERS, type LoraFactors, loraFactors, loraFile, random, type WeightDtype, writeModel } from '../fixtures/models.ts';
import { type Origin, startOrigin } from '../support/origin.ts';

let work: string;
const origins: Origin[] = [];
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-overlay-dtypes-'));
});
afterAll(async () => {
  for (const o of origins) await o.close();
  await rm(work, { recursive: true, force: true });
});

const x = random(11, BATCH * 16);
const img = random(12, 4 * IMAGE * IMAGE);
const feeds: Feeds = { x: { type: 'float32', dims: [BATCH, 16], data: x }, img: { type: 'float32', dims: [1, 4, IMAGE, IMAGE], data: img } };

async function runFile(graphFile: string): Promise<Float32Array[]> {
  const session = await ort.InferenceSession.create(graphFile);
  const out = await session.run({ x: new ort.Tensor('float32', x, [BATCH, 16]), img: new ort.Tensor('float32', img, [1, 4, IMAGE, IMAGE]) });
  await session.release();
  return LAYERS.map((_, i) => out[`y${i}`].data as Float32Array);
}

function maxDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let d = 0;
  a.forEach((v, i) => {
    for (let j = 0; j < v.length; j++) d = Math.max(d, Math.abs(v[j] - b[i][j]));
  });
  return d;
}

const TOLERANCE: Record<WeightDtype, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1.5e-2 };

describe('overlays on every layer kind, fp16 and bf16 weights', () => {
  it.each(['float16', 'bfloat16'] as WeightDtype[])('%s: overlay on the base = `fuseload build` merge', async (dtype) => {
    const dir = join(work, dtype);
    const baseModel = await writeModel(dir, 'base.onnx', fixtureModel({ dtype }));
    const factors = new Map<string, LoraFactors>(LAYERS.map((l, i) => [l.module, loraFactors(l, 3, 200 + i)]));
    const loraPath = join(dir, 'lora.safetensors');
    await writeFile(loraPath, loraFile('kohya', factors, 2));
    const scale = 0.9;
    const base = await build({ base: baseModel, name: 'fixture', out: join(dir, 'base'), store: null, shardSize: 1024 });
    const merged = await build({ base: baseModel, loras: [{ path: loraPath, scale }], name: 'fixture', out: join(dir, 'merged'), store: null, shardSize: 1024 });
    const loraBytes = new Uint8Array(await readFile(loraPath));
    const digest = await sha256(loraBytes);
    await copyFile(loraPath, join(dir, 'base', 'blobs', 'sha256', digestHex(digest)));
    const origin = await startOrigin({ root: join(dir, 'base') });
    origins.push(origin);

    const want = await runFile(join(dir, 'merged', 'blobs', 'sha256', digestHex(merged.graph.digest)));
    const baseOut = await runFile(join(dir, 'base', 'blobs', 'sha256', digestHex(base.graph.digest)));
    for (let i = 0; i < LAYERS.length; i++) expect(maxDiff([want[i]], [baseOut[i]])).toBeGreaterThan(5 * TOLERANCE[dtype]);

    for (const ortMinElements of [undefined, 0]) {
      const warnings: string[] = [];
      const loader = createLoader({ engine: new OrtNodeEngine(), store: new MemoryStore(), warn: (m) => warnings.push(m), overlayOrtMinElements: ortMinElements });
      const p = await loader.loadPipeline({ origin: origin.url, model: 'fixture', fingerprint: base.fingerprint, device: 'cpu', loras: [{ digest, scale }] });
      expect(p.info.overlays).toEqual([{ digest, scale, matched: merged.loras[0].matched, components: { model: merged.loras[0].matched } }]);
      const out = await p.run(feeds);
      const got = LAYERS.map((_, i) => out[`y${i}`].data as Float32Array);
      // bf16 always merges in JavaScript (as in the build); fp16 through onnxruntime when asked.
      expect(maxDiff(got, want)).toBeLessThan(TOLERANCE[dtype]);
      expect(warnings).toEqual([]);
      await p.dispose();
    }
  });
});
