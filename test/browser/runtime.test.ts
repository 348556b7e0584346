/**
 * The browser runtime in real headless Chromium: real onnxruntime-web (SwiftShader WebGPU and
 * WASM), real IndexedDB, a real HTTP origin serving an artifact built by `fuseload build`.
 * Each test gets a fresh browser context (its own IndexedDB) unless it says otherwise.
 */
import { rm } from 'node:fs/promises';
import * as ortNode from 'onnxruntime-node';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { sampleFeeds } from '../../common/sample-input.ts';
import { type SampleArtifact, sampleArtifact } from '../support/artifact.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';

const SIZE = { width: 32, height: 32 };
const RUN = { seed: 7, ...SIZE };

let artifact: SampleArtifact;
let site: Origin;
let pagesDir: string;
let origin: Origin;
let browser: Browser;
let reference: Float32Array;
const contexts: BrowserContext[] = [];
/** Requests any page made to anything but loopback (the harness must not reach a CDN). */
const external: string[] = [];
const LOOPBACK = /^(http:\/\/(localhost|127\.0\.0\.1)(:\d+)?\/|data:|blob:)/;

beforeAll(async () => {
  browser = await launchChromium();
  artifact = await sampleArtifact();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: artifact.dir });
  reference = await nodeReference();
});

afterAll(async () => {
  await browser?.close();
  await site?.close();
  await origin?.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
});

/** onnxruntime-node on the same graph blob (its shards are its siblings) and the same feeds. */
async function nodeReference(): Promise<Float32Array> {
  const session = await ortNode.InferenceSession.create(artifact.blobFile(artifact.manifest.graph.digest));
  const { latent } = sampleFeeds(RUN);
  const out = await session.run({ latent: new ortNode.Tensor('float32', latent.data as Float32Array, latent.dims) });
  await session.release();
  return out.image.data as Float32Array;
}

async function openPage(context?: BrowserContext, init?: () => void): Promise<Page> {
  if (!context) {
    context = await browser.newContext();
    contexts.push(context);
  }
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  page.on('request', (r) => void (LOOPBACK.test(r.url()) || external.push(r.url())));
  await page.goto(site.url + PAGE_PATHS.harness);
  await page.waitForFunction(() => document.title === 'harness ready');
  return page;
}

function load(page: Page, options: Partial<HarnessLoad> = {}): Promise<HarnessResult> {
  const full: HarnessLoad = { origin: origin.url, model: artifact.name, tag: artifact.tag, run: RUN, ...options };
  return page.evaluate((o) => window.harness.load(o), full);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function expectLoaded(result: HarnessResult): asserts result is HarnessResult & Required<Pick<HarnessResult, 'info' | 'output'>> {
  expect(result.error).toBeUndefined();
  expect(result.ok).toBe(true);
}

const blobGets = () => Object.fromEntries(artifact.blobs.map((b) => [b.digest, origin.gets(artifact.blobPath(b.digest))]));
const shards = () => artifact.manifest.shards;
const biggestShard = () => [...shards()].sort((a, b) => b.size - a.size)[0];

describe('browser runtime in Chromium', () => {
  test('the page has a real WebGPU adapter (SwiftShader)', async () => {
    const page = await openPage();
    const adapter = await page.evaluate(() => window.harness.webgpuAdapter());
    expect(adapter.available).toBe(true);
    expect(adapter.architecture).toBe('swiftshader');
    expect(typeof adapter.shaderF16).toBe('boolean');
    // persist() only on an explicit call; headless Chromium answers without a prompt.
    expect(typeof (await page.evaluate(() => window.harness.persist()))).toBe('boolean');
  });

  test('device auto passes a software WebGPU adapter (SwiftShader) over for WASM, and says why', async () => {
    const page = await openPage();
    const result = await load(page, { device: 'auto' });
    expectLoaded(result);
    expect(result.info.provider).toBe('wasm');
    expect(result.info.fallbacks).toHaveLength(1);
    expect(result.info.fallbacks[0].provider).toBe('webgpu');
    expect(result.info.fallbacks[0].reason).toMatch(/software fallback .*slower than WASM; device 'webgpu' forces it/);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-3);
  });

  test('cold load on WebGPU downloads each blob once, verifies it, and matches onnxruntime-node', async () => {
    origin.reset();
    const page = await openPage();
    const result = await load(page, { device: 'webgpu' });
    expectLoaded(result);
    expect(result.info.provider).toBe('webgpu');
    expect(result.info.fallbacks).toEqual([]);
    expect(Object.values(result.info.sources)).toEqual(artifact.blobs.map(() => 'network'));
    expect(result.info.bytesFetched).toBe(artifact.bytes);
    expect(Object.values(blobGets())).toEqual(artifact.blobs.map(() => 1));

    expect(result.output.dims).toEqual([1, 3, SIZE.height, SIZE.width]);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-3);

    // Progress: every phase reported, and the aggregate reaches the artifact's size.
    const phases = new Set(result.events.map((e) => e.phase));
    for (const phase of ['manifest', 'download', 'verify', 'store', 'session']) expect(phases).toContain(phase);
    const last = result.events.filter((e) => e.aggregate).at(-1)!;
    expect(last.aggregate).toEqual({ loaded: artifact.bytes, total: artifact.bytes });

    const cache = await page.evaluate(() => window.harness.cacheInfo());
    // Every blob plus the manifest, one record each.
    expect(cache.count).toBe(artifact.blobs.length + 1);
  });

  test('warm load makes no network request for cached blobs, and none at all with a pinned fingerprint', async () => {
    const page = await openPage();
    expectLoaded(await load(page, { device: 'wasm' }));
    origin.reset();

    const warm = await load(page, { device: 'wasm' }); // a fresh loader: only IndexedDB is warm
    expectLoaded(warm);
    expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(warm.info.bytesFetched).toBe(0);
    expect(Object.values(blobGets())).toEqual(artifact.blobs.map(() => 0));
    // The tag is mutable, so it is the one request a tag load still makes.
    expect(origin.requests.map((r) => r.path)).toEqual([`/tags/${artifact.name}/${artifact.tag}.json`]);

    origin.reset();
    const pinned = await load(page, { device: 'wasm', tag: undefined, fingerprint: artifact.fingerprint });
    expectLoaded(pinned);
    expect(origin.requests).toEqual([]);
    expect(maxAbsDiff(pinned.output.data, reference)).toBeLessThan(1e-4);

    // Same loader twice: the second comes whole from the in-memory pipeline cache.
    await load(page, { device: 'wasm', reuse: true, fingerprint: artifact.fingerprint });
    const again = await load(page, { device: 'wasm', reuse: true, fingerprint: artifact.fingerprint });
    expectLoaded(again);
    expect(again.info.fromPipelineCache).toBe(true);
    expect(again.info.provider).toBe('wasm');
  });

  test("device 'wasm' runs on WASM and matches onnxruntime-node", async () => {
    const page = await openPage();
    const result = await load(page, { device: 'wasm' });
    expectLoaded(result);
    expect(result.info.provider).toBe('wasm');
    expect(result.info.fallbacks).toEqual([]);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);
  });

  test('without WebGPU, auto falls back to WASM and says why', async () => {
    const page = await openPage(undefined, () => {
      Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true });
    });
    const result = await load(page, { device: 'auto' });
    expectLoaded(result);
    expect(result.info.provider).toBe('wasm');
    expect(result.info.fallbacks).toHaveLength(1);
    expect(result.info.fallbacks[0].provider).toBe('webgpu');
    expect(result.info.fallbacks[0].reason).toMatch(/navigator\.gpu is missing/);
    expect(result.warnings.join('\n')).toMatch(/webgpu could not run it/);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);

    // Asking for WebGPU alone fails with the reason, instead of silently running elsewhere.
    const forced = await load(page, { device: 'webgpu' });
    expect(forced.ok).toBe(false);
    expect(forced.error?.code).toBe('engine');
    expect(forced.error?.message).toMatch(/webgpu: WebGPU unavailable/);
  });

  test('a tampered shard in IndexedDB is detected, dropped and fetched again', async () => {
    const page = await openPage();
    expectLoaded(await load(page, { device: 'wasm' }));
    const victim = shards()[1].digest;
    await page.evaluate((d) => window.harness.tamper(d), victim);
    origin.reset();

    const result = await load(page, { device: 'wasm' });
    expectLoaded(result);
    expect(result.info.sources[victim]).toBe('network');
    for (const b of artifact.blobs) if (b.digest !== victim) expect(result.info.sources[b.digest]).toBe('store');
    expect(origin.gets(artifact.blobPath(victim))).toBe(1);
    expect(result.warnings.join('\n')).toMatch(new RegExp(`${victim} in indexeddb is corrupt`));
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);
  });

  test('an interrupted download resumes with a Range request from the bytes received', async () => {
    const shard = biggestShard();
    const path = artifact.blobPath(shard.digest);
    const cutAt = Math.floor(shard.size / 2);
    origin.reset();
    origin.cutAfter(path, cutAt);
    const page = await openPage();
    const result = await load(page, { device: 'wasm' });
    expectLoaded(result);

    const requests = origin.requests.filter((r) => r.method === 'GET' && r.path === path);
    expect(requests).toHaveLength(2);
    expect(requests[0].bytes).toBe(cutAt);
    expect(requests[1].range).toBe(`bytes=${cutAt}-`);
    expect(requests[1].ifRange).toBe(`"${shard.digest.slice(7)}"`);
    expect(requests[1].status).toBe(206);
    expect(origin.bytesServed(path)).toBe(shard.size); // not one byte twice
    expect(origin.bytesServed(path)).toBeLessThan(2 * shard.size);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);
  });

  for (const tier of ['fits in memory', 'downloaded into files on disk'] as const) {
    test(`an aborted load stops cleanly and leaves no partial record (${tier})`, async () => {
      const shard = biggestShard();
      origin.reset();
      origin.stallAfter(artifact.blobPath(shard.digest), 1000);
      const page = await openPage();
      const onDisk = tier === 'downloaded into files on disk' ? { memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 } : {};
      const result = await load(page, { device: 'wasm', abortWhen: { file: shard.digest, loaded: 1000 }, ...onDisk });
      expect(result.ok).toBe(false);
      expect(result.error?.code).toBe('aborted');

      const cache = await page.evaluate(() => window.harness.cacheInfo());
      const sizes = new Map<string, number>([[artifact.fingerprint, -1], ...artifact.blobs.map((b) => [b.digest, b.size] as [string, number])]);
      expect(cache.blobs.map((b) => b.digest)).not.toContain(shard.digest);
      for (const b of cache.blobs) {
        expect(sizes.has(b.digest)).toBe(true);
        if (b.digest !== artifact.fingerprint) expect(b.size).toBe(sizes.get(b.digest));
      }
      // Every file left on disk is a record's bytes: none for the download that was cut off.
      const recorded = cache.blobs.map((b) => b.digest.slice('sha256:'.length));
      const files = await page.evaluate(() => window.harness.diskFiles({ names: true }));
      expect(files.filter((f) => !recorded.includes(f.slice(0, 64))), `the load's warnings: ${JSON.stringify(result.warnings)}`).toEqual([]);
    });
  }

  test('two tabs loading the same model download each blob once', async () => {
    const context = await browser.newContext();
    contexts.push(context);
    const [a, b] = [await openPage(context), await openPage(context)];
    origin.reset();
    const [ra, rb] = await Promise.all([load(a, { device: 'wasm' }), load(b, { device: 'wasm' })]);
    expectLoaded(ra);
    expectLoaded(rb);
    expect(Object.values(blobGets())).toEqual(artifact.blobs.map(() => 1));
    // Between them, every blob came over the network exactly once; the other tab read it from IndexedDB.
    expect(ra.info.bytesFetched + rb.info.bytesFetched).toBe(artifact.bytes);
    for (const blob of artifact.blobs) {
      expect([ra.info.sources[blob.digest], rb.info.sources[blob.digest]].sort()).toEqual(['network', 'store']);
    }
    expect(maxAbsDiff(rb.output.data, reference)).toBeLessThan(1e-4);
  });

  test('a byte budget evicts least recently used blobs and the load still succeeds', async () => {
    const page = await openPage();
    const budget = Math.floor(artifact.bytes / 2);
    // Weights past inMemoryLoadBytes: the shards are downloaded into files on disk that become their records.
    const result = await load(page, { device: 'wasm', budgetBytes: budget, memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 });
    expectLoaded(result);
    const cache = await page.evaluate(() => window.harness.cacheInfo());
    expect(cache.bytes).toBeLessThanOrEqual(budget);
    expect(cache.count).toBeLessThan(artifact.blobs.length + 1);
    expect(cache.count).toBeGreaterThan(0);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);
    // Downloaded shards are OPFS files that are their records' bytes (web/blob-files.ts): an evicted
    // record's file goes with it (once the load that was reading it is done), a kept one stays.
    const kept = new Set(cache.blobs.map((b) => b.digest.slice('sha256:'.length)));
    const shardFiles = artifact.manifest.shards.map((s) => s.digest.slice('sha256:'.length)).filter((hex) => kept.has(hex));
    expect(await page.evaluate(() => window.harness.diskFiles())).toEqual([...new Set(shardFiles)].sort());

    // A warm load under the same budget fetches only what was evicted.
    origin.reset();
    const warm = await load(page, { device: 'wasm', budgetBytes: budget, memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 });
    expectLoaded(warm);
    const stored = new Set(cache.blobs.map((b) => b.digest));
    for (const blob of artifact.blobs) {
      expect(origin.gets(artifact.blobPath(blob.digest))).toBe(stored.has(blob.digest) ? 0 : 1);
    }
  });

  test('a full origin quota (real QuotaExceededError) leaves the load running from memory with a warning', async () => {
    const page = await openPage();
    // Chromium's own quota, lowered for this origin through DevTools: IndexedDB writes fail for real.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: site.url, quotaSize: 4096 });
    const result = await load(page, { device: 'wasm' });
    expectLoaded(result);
    expect(Object.values(result.info.sources)).toEqual(artifact.blobs.map(() => 'network'));
    expect(result.warnings.join('\n')).toMatch(/quota exceeded|QuotaExceededError/i);
    expect(result.warnings.join('\n')).toMatch(/running from memory/);
    expect(maxAbsDiff(result.output.data, reference)).toBeLessThan(1e-4);
    const cache = await page.evaluate(() => window.harness.cacheInfo());
    expect(cache.bytes).toBeLessThanOrEqual(4096);
  });

  test('no page fetched anything outside loopback (ORT runtime files come from our origin)', () => {
    expect(site.requests.some((r) => r.path.startsWith('/ort/') && r.path.endsWith('.wasm') && r.status === 200)).toBe(true);
    expect(external).toEqual([]);
  });
});
