/** A build-cache hit reports exactly what the cold build reported (mergedTensors included), but `cached`. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { build } from '../../tools/build/build.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { fixtureModel, LAYERS, loraFactors, loraFile, writeModel } from '../fixtures/models.ts';

const work = await mkdtemp(join(tmpdir(), 'fuseload-cache-report-'));
afterAll(() => rm(work, { recursive: true, force: true }));

it('the report of a cache hit equals the cold build\'s', async () => {
  const base = await writeModel(work, 'model.onnx', fixtureModel());
  const lora = join(work, 'lora.safetensors');
  await writeFile(lora, loraFile('kohya', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, 7 + i)])), 1));
  const store = new DiskStore(join(work, 'store'));
  const options = { base, loras: [{ path: lora, scale: 0.5 }], name: 'm', store };
  const cold = await build({ ...options, out: join(work, 'a') });
  const hit = await build({ ...options, out: join(work, 'b') });
  expect(cold.cached).toBe(false);
  expect(hit.cached).toBe(true);
  expect(cold.mergedTensors).toBe(LAYERS.length);
  const strip = (r: typeof cold) => ({ ...r, cached: undefined, manifest: undefined });
  expect(strip(hit)).toEqual(strip(cold));
});
