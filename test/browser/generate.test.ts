/**
 * Text to image in real Chromium on the tiny real-exporter pipeline (test/fixtures/generate/tiny-sd,
 * built into an artifact): the same prompt and seed make the same picture in Node (onnxruntime-node,
 * CPU) and in Chromium on WASM; on WebGPU (SwiftShader) the loop keeps latents, text embeddings and
 * noise predictions on the GPU, reads back once per image, and still makes that picture; an abort
 * mid-loop frees what it held and leaves the pipeline working; bad input is a one-line error.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { GenerateOptions } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { tinySdArtifact, tinySdReference, type TinySdArtifact } from '../support/tiny-sd-artifact.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';

type Options = NonNullable<HarnessLoad['generate']>;
const OPTIONS: Options = { prompt: 'a photo of a red cat', seed: 7, steps: 4, guidanceScale: 3, scheduler: 'euler', width: 64, height: 48 };

let work: string;
let artifact: TinySdArtifact;
let browser: Browser;
let site: Origin;
let origin: Origin;
let pagesDir: string;
let reference: Awaited<ReturnType<typeof tinySdReference>>;
const node = new Map<string, Uint8ClampedArray>();
/** One page per device, its loader (and the loaded pipeline) reused by the tests. */
const pages = new Map<'wasm' | 'webgpu', Page>();

/** The same generate in Node: onnxruntime-node on the CPU, through the Node loader. */
async function nodeImage(options: Options): Promise<Uint8ClampedArray> {
  const key = JSON.stringify(options);
  if (!node.has(key)) {
    const runtime = createNodeRuntime({ storeRoot: join(work, 'store'), warn: () => {} });
    const p = await runtime.loadPipeline({ origin: origin.url, model: artifact.model, tag: 'latest', device: 'cpu' });
    const { latents, ...rest } = options;
    const r = await p.generate({ ...rest, ...(latents ? { latents: Float32Array.from(latents) } : {}) } as GenerateOptions);
    node.set(key, r.image.data);
    await p.dispose();
    await runtime.flush();
  }
  return node.get(key)!;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-browser-generate-'));
  artifact = await tinySdArtifact({ work });
  reference = await tinySdReference();
  browser = await launchChromium();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: artifact.dir });
});
afterAll(async () => {
  for (const page of pages.values()) await page.context().close();
  await browser?.close();
  await site?.close();
  await origin?.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
  if (work) await rm(work, { recursive: true, force: true });
});

async function openPage(): Promise<Page> {
  return openHarness(await browser.newContext(), site.url);
}

async function load(page: Page, options: Partial<HarnessLoad>): Promise<HarnessResult> {
  return page.evaluate((o) => window.harness.load(o), { origin: origin.url, model: artifact.model, tag: 'latest', ...options } as HarnessLoad);
}

/** A generate on the device's shared page (its pipeline loaded once), or on `page`. */
async function generate(device: 'wasm' | 'webgpu', options: Options, page?: Page): Promise<NonNullable<HarnessResult['image']> & Pick<HarnessResult, 'aborted'>> {
  if (!page) {
    if (!pages.has(device)) pages.set(device, await openPage());
    page = pages.get(device)!;
  }
  const r = await load(page, { device, reuse: true, generate: options });
  if (!r.ok) throw new Error(`generate failed: ${r.error?.message}`);
  expect(r.info!.components.unet?.provider).toBe(device);
  return { ...r.image!, aborted: r.aborted };
}

function diff(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; mean: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

describe('text to image in Chromium', () => {
  test('the same prompt and seed make the same image in Node (CPU) and in Chromium on WASM', async () => {
    const wasm = await generate('wasm', OPTIONS);
    expect(wasm).toMatchObject({ width: 64, height: 48, unetCalls: 4, steps: [1, 2, 3, 4], deviceResident: false, readbacks: 0 });
    const d = diff(wasm.rgba, await nodeImage(OPTIONS));
    expect(d.max, `max |WASM − Node| per byte (mean ${d.mean})`).toBeLessThanOrEqual(1);
  });

  test('the torch reference (fixed latents) comes out on WASM and on WebGPU', async () => {
    const options: Options = { prompt: reference.prompt, steps: reference.steps, guidanceScale: reference.guidance_scale, scheduler: 'euler', width: reference.width, height: reference.height, latents: reference.noise };
    const expected = Uint8Array.from(atob(reference.image_rgba_base64), (c) => c.charCodeAt(0));
    expect(diff((await generate('wasm', options)).rgba, expected).max).toBeLessThanOrEqual(1);
    expect(diff((await generate('webgpu', options)).rgba, expected).max).toBeLessThanOrEqual(2);
  });

  for (const scheduler of ['euler', 'euler-ancestral', 'dpm++2m', 'ddim', 'lcm'] as const) {
    test(`WebGPU keeps the loop on the GPU (${scheduler}): one readback per image, nothing held after, the WASM image`, async () => {
      const options = { ...OPTIONS, scheduler };
      const gpu = await generate('webgpu', options);
      expect(gpu).toMatchObject({ deviceResident: true, readbacks: 1, heldAfter: 0, unetCalls: 4, steps: [1, 2, 3, 4] });
      // A second image on the same pipeline: still one readback, still nothing left behind.
      const again = await generate('webgpu', options);
      expect(again).toMatchObject({ readbacks: 1, heldAfter: 0 });
      expect(again.rgba).toEqual(gpu.rgba);
      const d = diff(gpu.rgba, (await generate('wasm', options)).rgba);
      expect(d.max, `max |WebGPU − WASM| per byte (mean ${d.mean})`).toBeLessThanOrEqual(2);
      expect(d.mean).toBeLessThan(0.01);
    });
  }

  test('without deviceResident, WebGPU reads back every step (the loop on the CPU) and makes the same image', async () => {
    const resident = await generate('webgpu', OPTIONS);
    const stepwise = await generate('webgpu', { ...OPTIONS, deviceResident: false });
    expect(stepwise.deviceResident).toBe(false);
    // 2 text encodings (last_hidden_state and pooler_output each), 4 UNet outputs, 1 image.
    expect(stepwise.readbacks).toBe(9);
    expect(diff(stepwise.rgba, resident.rgba).max).toBeLessThanOrEqual(2);
  });

  for (const device of ['webgpu', 'wasm'] as const) {
    test(`${device}: an abort mid-loop frees what it held; the next generate works and makes the same image`, async () => {
      const r = await generate(device, { ...OPTIONS, abortAfterStep: 2 });
      expect(r.aborted).toEqual({ code: 'aborted', message: 'generate: aborted after 2 of 4 steps', heldAfter: 0 });
      expect(r).toMatchObject({ steps: [1, 2, 3, 4], heldAfter: 0 });
      expect(r.rgba).toEqual((await generate(device, OPTIONS)).rgba);
    });
  }

  test('bad input is a one-line error naming the field, on WebGPU as on WASM', async () => {
    const cases: [Partial<Options>, RegExp][] = [
      [{ prompt: '' }, /^prompt: must not be empty$/],
      [{ steps: 0 }, /^steps: must be an integer from 1 to 150, got 0$/],
      [{ steps: 10000 }, /^steps: must be an integer from 1 to 150, got 10000$/],
      [{ width: 60 }, /^width: must be a multiple of 8 from 8 to 2048, got 60$/],
    ];
    for (const device of ['webgpu', 'wasm'] as const) {
      if (!pages.has(device)) pages.set(device, await openPage());
      const page = pages.get(device)!;
      for (const [over, message] of cases) {
        const r = await load(page, { device, reuse: true, generate: { ...OPTIONS, ...over } });
        expect(r.ok, `${device} ${JSON.stringify(over)}`).toBe(false);
        expect(r.error!.code).toBe('bad-input');
        expect(r.error!.message).toMatch(message);
        expect(r.error!.message).not.toContain('\n');
      }
      const ok = await load(page, { device, reuse: true, generate: OPTIONS });
      expect(ok.ok).toBe(true);
      expect(ok.image!.heldAfter).toBe(0);
    }
  });
});
