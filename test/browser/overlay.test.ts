/**
 * Load-time LoRA overlays in real headless Chromium on WebGPU (SwiftShader): each case against
 * the artifact `fuseload build` merged with the same LoRAs and scales, loaded on the same page
 * and provider; a switch between LoRA sets downloads only LoRA bytes (counted at the origin).
 */
import { rm } from 'node:fs/promises';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { CASES, maxAbsDiff, type OverlayArtifacts, overlayArtifacts } from '../support/overlay-artifacts.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';

const RUN = { seed: 7, width: 32, height: 32 };
/** WebGPU against WebGPU, same graph and feeds: only the weights' last bits may differ. */
const TOLERANCE = 1e-4;

let fx: OverlayArtifacts;
let browser: Browser;
let pagesDir: string;
let site: Origin;
let origin: Origin;
const merged = new Map<string, Origin>();
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  browser = await launchChromium();
  fx = await overlayArtifacts();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: fx.dir });
  for (const c of CASES) merged.set(c.name, await startOrigin({ root: fx.merged.get(c.name)!.dir }));
});

afterAll(async () => {
  await browser?.close();
  await site?.close();
  await origin?.close();
  for (const o of merged.values()) await o.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
  await fx?.remove();
});

async function openPage(): Promise<Page> {
  const context = await browser.newContext();
  contexts.push(context);
  return openHarness(context, site.url);
}

async function load(page: Page, options: Partial<HarnessLoad>): Promise<HarnessResult & Required<Pick<HarnessResult, 'info' | 'output'>>> {
  const full: HarnessLoad = { origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'webgpu', run: RUN, keepEvents: false, ...options };
  const result = await page.evaluate((o) => window.harness.load(o), full);
  expect(result.error).toBeUndefined();
  expect(result.info!.provider).toBe('webgpu');
  return result as HarnessResult & Required<Pick<HarnessResult, 'info' | 'output'>>;
}

/** Each case's merged output, once per file: the reference depends on neither page nor test. */
const mergedRuns = new Map<string, HarnessResult['output'] & {}>();
async function mergedLoad(page: Page, name: string): Promise<{ output: HarnessResult['output'] & {} }> {
  if (!mergedRuns.has(name)) mergedRuns.set(name, (await load(page, { origin: merged.get(name)!.url, fingerprint: fx.merged.get(name)!.fingerprint })).output);
  return { output: mergedRuns.get(name)! };
}

/** A page whose WebGPU context stays up: the sample's base held open (HarnessLoad.hold). */
async function openHeldPage(): Promise<Page> {
  const page = await openPage();
  await load(page, { hold: true });
  return page;
}

describe('load-time overlays on WebGPU', () => {
  test('every case equals the merged artifact: kohya, PEFT with alpha, diffusers, two at once, negative scale', async () => {
    const page = await openPage();
    const base = await load(page, { reuse: true });
    for (const c of CASES) {
      const want = await mergedLoad(page, c.name);
      expect(maxAbsDiff(want.output.data, base.output.data)).toBeGreaterThan(1e-3);
      const got = await load(page, { reuse: true, loras: fx.overlays(c) });
      expect(got.info.overlays.map((o) => o.digest).sort()).toEqual(c.loras.map((l) => fx.loras[l.file].digest).sort());
      expect(maxAbsDiff(got.output.data, want.output.data), c.name).toBeLessThan(TOLERANCE);
    }
  });

  test('a tampered stored base shard under a switched overlay: the run waits, the sessions are rebuilt from a fresh fetch, and the overlay applied again', async () => {
    const page = await openHeldPage();
    const c = CASES[0];
    const want = await mergedLoad(page, c.name);
    // Past inMemoryLoadBytes the stored shards go to ORT as they are and are hashed beside the session.
    const options: Partial<HarnessLoad> = { inMemoryLoadBytes: 0, loras: fx.overlays(c), keepEvents: true };
    await load(page, options);
    const victim = fx.base.manifest.shards[0].digest;
    await page.evaluate((d) => window.harness.tamper(d), victim);
    const r = await load(page, options);
    const attempts = r.events.filter((e) => e.phase === 'session' && e.loaded === 0);
    expect(attempts.map((e) => e.file)).toEqual([fx.base.manifest.graph.digest, fx.base.manifest.graph.digest]);
    expect(r.warnings.join('\n')).toMatch(new RegExp(`${victim} in indexeddb is corrupt`));
    expect(r.info.sources[victim]).toBe('network');
    expect(r.info.overlays.map((o) => o.digest).sort()).toEqual(c.loras.map((l) => fx.loras[l.file].digest).sort());
    expect(maxAbsDiff(r.output.data, want.output.data), c.name).toBeLessThan(TOLERANCE);
  });

  test('the merge graph on WebGPU (every weight through onnxruntime-web) gives the same numbers', async () => {
    const page = await openHeldPage();
    for (const c of [CASES[0], CASES[3]]) {
      const want = await mergedLoad(page, c.name);
      const got = await load(page, { device: 'webgpu', memoryStore: true, overlayOrtMinElements: 0, loras: fx.overlays(c) });
      expect(got.warnings).toEqual([]);
      expect(maxAbsDiff(got.output.data, want.output.data), c.name).toBeLessThan(TOLERANCE);
    }
  });

  test('switching LoRA sets and scales downloads only LoRA files not yet in memory; scale 0 is the base exactly', async () => {
    const page = await openPage();
    const base = await load(page, { reuse: true });
    origin.reset();
    const warm = await load(page, { reuse: true, loras: [{ digest: fx.loras.warm.digest, scale: 0.8 }] });
    expect(origin.requests.map((r) => r.path)).toEqual([`/blobs/sha256/${digestHex(fx.loras.warm.digest)}`]);
    expect(warm.info.bytesFetched).toBe(fx.loras.warm.size);

    origin.reset();
    const both = await load(page, { reuse: true, loras: [{ digest: fx.loras.warm.digest, scale: -0.4 }, { digest: fx.loras.detail.digest, scale: 1 }] });
    expect(origin.requests.map((r) => r.path)).toEqual([`/blobs/sha256/${digestHex(fx.loras.detail.digest)}`]);
    expect(both.info.bytesFetched).toBe(fx.loras.detail.size);
    for (const s of fx.base.manifest.shards) expect(both.info.sources[s.digest]).toBe('memory');

    origin.reset();
    const zero = await load(page, { reuse: true, loras: [{ digest: fx.loras.detail.digest, scale: 0 }] });
    expect(origin.requests).toEqual([]);
    expect(zero.output.data).toEqual(base.output.data);
  });

  test('a LoRA that does not fit is a one-line shape-mismatch, and the base still loads and runs', async () => {
    const page = await openPage();
    const full: HarnessLoad = { origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device: 'webgpu', reuse: true, loras: [{ digest: fx.loras.misfit.digest, scale: 1 }] };
    const failed = await page.evaluate((o) => window.harness.load(o), full);
    expect(failed.ok).toBe(false);
    expect(failed.error?.code).toBe('shape-mismatch');
    expect(failed.error?.message).toMatch(/^[^\n]*lora_up\.weight".*up \[33,4\] · down \[4,32\] does not fit weight "[^"]+" \[32,32\]/);
    const base = await load(page, { reuse: true });
    expect(base.output.data.length).toBe(3 * RUN.width * RUN.height);
  });
});
