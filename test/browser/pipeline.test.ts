/**
 * Schema-2 pipelines in real Chromium (onnxruntime-web on WASM and SwiftShader WebGPU): one
 * session per component, and load-time overlays routed per component equal to torch's merged
 * model (test/fixtures/pipeline, computed by make_fixtures.py).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { build } from '../../tools/build/build.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';
import { writeTag } from '../support/tag.ts';

const FIX = new URL('../fixtures/pipeline/', import.meta.url).pathname;
const fixtures = JSON.parse(await readFile(join(FIX, 'fixtures.json'), 'utf8'));
const KOHYA = fixtures.loras['kohya-te-unet'];
const ROLES = ['text_encoder', 'unet', 'vae_decoder'] as const;

let work: string;
let browser: Browser;
let site: Origin;
let origin: Origin;
let pagesDir: string;
let baseFingerprint: string;
let loraDigest: string;
let feeds: NonNullable<HarnessLoad['components']>;

async function raw(rel: string, int = false): Promise<number[]> {
  const b = await readFile(join(FIX, rel));
  const copy = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return Array.from(int ? new Int32Array(copy) : new Float32Array(copy));
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = a.length === b.length ? 0 : Infinity;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  return worst;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-browser-pipeline-'));
  const dir = join(work, 'origin');
  const base = await build({ base: join(FIX, 'sd-tiny'), name: 'sd-tiny', out: dir, store: null });
  const merged = await build({ base: join(FIX, 'sd-tiny'), loras: [{ path: join(FIX, KOHYA.file), scale: KOHYA.scale }], name: 'sd-tiny', out: dir, store: null });
  baseFingerprint = base.fingerprint;
  loraDigest = merged.loras[0].digest;
  await writeTag(dir, 'sd-tiny', base.fingerprint);
  feeds = {};
  for (const role of ROLES) {
    const fx = fixtures.pipelines['sd-tiny'].components[role];
    feeds[role] = {};
    for (const i of fx.inputs) feeds[role][i.name] = { type: i.dtype, dims: i.shape, data: await raw(fx.inputs_data[i.name], i.dtype === 'int32') };
  }
  browser = await launchChromium();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: dir });
});
afterAll(async () => {
  await browser?.close();
  await site?.close();
  await origin?.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
});

async function load(options: Partial<HarnessLoad>): Promise<HarnessResult & { ok: true }> {
  const context = await browser.newContext();
  const page = await openHarness(context, site.url);
  const result = await page.evaluate((o) => window.harness.load(o), { origin: origin.url, model: 'sd-tiny', tag: 'latest', components: feeds, ...options } as HarnessLoad);
  await context.close();
  if (!result.ok) throw new Error(`load failed: ${result.error?.message}`);
  return result as HarnessResult & { ok: true };
}

describe('a text-to-image pipeline in Chromium', () => {
  for (const device of ['wasm', 'webgpu'] as const) {
    test(`${device}: one session per component, each equal to torch on the base weights`, async () => {
      const r = await load({ device });
      for (const role of ROLES) {
        expect(r.info!.components[role]?.provider).toBe(device);
        for (const [name, rel] of Object.entries(fixtures.pipelines['sd-tiny'].components[role].base_outputs as Record<string, string>)) {
          expect(maxRel(r.componentOutputs![role][name], await raw(rel)), `${role}.${name}`).toBeLessThan(device === 'wasm' ? 1e-4 : 2e-3);
        }
      }
    });
  }

  test('a kohya LoRA overlaid at load time lands on text encoder and UNet, equal to torch merged', async () => {
    const r = await load({ device: 'wasm', fingerprint: baseFingerprint, tag: undefined, loras: [{ digest: loraDigest, scale: KOHYA.scale }] });
    expect(r.info!.overlays[0].components.text_encoder).toBeGreaterThan(0);
    expect(r.info!.overlays[0].components.unet).toBeGreaterThan(0);
    for (const [role, outputs] of Object.entries(KOHYA.outputs as Record<string, Record<string, string>>)) {
      for (const [name, rel] of Object.entries(outputs)) expect(maxRel(r.componentOutputs![role][name], await raw(rel)), `${role}.${name}`).toBeLessThan(1e-4);
    }
  });
});
