/**
 * `npm start` end to end, in real headless Chromium: the orchestrator builds and publishes the
 * sample into wrangler dev's local R2 state, serves the demo with Vite, and the page loads the
 * model from the edge worker, runs it (SwiftShader WebGPU or WASM) and draws the image.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { launchChromium } from '../support/chromium.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { groupMembers, type Orchestrator, startOrchestrator } from './orchestrator.ts';

/** Pixel thresholds, on 0–255 RGB. The sample draws variance ~5000; a blank or flat image ~0. */
const MIN_VARIANCE = 500;
/** Each sample LoRA at 0.8 moves pixels by 34–127 on average; providers differ by < 1. */
const MIN_CHANGE = 10;

let app: Orchestrator;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  // Chromium first: a missing browser fails here, loudly, before anything is started.
  browser = await launchChromium();
  app = await startOrchestrator();
  page = await browser.newPage();
  page.on('console', (m) => void (m.type() === 'error' && console.error(`[page] ${m.text()}`)));
});

afterAll(async () => {
  await browser?.close();
  await app?.cleanup();
});

interface Pixels {
  width: number;
  height: number;
  rgb: number[];
}

/** Finished generations so far on `p` (a reload starts again from 0). */
async function runsOn(p: Page = page): Promise<number> {
  return Number((await p.locator('#status').getAttribute('data-runs')) ?? 0);
}

/**
 * Waits until more than `after` generations have finished and none is queued (one UI change
 * may queue another), failing with the page's own error text.
 */
async function settled(after: number, p: Page = page): Promise<void> {
  await p.waitForFunction(
    (n) => {
      const s = document.getElementById('status')!;
      return s.dataset.busy === 'false' && (s.dataset.state === 'error' || (s.dataset.state === 'done' && Number(s.dataset.runs) > n));
    },
    after,
    { timeout: 45_000 },
  );
  if ((await p.locator('#status').getAttribute('data-state')) === 'error') {
    throw new Error(`the page failed: ${await p.locator('#error').textContent()}`);
  }
}

/** Does `change` in the page and waits for the regeneration it causes. */
async function regenerate(change: () => Promise<unknown>): Promise<void> {
  const before = await runsOn();
  await change();
  await settled(before);
}

async function pixels(): Promise<Pixels> {
  return page.evaluate(() => {
    const canvas = document.getElementById('image') as HTMLCanvasElement;
    const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
    const rgb: number[] = [];
    for (let i = 0; i < data.length; i += 4) rgb.push(data[i], data[i + 1], data[i + 2]);
    return { width: canvas.width, height: canvas.height, rgb };
  });
}

function variance(values: number[]): number {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
}

function meanAbsDiff(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  return a.reduce((n, v, i) => n + Math.abs(v - b[i]), 0) / a.length;
}

async function sources() {
  const el = page.locator('#sources');
  const n = async (name: string) => Number(await el.getAttribute(`data-${name}`));
  return { network: await n('network-blobs'), networkBytes: await n('network-bytes'), store: await n('store-blobs'), memory: await n('memory-blobs') };
}

describe('npm start', () => {
  let base: Pixels;
  let warm: Pixels;
  let overlaid: Pixels;

  test('serves the page, which loads the sample from the edge and draws a non-blank image', async () => {
    await page.goto(app.url);
    await settled(0);
    base = await pixels();
    expect([base.width, base.height]).toEqual([64, 64]);
    expect(variance(base.rgb)).toBeGreaterThan(MIN_VARIANCE);
    // device auto: SwiftShader gives Chromium a WebGPU adapter; WASM is the fallback.
    expect(['webgpu', 'wasm']).toContain(await page.locator('#provider').getAttribute('data-provider'));
    // A fresh profile: every blob crossed the network, from the edge worker.
    const first = await sources();
    expect(first.network).toBeGreaterThan(0);
    expect(first.networkBytes).toBeGreaterThan(0);
    expect(first.store).toBe(0);
  });

  test('the WASM device draws the same image', async () => {
    // Also the cheaper provider for the rest of the file: SwiftShader compiles shaders on the CPU.
    await regenerate(() => page.selectOption('#device', 'wasm'));
    expect(await page.locator('#provider').getAttribute('data-provider')).toBe('wasm');
    expect(meanAbsDiff(base.rgb, (await pixels()).rgb)).toBeLessThan(1);
  });

  test('switching to the LoRA-merged `warm` tag changes the image', async () => {
    await regenerate(() => page.selectOption('#tag', 'warm'));
    warm = await pixels();
    expect(variance(warm.rgb)).toBeGreaterThan(MIN_VARIANCE);
    expect(meanAbsDiff(base.rgb, warm.rgb)).toBeGreaterThan(MIN_CHANGE);
  });

  test('toggling the warm LoRA overlay changes the image, the same as merging it at build time', async () => {
    await regenerate(async () => {
      await page.selectOption('#tag', 'latest');
      await page.check('#lora-warm');
    });
    overlaid = await pixels();
    expect(meanAbsDiff(base.rgb, overlaid.rgb)).toBeGreaterThan(MIN_CHANGE);
    // base + warm ×0.8 at load time is the `warm` tag's build-time merge.
    expect(meanAbsDiff(warm.rgb, overlaid.rgb)).toBeLessThan(1);
    expect(await page.locator('#overlays').textContent()).toMatch(/^warm ×0\.8 \(\d+ keys\)$/);
  });

  test('moving its scale slider regenerates the image at the new scale', async () => {
    await regenerate(() => page.locator('#lora-warm-scale').fill('1.5'));
    const stronger = await pixels();
    expect(meanAbsDiff(overlaid.rgb, stronger.rgb)).toBeGreaterThan(MIN_CHANGE);
    expect(await page.locator('#overlays').textContent()).toMatch(/^warm ×1\.5 /);
    overlaid = stronger;
  });

  test('a reload loads every blob, the LoRA too, from IndexedDB: nothing from the network', async () => {
    await page.reload();
    await settled(0);
    const again = await sources();
    expect(again).toMatchObject({ network: 0, networkBytes: 0 });
    expect(again.store).toBeGreaterThan(0);
    // The choices live in the URL: the same tag, device, seed and overlay give the same image.
    expect(await page.locator('#lora-warm').isChecked()).toBe(true);
    expect(meanAbsDiff(overlaid.rgb, (await pixels()).rgb)).toBeLessThan(1);
    const dir = join(REPO_ROOT, 'test-results');
    await mkdir(dir, { recursive: true });
    await page.screenshot({ path: join(dir, 'e2e-demo.png'), fullPage: true });
  });

  test('Clear cache empties IndexedDB and the next load downloads again', async () => {
    await page.click('#clear-cache');
    await page.waitForFunction(() => document.getElementById('cache')!.dataset.blobs === '0', null, { timeout: 10_000 });
    await regenerate(() => page.click('#generate'));
    const after = await sources();
    expect(after.network).toBeGreaterThan(0);
    expect(after).toMatchObject({ store: 0, memory: 0 });
  });

  test('without WebGPU, auto falls back to WASM and says why', async () => {
    // A browser with no WebGPU at all, as Firefox or an older Safari: navigator.gpu is absent.
    const context = await browser.newContext();
    await context.addInitScript(() => void delete (Navigator.prototype as { gpu?: unknown }).gpu);
    const bare = await context.newPage();
    try {
      await bare.goto(app.url);
      await settled(0, bare);
      expect(await bare.locator('#provider').getAttribute('data-provider')).toBe('wasm');
      expect(await bare.locator('#fallbacks').textContent()).toMatch(/^webgpu: .*navigator\.gpu is missing/);
      expect(await bare.locator('#webgpu').textContent()).toContain('not available');
    } finally {
      await context.close();
    }
  });

  test('Ctrl-C stops everything it started', async () => {
    await page.close();
    await app.interrupt();
    expect(app.output()).toContain('stopped: wrangler dev and the demo server are down');
    // Stragglers get a moment to exit; none may remain in either process group.
    let left: string[] = [];
    for (let i = 0; i < 20; i++) {
      left = groupMembers([app.group, app.edgeGroup]);
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(left).toEqual([]);
  });
});
