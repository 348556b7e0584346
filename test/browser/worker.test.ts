/**
 * The loader in a Web Worker (`createWorkerLoader`, web/worker-client.ts + web/worker.ts) in real
 * Chromium: the same `loadPipeline` / `Pipeline` surface (load, `run`, `sessions[role]`, `generate`
 * with `onStep` and `signal`, `dispose`, `info`) gives the same results as the page's own loader,
 * and the page's main thread has no long task (PerformanceObserver `longtask`, > 50 ms) through a
 * load and a generation — while the same work on the main thread does show up in that observer.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type SampleArtifact, sampleArtifact } from '../support/artifact.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { tinySdArtifact, type TinySdArtifact } from '../support/tiny-sd-artifact.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';
import type { WorkerHarnessLoad, WorkerHarnessResult } from './harness/worker-harness.ts';

const RUN = { seed: 7, width: 32, height: 32 };
const GENERATE = { prompt: 'a photo of a red cat', seed: 7, steps: 4, guidanceScale: 3, scheduler: 'euler' as const, width: 64, height: 48 };

let work: string;
let sample: SampleArtifact;
let sd: TinySdArtifact;
let browser: Browser;
let site: Origin;
let sampleOrigin: Origin;
let sdOrigin: Origin;
let pagesDir: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-browser-worker-'));
  sample = await sampleArtifact();
  sd = await tinySdArtifact({ work });
  browser = await launchChromium();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  sampleOrigin = await startOrigin({ root: sample.dir });
  sdOrigin = await startOrigin({ root: sd.dir });
});
afterAll(async () => {
  await browser?.close();
  await site?.close();
  await sampleOrigin?.close();
  await sdOrigin?.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
  if (work) await rm(work, { recursive: true, force: true });
});

async function openPage(): Promise<Page> {
  return openHarness(await browser.newContext(), site.url);
}

const inWorker = (page: Page, o: WorkerHarnessLoad): Promise<WorkerHarnessResult> => page.evaluate((o) => window.workerHarness.load(o), o);
const onPage = (page: Page, o: HarnessLoad): Promise<HarnessResult> => page.evaluate((o) => window.harness.load(o), o);

function expectOk(r: WorkerHarnessResult): void {
  expect(r.error).toBeUndefined();
  expect(r.ok).toBe(true);
}

describe('createWorkerLoader in Chromium', () => {
  test('load, run and dispose in the worker give what the page loader gives', async () => {
    const page = await openPage();
    const direct = await onPage(page, { origin: sampleOrigin.url, model: sample.name, tag: sample.tag, device: 'wasm', run: RUN });
    expect(direct.ok).toBe(true);
    const r = await inWorker(page, { origin: sampleOrigin.url, model: sample.name, tag: sample.tag, device: 'wasm', run: RUN });
    expectOk(r);
    expect(r.info!.provider).toBe('wasm');
    expect(r.info!.fingerprint).toBe(sample.fingerprint);
    expect(Object.values(r.info!.sources)).toEqual(sample.blobs.map(() => 'store')); // the page's load stored them; the worker shares IndexedDB
    expect(r.output).toEqual(direct.output);
    expect(r.sessionInputs.model).toEqual(['latent']);
    expect(r.progressEvents).toBeGreaterThan(0);
    expect(r.afterDispose?.code).toBe('bad-input');
    expect(r.afterDispose?.message).toMatch(/run after dispose/);
    await page.context().close();
  });

  test('a cold load in the worker whose weights do not fit in memory writes the shards to files on disk (sync access handles) and gives the same output', async () => {
    const page = await openPage();
    const direct = await onPage(page, { origin: sampleOrigin.url, model: sample.name, tag: sample.tag, device: 'wasm', run: RUN });
    expect(direct.ok).toBe(true);
    await page.evaluate(() => window.harness.clearCache());
    const r = await inWorker(page, { origin: sampleOrigin.url, model: sample.name, tag: sample.tag, device: 'wasm', run: RUN, loader: { memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 } });
    expectOk(r);
    expect(Object.values(r.info!.sources)).toEqual(sample.blobs.map(() => 'network'));
    expect(r.output).toEqual(direct.output);
    // Each shard's file is now its record's bytes, written from the worker.
    const shards = sample.manifest.shards.map((s) => s.digest.slice('sha256:'.length)).sort();
    expect(await page.evaluate(() => window.harness.diskFiles())).toEqual([...new Set(shards)]);
    // And a warm load in the worker reads them back.
    const warm = await inWorker(page, { origin: sampleOrigin.url, model: sample.name, tag: sample.tag, device: 'wasm', run: RUN, loader: { memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 } });
    expectOk(warm);
    expect(Object.values(warm.info!.sources)).toEqual(sample.blobs.map(() => 'store'));
    expect(warm.output).toEqual(direct.output);
    await page.context().close();
  });

  test('generate with onStep, and an aborted generate leaves the pipeline working', async () => {
    const page = await openPage();
    const direct = await onPage(page, { origin: sdOrigin.url, model: sd.model, tag: 'latest', device: 'wasm', generate: GENERATE });
    expect(direct.ok).toBe(true);
    const r = await inWorker(page, { origin: sdOrigin.url, model: sd.model, tag: 'latest', device: 'wasm', generate: GENERATE, abortAfterStep: 2 });
    expectOk(r);
    expect(r.aborted?.code, JSON.stringify(r.aborted)).toBe("aborted");
    expect(r.aborted?.code).toBe('aborted');
    expect(r.aborted!.lastStep).toBeGreaterThanOrEqual(2);
    expect(r.aborted!.lastStep).toBeLessThan(50);
    expect(r.steps).toEqual([1, 2, 3, 4]);
    expect(r.image!.width).toBe(GENERATE.width);
    expect(r.image!.height).toBe(GENERATE.height);
    // The same WASM kernels on the same bytes: the same picture, byte for byte.
    expect(r.image!.rgba).toEqual(direct.image!.rgba);
    expect(Object.keys(r.sessionInputs).sort()).toEqual(['text_encoder', 'unet', 'vae_decoder']);
    await page.context().close();
  });

  test('no main-thread long task while the worker loads and generates; the same work on the main thread has them', async () => {
    const page = await openPage();
    const options: WorkerHarnessLoad = { origin: sdOrigin.url, model: sd.model, tag: 'latest', device: 'wasm', generate: { ...GENERATE, steps: 8 } };
    // Cold (the fetch, hashing and IndexedDB writes) and then warm (the reads), both in the worker.
    const cold = await inWorker(page, options);
    expectOk(cold);
    expect(Object.values(cold.info!.sources).every((s) => s === 'network')).toBe(true);
    const warm = await inWorker(page, options);
    expectOk(warm);
    expect(Object.values(warm.info!.sources).every((s) => s === 'store')).toBe(true);
    expect(cold.longTasks).toEqual([]);
    expect(warm.longTasks).toEqual([]);
    // The observer's control: the page's own loader does that work between the page's frames.
    const main = await inWorker(page, { ...options, onMainThread: true });
    expectOk(main);
    expect(main.longTasks.length).toBeGreaterThan(0);
    await page.context().close();
  });
});
