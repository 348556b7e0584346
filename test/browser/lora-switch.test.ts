/**
 * Switching load-time LoRAs without a new session, in real headless Chromium: on WebGPU
 * (SwiftShader) merged weights are device tensors uploaded once per switch; on WASM, which
 * copies every fed tensor into its heap per run, LoRAs ride on branch factors. Each engine
 * `create` that makes a component session is counted in the page (harness/lora-switch.ts); the
 * reference is the artifact `fuseload build` merged with the same LoRAs, on the same provider.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { LoraOverlay } from '../../common/pipeline.ts';
import { launchChromium } from '../support/chromium.ts';
import { type TinySdLora, tinySdWithLora } from '../support/lora-switch-artifacts.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { CASES, maxAbsDiff, type OverlayArtifacts, overlayArtifacts } from '../support/overlay-artifacts.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { SwitchOpen, SwitchRun, SwitchState } from './harness/lora-switch.ts';

const RUN: SwitchRun = { sample: { seed: 7, width: 32, height: 32 } };
/** Same provider, same graph math: only the weights' last bits (and a branch's summation order) may differ. */
const TOLERANCE = 1e-4;

let fx: OverlayArtifacts;
let tiny: TinySdLora;
let work: string;
let browser: Browser;
let pagesDir: string;
let site: Origin;
let origin: Origin;
let tinyOrigin: Origin;
const merged = new Map<string, Origin>();

beforeAll(async () => {
  browser = await launchChromium();
  fx = await overlayArtifacts();
  work = await mkdtemp(join(tmpdir(), 'fuseload-browser-switch-'));
  tiny = await tinySdWithLora(work);
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: fx.dir });
  tinyOrigin = await startOrigin({ root: tiny.dir });
  for (const c of CASES) merged.set(c.name, await startOrigin({ root: fx.merged.get(c.name)!.dir }));
});

afterAll(async () => {
  await browser?.close();
  for (const o of [site, origin, tinyOrigin, ...merged.values()]) await o?.close();
  for (const dir of [pagesDir, work]) if (dir) await rm(dir, { recursive: true, force: true });
  await fx?.remove();
});

async function openPage(): Promise<Page> {
  return openHarness(await browser.newContext(), site.url);
}

const call = {
  open: (page: Page, o: SwitchOpen) => page.evaluate((x) => window.loraSwitch.open(x), o),
  setLoras: (page: Page, id: number, loras: LoraOverlay[]) => page.evaluate(([i, l]) => window.loraSwitch.setLoras(i, l), [id, loras] as const),
  output: async (page: Page, id: number) => (await page.evaluate(([i, r]) => window.loraSwitch.run(i, r), [id, RUN] as const)).output,
  warnings: (page: Page) => page.evaluate(() => window.loraSwitch.warnings()),
};

const sample = (device: 'webgpu' | 'wasm', extra: Partial<SwitchOpen> = {}): SwitchOpen => ({ origin: origin.url, model: 'sample', fingerprint: fx.base.fingerprint, device, ...extra });

/** Each case's merged output per provider, once per file: the reference depends on neither page nor test. */
const mergedRuns = new Map<string, number[]>();

/**
 * Each case's merged artifact on this provider, with switching off (plain sessions), run on `page`
 * when not run before. Call it while a session of the sample is open on the page: onnxruntime-web
 * keeps its WebGPU context, and with it every compiled shader, only while some session lives, and a
 * merged session opened on a page with none compiles them all again (12 s per case on SwiftShader,
 * against 0.6 s with the base open).
 */
async function mergedOutputs(page: Page, device: 'webgpu' | 'wasm', cases = CASES): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const c of cases) {
    const key = `${device} ${c.name}`;
    if (!mergedRuns.has(key)) {
      const s = await call.open(page, { origin: merged.get(c.name)!.url, model: 'sample', fingerprint: fx.merged.get(c.name)!.fingerprint, device, mode: false });
      mergedRuns.set(key, await call.output(page, s.id));
      await page.evaluate((i) => window.loraSwitch.dispose(i), s.id);
    }
    out.set(c.name, mergedRuns.get(key)!);
  }
  return out;
}

describe.each(['webgpu', 'wasm'] as const)('switching LoRAs on %s', (device) => {
  test('every case equals the merged artifact; no component session is created; [] and scale 0 are the base exactly', async () => {
    const page = await openPage();
    const base: SwitchState = await call.open(page, sample(device));
    expect(base.info.provider).toBe(device);
    const before = await call.output(page, base.id);
    const want = await mergedOutputs(page, device);
    const sessions = base.sessions;
    for (const c of CASES) {
      const s = await call.setLoras(page, base.id, fx.overlays(c));
      expect(maxAbsDiff(await call.output(page, base.id), want.get(c.name)!), c.name).toBeLessThan(TOLERANCE);
      const counts = s.info.loraSwitch!.model!;
      // WebGPU feeds merged weights as device tensors; WASM would copy a fed weight every run, so it branches.
      if (device === 'webgpu') expect(counts.fed, c.name).toBeGreaterThan(0);
      else expect(counts).toMatchObject({ fed: 0, branched: expect.any(Number) });
      expect(counts.fed + counts.branched).toBeGreaterThan(0);
      expect(s.sessions).toBe(sessions);
    }
    await call.setLoras(page, base.id, []);
    expect(await call.output(page, base.id)).toEqual(before);
    await call.setLoras(page, base.id, [{ digest: fx.loras.warm.digest, scale: 0 }]);
    expect(await call.output(page, base.id)).toEqual(before);
    // Back and forth: the same numbers each time.
    const two = fx.overlays(CASES[3]);
    await call.setLoras(page, base.id, two);
    const first = await call.output(page, base.id);
    await call.setLoras(page, base.id, fx.overlays(CASES[0]));
    await call.setLoras(page, base.id, two);
    expect(await call.output(page, base.id)).toEqual(first);
    expect(await call.warnings(page)).toEqual([]);
    await page.context().close();
  }, 240_000);

  test('loadPipeline with other loras on the loaded base reuses its sessions; each handle keeps its own overlay', async () => {
    const page = await openPage();
    const base = await call.open(page, sample(device));
    const before = await call.output(page, base.id);
    const want = await mergedOutputs(page, device, [CASES[0], CASES[2]]);
    const a = await call.open(page, sample(device, { loras: fx.overlays(CASES[0]) }));
    const b = await call.open(page, sample(device, { loras: fx.overlays(CASES[2]) }));
    expect(b.sessions).toBe(base.sessions);
    expect(a.info.fromPipelineCache).toBe(true);
    expect(maxAbsDiff(await call.output(page, a.id), want.get(CASES[0].name)!)).toBeLessThan(TOLERANCE);
    expect(maxAbsDiff(await call.output(page, b.id), want.get(CASES[2].name)!)).toBeLessThan(TOLERANCE);
    expect(await call.output(page, base.id)).toEqual(before);
    await page.context().close();
  }, 240_000);
});

test('on WebGPU every weight can merge on the device (the recipe\'s merge graph, its result kept there as the fed tensor)', async () => {
  const page = await openPage();
  const p = await call.open(page, sample('webgpu', { overlayOrtMinElements: 0 }));
  const want = await mergedOutputs(page, 'webgpu', [CASES[0], CASES[3], CASES[4]]);
  for (const c of [CASES[0], CASES[3], CASES[4]]) {
    const s = await call.setLoras(page, p.id, fx.overlays(c));
    expect(s.info.loraSwitch!.model!.fed).toBeGreaterThan(0);
    expect(maxAbsDiff(await call.output(page, p.id), want.get(c.name)!), c.name).toBeLessThan(TOLERANCE);
  }
  expect(await call.warnings(page)).toEqual([]);
  await page.context().close();
}, 240_000);

test('generate() on WebGPU (the loop kept on the GPU) with a LoRA on every layer of text encoder and UNet: the merged pipeline\'s picture', async () => {
  const page = await openPage();
  const options = { prompt: 'a photo of a red cat', seed: 7, steps: 3, guidanceScale: 3, scheduler: 'euler' as const, width: 64, height: 48 };
  const gen = (id: number) => page.evaluate(([i, o]) => window.loraSwitch.generate(i, o), [id, options] as const);
  const open = (fingerprint: string, extra: Partial<SwitchOpen> = {}) => call.open(page, { origin: tinyOrigin.url, model: tiny.model, fingerprint, device: 'webgpu', ...extra });
  // The base first and open throughout: the merged pipeline's sessions reuse its compiled shaders (see mergedOutputs).
  const p = await open(tiny.base);
  const base = (await gen(p.id)).rgba;
  const sessions = p.sessions;
  const m = await open(tiny.merged, { mode: false });
  const want = (await gen(m.id)).rgba;
  await page.evaluate((i) => window.loraSwitch.dispose(i), m.id);
  const s = await call.setLoras(page, p.id, [{ digest: tiny.lora, scale: tiny.scale }]);
  expect(s.info.loraSwitch!.unet!.fed).toBeGreaterThan(0);
  expect(s.info.loraSwitch!.text_encoder!.fed).toBeGreaterThan(0);
  const got = (await gen(p.id)).rgba;
  expect(maxAbsDiff(want, base)).toBeGreaterThan(8);
  expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(2);
  await call.setLoras(page, p.id, []);
  expect(maxAbsDiff((await gen(p.id)).rgba, base)).toBe(0);
  expect((await call.setLoras(page, p.id, [])).sessions).toBe(sessions);
  await page.context().close();
}, 240_000);
