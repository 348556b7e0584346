/**
 * Streaming build: a large .onnx with inline weights is read without them (tools/onnx/skeleton.ts)
 * and each tensor is read when it is written. Forcing that path on small models must give the
 * very same artifact as decoding the model whole.
 */
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { build } from '../../tools/build/build.ts';
import { fixtureModel, LAYERS, loraFactors, loraFile, writeModel } from '../fixtures/models.ts';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-stream-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('an inline model read without its weights', () => {
  for (const dtype of ['float32', 'float16'] as const) {
    it(`${dtype}: gives the artifact a whole decode gives, LoRA merge included`, async () => {
      const base = await writeModel(join(work, dtype), 'model.onnx', fixtureModel({ dtype }));
      const lora = join(work, dtype, 'lora.safetensors');
      await writeFile(lora, loraFile('kohya', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, 40 + i)])), 1));
      const common = { base, loras: [{ path: lora, scale: 0.6 }], name: 'm', store: null };
      const whole = await build({ ...common, out: join(work, dtype, 'whole') });
      const streamed = await build({ ...common, out: join(work, dtype, 'streamed'), streamInlineAbove: 0 });
      expect(streamed.fingerprint).toBe(whole.fingerprint);
      expect(streamed.mergedTensors).toBe(LAYERS.length);
      expect(await readFile(streamed.manifest)).toEqual(await readFile(whole.manifest));
    });
  }

  it('a truncated inline model is one line naming the file', async () => {
    const base = await writeModel(join(work, 'cut'), 'model.onnx', fixtureModel());
    await truncate(base, 300);
    await expect(build({ base, name: 'm', out: join(work, 'cut', 'out'), store: null, streamInlineAbove: 0 })).rejects.toThrow(/^model\.onnx: not a valid ONNX model \(.*\)$/);
  });
});
