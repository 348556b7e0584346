/**
 * The whole loop on the committed sample pipeline, against an independent PyTorch implementation
 * of the same pipeline (tools/sample/train/reference.py: torch modules and its own Euler and DDIM,
 * not our code, not the ONNX graphs): with the reference's initial latents, our final latents and
 * image must equal its own (test/fixtures/sample-reference, committed, so CI needs no torch).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { build } from '../../tools/build/build.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { startCountingOrigin, type CountingOrigin } from '../support/node-origin.ts';
import { writeTag } from '../support/tag.ts';

const SAMPLE = new URL('../../tools/sample/pipeline/', import.meta.url).pathname;
const REF = new URL('../fixtures/sample-reference/', import.meta.url).pathname;
const reference = JSON.parse(await readFile(join(REF, 'reference.json'), 'utf8'));
type Result = { latents: { file: string }; image: { file: string; shape: number[] } };
interface Case {
  prompt: string;
  init_latents: { file: string };
  results: Record<'euler' | 'ddim', Result>;
}

const f32 = async (file: string) => {
  const b = await readFile(join(REF, file));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

let work: string;
let origin: CountingOrigin;
let fingerprint: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-sample-ref-'));
  const dir = join(work, 'origin');
  fingerprint = (await build({ base: SAMPLE, name: 'sample', out: dir, store: null })).fingerprint;
  await writeTag(dir, 'sample', fingerprint);
  origin = await startCountingOrigin(dir);
});
afterAll(async () => {
  await origin?.close();
  await rm(work, { recursive: true, force: true });
});

describe('generate() equals an independent torch implementation of the loop', () => {
  it("without width or height it makes the pipeline's native size (info.imageSize): the torch reference's", async () => {
    const rt = createNodeRuntime({ storeRoot: join(work, 'store-native'), warn: () => {} });
    const p = await rt.loadPipeline({ origin: origin.url, model: 'sample', fingerprint });
    const c = (reference.cases as Case[])[0];
    const [, height, width] = c.results.euler.image.shape;
    expect(p.info.imageSize).toBe(width);
    const { image } = await p.generate({ prompt: c.prompt, steps: 2, latents: await f32(c.init_latents.file) });
    expect([image.width, image.height]).toEqual([width, height]);
    await p.dispose();
  });

  for (const scheduler of ['euler', 'ddim'] as const) {
    it(`${scheduler}, ${reference.num_inference_steps} steps, guidance ${reference.guidance_scale}`, async () => {
      const rt = createNodeRuntime({ storeRoot: join(work, `store-${scheduler}`), warn: () => {} });
      const p = await rt.loadPipeline({ origin: origin.url, model: 'sample', fingerprint });
      for (const c of reference.cases as Case[]) {
        let last: Float32Array | undefined;
        const { image } = await p.generate({
          prompt: c.prompt,
          negativePrompt: reference.negative_prompt,
          steps: reference.num_inference_steps,
          guidanceScale: reference.guidance_scale,
          scheduler,
          latents: await f32(c.init_latents.file),
          width: 64,
          height: 64,
          onStep: (e) => void (last = e.latents && Float32Array.from(e.latents)),
        });
        const want = await f32(c.results[scheduler].latents.file);
        let worst = 0;
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(last![i] - want[i]) / (1 + Math.abs(want[i])));
        expect(worst, `${c.prompt}: final latents`).toBeLessThan(2e-3);
        // The reference image is float in [-1, 1], CHW; ours is RGBA bytes.
        const ref = await f32(c.results[scheduler].image.file);
        const plane = 64 * 64;
        let maxByte = 0;
        for (let ch = 0; ch < 3; ch++) {
          for (let i = 0; i < plane; i++) {
            const expected = Math.round(Math.min(1, Math.max(0, ref[ch * plane + i] / 2 + 0.5)) * 255);
            maxByte = Math.max(maxByte, Math.abs(image.data[i * 4 + ch] - expected));
          }
        }
        expect(maxByte, `${c.prompt}: image bytes`).toBeLessThanOrEqual(2);
      }
      await p.dispose();
    });
  }
});
