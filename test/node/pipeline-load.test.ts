/**
 * Schema-2 pipelines in the Node runtime: one session per component on the first provider that
 * works (reported per component), every blob by the one caching rule, and load-time overlays
 * routed to components exactly as `fuseload build` routes them — checked against torch's merged
 * model (test/fixtures/pipeline, computed by make_fixtures.py).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Role } from '../../common/manifest.ts';
import type { EngineSession, Feeds } from '../../common/pipeline.ts';
import { build } from '../../tools/build/build.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';
import { expectOutputs, FIX, fixtures } from '../support/pipeline-fixtures.ts';
import { writeTag } from '../support/tag.ts';

const KOHYA = fixtures.loras['kohya-te-unet'];

let work: string;
let origin: CountingOrigin;
let baseFingerprint: string;
let mergedFingerprint: string;
let loraDigest: string;


beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-pipeline-load-'));
  const dir = join(work, 'origin');
  const base = await build({ base: join(FIX, 'sd-tiny'), name: 'sd-tiny', out: dir, store: null });
  const merged = await build({ base: join(FIX, 'sd-tiny'), loras: [{ path: join(FIX, KOHYA.file), scale: KOHYA.scale }], name: 'sd-tiny', out: dir, store: null });
  baseFingerprint = base.fingerprint;
  mergedFingerprint = merged.fingerprint;
  loraDigest = merged.loras[0].digest;
  await writeTag(dir, 'sd-tiny', base.fingerprint);
  origin = await startCountingOrigin(dir);
});
afterAll(async () => {
  await origin?.close();
  await rm(work, { recursive: true, force: true });
});

describe('a text-to-image pipeline in the Node runtime', () => {
  it('creates one session per component and reports each provider and fallback', async () => {
    const rt = createNodeRuntime({ storeRoot: join(work, 'store-a'), warn: () => {} });
    const p = await rt.loadPipeline({ origin: origin.url, model: 'sd-tiny', tag: 'latest' });
    expect(p.info.kind).toBe('text-to-image');
    expect(Object.keys(p.sessions).sort()).toEqual(['text_encoder', 'unet', 'vae_decoder']);
    for (const role of ['text_encoder', 'unet', 'vae_decoder'] as const) {
      expect(p.info.components[role]?.provider).toBe('cpu');
      // This machine has no GPU: CUDA was tried first and the reason is kept per component.
      expect(p.info.components[role]?.fallbacks.map((f) => f.provider)).toEqual(['cuda']);
      await expectOutputs(p.sessions[role]!, role, fixtures.pipelines['sd-tiny'].components[role].base_outputs);
    }
    expect(p.info.fallbacks.map((f) => f.component).sort()).toEqual(['text_encoder', 'unet', 'vae_decoder']);
    // Assets travel by the same rule: tokenizer and scheduler are among the load's blobs.
    const manifest = p.info.manifest as { assets: Record<string, { digest: string }> };
    expect(p.info.sources[manifest.assets['scheduler/scheduler_config.json'].digest as `sha256:${string}`]).toBe('network');
    await expect(p.run({})).rejects.toThrow(/run\(\) is for "graph" pipelines/);
    await p.dispose();
    await rt.flush();

    // Warm: every component from the store, no blob over the network.
    origin.reset();
    const warm = createNodeRuntime({ storeRoot: join(work, 'store-a'), warn: () => {} });
    const again = await warm.loadPipeline({ origin: origin.url, model: 'sd-tiny', fingerprint: baseFingerprint });
    expect(again.info.bytesFetched).toBe(0);
    expect(origin.total()).toBe(0);
    await again.dispose();
  });

  it('a kohya LoRA overlaid at load time lands on text encoder and UNet, as the build merges it', async () => {
    const rt = createNodeRuntime({ storeRoot: join(work, 'store-b'), warn: () => {} });
    const p = await rt.loadPipeline({ origin: origin.url, model: 'sd-tiny', fingerprint: baseFingerprint, loras: [{ digest: loraDigest, scale: KOHYA.scale }] });
    expect(p.info.overlays[0].components.text_encoder).toBeGreaterThan(0);
    expect(p.info.overlays[0].components.unet).toBeGreaterThan(0);
    for (const [role, outputs] of Object.entries(KOHYA.outputs) as [Role, Record<string, string>][]) await expectOutputs(p.sessions[role]!, role, outputs);
    // The component no LoRA touches still runs its base weights.
    await expectOutputs(p.sessions.vae_decoder!, 'vae_decoder', fixtures.pipelines['sd-tiny'].components.vae_decoder.base_outputs);
    // The build-time merge gives the same numbers.
    const merged = await rt.loadPipeline({ origin: origin.url, model: 'sd-tiny', fingerprint: mergedFingerprint });
    for (const [role, outputs] of Object.entries(KOHYA.outputs) as [Role, Record<string, string>][]) await expectOutputs(merged.sessions[role]!, role, outputs);
    await p.dispose();
    await merged.dispose();
  });
});
