/**
 * The browser's byte paths in real Chromium (docs/architecture.md, "Browser loading"): blobs are
 * stored as Blob records (the older Uint8Array records still read). Weights that fit in memory
 * (`inMemoryLoadBytes`) are downloaded as bytes or read from IndexedDB as bytes, handed to
 * onnxruntime-web as they are in, and hashed in the workers once the session is built. Past it, onnxruntime-web's JSPI build (the
 * default where Chromium has JSPI) is handed the shards as Blobs — downloads written to OPFS files
 * that become their records, stored records as they are — never as bytes in JavaScript, and stored
 * shards are hashed while their session is built from them. Either way a tampered one is caught
 * before any output (beside the session: that session is released, the shard fetched again, and
 * the output is the untampered one); a graph is hashed before the engine parses it.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { tagKey } from '../../common/keys.ts';
import { type SampleArtifact, sampleArtifact } from '../support/artifact.ts';
import { launchChromium } from '../support/chromium.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { writeTag } from '../support/tag.ts';
import { buildPages, openHarness } from '../support/web-pages.ts';
import type { HarnessLoad, HarnessResult } from './harness/harness.ts';

const RUN = { seed: 7, width: 32, height: 32 };

let artifact: SampleArtifact;
let browser: Browser;
let site: Origin;
let origin: Origin;
let pagesDir: string;

beforeAll(async () => {
  artifact = await sampleArtifact();
  browser = await launchChromium();
  pagesDir = await buildPages(['harness']);
  site = await startOrigin({ root: pagesDir });
  origin = await startOrigin({ root: artifact.dir });
});
afterAll(async () => {
  await browser?.close();
  await site?.close();
  await origin?.close();
  if (pagesDir) await rm(pagesDir, { recursive: true, force: true });
});

async function openPage(): Promise<Page> {
  return openHarness(await browser.newContext(), site.url);
}

async function load(page: Page, options: Partial<HarnessLoad> = {}): Promise<HarnessResult & Required<Pick<HarnessResult, 'info' | 'output'>>> {
  const r = await page.evaluate((o) => window.harness.load(o), { origin: origin.url, model: artifact.name, tag: artifact.tag, device: 'wasm', run: RUN, ...options } as HarnessLoad);
  expect(r.error).toBeUndefined();
  return r as HarnessResult & Required<Pick<HarnessResult, 'info' | 'output'>>;
}

/** Session attempts in a load's events, in order: the graph digest each was for. */
const sessionAttempts = (r: HarnessResult) => r.events.filter((e) => e.phase === 'session' && e.loaded === 0);

describe('browser load paths', () => {
  test('blobs are stored as Blob records; a record in the older Uint8Array layout still reads', async () => {
    const page = await openPage();
    const cold = await load(page);
    const digests = artifact.blobs.map((b) => b.digest);
    expect(await page.evaluate((d) => window.harness.recordKinds(d), digests)).toEqual(digests.map(() => 'Blob'));

    const old = artifact.manifest.shards[0].digest;
    await page.evaluate((d) => window.harness.rewriteAsBytes(d), old);
    expect(await page.evaluate((d) => window.harness.recordKinds([d]), old)).toEqual(['Uint8Array']);
    origin.reset();
    const warm = await load(page);
    expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(origin.gets()).toBe(1); // the tag only
    expect(warm.output).toEqual(cold.output);
    await page.context().close();
  });

  test("onnxruntime-web's JSPI build is given bytes when the weights fit in memory, and when they do not, stored shards as Blobs and downloads as files on disk that become their records; the asyncify build bytes", async () => {
    const shards = artifact.manifest.shards.map((s) => s.digest.slice('sha256:'.length)).sort();
    // Weights that fit in memory are downloaded as bytes (kept in the memory tier for the next load)…
    const fits = await openPage();
    const inMemoryTier = await load(fits);
    expect(inMemoryTier.engine!.build).toBe('jspi');
    expect(inMemoryTier.engine!.externalData).toEqual([shards.map(() => 'Uint8Array')]);
    expect(inMemoryTier.engine!.stallSafeStreams).toBe(0);
    expect(await fits.evaluate(() => window.harness.diskFiles())).toEqual([]);
    // …and read from IndexedDB as bytes too, by the hashing workers, verified before ORT sees them.
    const readAsBytes = await load(fits);
    expect(Object.values(readAsBytes.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(readAsBytes.engine!.externalData).toEqual([shards.map(() => 'Uint8Array')]);
    expect(readAsBytes.engine!.stallSafeStreams).toBe(0);
    expect(readAsBytes.output).toEqual(inMemoryTier.output);
    await fits.context().close();

    const page = await openPage();
    // A file a load that died left behind (no record, no lock) is removed by the next download.
    const stranded = 'ab'.repeat(32);
    await page.evaluate((n) => window.harness.strandDiskFile(n), stranded);
    const large = { memoryBudgetBytes: 1024, inMemoryLoadBytes: 1024 };
    const cold = await load(page, large);
    expect(cold.output).toEqual(inMemoryTier.output);
    expect(cold.engine!.build).toBe('jspi');
    expect(Object.values(cold.info.sources)).toEqual(artifact.blobs.map(() => 'network'));
    expect(cold.engine!.externalData).toEqual([shards.map(() => 'File')]);
    // ORT reads every shard it is given as a Blob through StallSafeBlob (a bare BYOB read can hang: web/blob-reads.ts).
    expect(cold.engine!.stallSafeStreams).toBeGreaterThanOrEqual(shards.length);
    // Each shard's file is its record's bytes now; the graph and assets are records of their own.
    expect(await page.evaluate(() => window.harness.diskFiles())).toEqual(shards);
    const digests = artifact.blobs.map((b) => b.digest);
    expect(await page.evaluate((d) => window.harness.recordKinds(d), digests)).toEqual(digests.map(() => 'Blob'));
    origin.reset();
    const warm = await load(page, large);
    expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(origin.gets()).toBe(1); // the tag only
    // Stored shards of weights that do not fit in memory are handed over as their records.
    expect(warm.engine!.externalData).toEqual([shards.map(() => 'Blob')]);
    expect(warm.engine!.stallSafeStreams).toBeGreaterThanOrEqual(shards.length);
    expect(warm.output).toEqual(cold.output);
    // Clearing the cache removes the files with the records.
    await page.evaluate(() => window.harness.clearCache());
    expect(await page.evaluate(() => window.harness.diskFiles())).toEqual([]);
    await page.context().close();

    const memory = await openPage();
    const inMemory = await load(memory, { ...large, filesOnDisk: false });
    expect(inMemory.engine!.externalData).toEqual([shards.map(() => 'Blob')]);
    expect(await memory.evaluate(() => window.harness.diskFiles())).toEqual([]);
    expect(inMemory.output).toEqual(cold.output);
    await memory.context().close();

    const other = await openPage();
    const asyncify = await load(other, { ortBuild: 'asyncify' });
    expect(asyncify.engine!.build).toBe('asyncify');
    expect(asyncify.engine!.externalData).toEqual([shards.map(() => 'Uint8Array')]);
    expect(asyncify.output).toEqual(cold.output);
    await other.context().close();
  });

  test('stored shards that fit in memory go to ORT as read and to the hashing workers after: the memory tier gets them back whole', async () => {
    const page = await openPage();
    const cold = await load(page);
    // A loader of the page's own: its first load reads the records, its second takes the memory tier's copies.
    const warm = await load(page, { reuse: true, dispose: true });
    expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(warm.engine!.externalData).toEqual([artifact.manifest.shards.map(() => 'Uint8Array')]);
    const again = await load(page, { reuse: true, dispose: true });
    for (const s of artifact.manifest.shards) expect(again.info.sources[s.digest]).toBe('memory');
    expect(again.info.fromPipelineCache).toBe(false);
    expect(again.warnings).toEqual([]);
    expect(again.output).toEqual(cold.output);
    expect(warm.output).toEqual(cold.output);
    await page.context().close();
  });

  test('a load by tag reads what the tag named last time while the tag revalidates; a tag that moved loads what it names now, and the hint follows it', async () => {
    // One origin with two builds of the model (other shard sizes: other blobs), its tag naming the first.
    const other = await sampleArtifact({ shardSize: 8 * 1024 });
    expect(other.fingerprint).not.toBe(artifact.fingerprint);
    const dir = await mkdtemp(join(tmpdir(), 'fuseload-moved-tag-'));
    await cp(artifact.dir, dir, { recursive: true });
    await cp(other.dir, dir, { recursive: true });
    await writeTag(dir, artifact.name, artifact.fingerprint, artifact.tag);
    const served = await startOrigin({ root: dir });
    const tagUrl = `${served.url}/${tagKey(artifact.name, artifact.tag)}`;
    const digests = (a: SampleArtifact) => a.blobs.map((b) => b.digest);
    try {
      const page = await openPage();
      const cold = await load(page, { origin: served.url, holdTagUntilRead: digests(artifact) });
      // Nothing to go on yet: the tag answered (after the hold's second) before any read.
      expect(cold.tagHeld).toEqual({ readFirst: false });
      expect(await page.evaluate((u) => window.harness.tagHint(u), tagUrl)).toBe(artifact.fingerprint);

      const warm = await load(page, { origin: served.url, holdTagUntilRead: digests(artifact) });
      expect(warm.tagHeld).toEqual({ readFirst: true });
      expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
      expect(warm.warnings).toEqual([]);
      expect(warm.output).toEqual(cold.output);

      // Published again: the reads ahead of the old build are let go, the new one is loaded and remembered.
      await writeTag(dir, artifact.name, other.fingerprint, artifact.tag);
      served.reset();
      const moved = await load(page, { origin: served.url });
      expect(moved.info.fingerprint).toBe(other.fingerprint);
      for (const b of other.blobs) if (!digests(artifact).includes(b.digest)) expect(moved.info.sources[b.digest]).toBe('network');
      expect(moved.output).toEqual(cold.output);
      expect(await page.evaluate((u) => window.harness.tagHint(u), tagUrl)).toBe(other.fingerprint);
      const again = await load(page, { origin: served.url, holdTagUntilRead: digests(other) });
      expect(again.tagHeld).toEqual({ readFirst: true });
      expect(again.info.fingerprint).toBe(other.fingerprint);
      expect(Object.values(again.info.sources)).toEqual(other.blobs.map(() => 'store'));
      await page.context().close();
    } finally {
      await served.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a file let go while the browser still holds it locked is removed once the lock goes, not left behind', async () => {
    const page = await openPage();
    // Locked for 60 ms: the removal is tried again (20, 100, 500 ms) until it goes.
    expect(await page.evaluate(() => window.harness.releaseLockedFile(60))).toEqual([]);
    await page.context().close();
  });

  // Weights past inMemoryLoadBytes are handed to ORT as their records, weights that fit as the bytes
  // read from them; either way they are hashed beside the session, and its runs wait for the digests.
  const paths = { 'as its record': { inMemoryLoadBytes: 0 }, 'read as bytes': {} };
  for (const layout of ['Blob', 'Uint8Array'] as const) {
    for (const [how, options] of Object.entries(paths)) {
      test(`a tampered stored shard (${layout} record) handed to ORT ${how} is caught while its session is built, before any output`, async () => {
        const page = await openPage();
        const clean = await load(page, options);
        const victim = artifact.manifest.shards[1].digest;
        await page.evaluate(([d, asBytes]) => window.harness.tamper(d, asBytes), [victim, layout === 'Uint8Array'] as const);
        origin.reset();

        const r = await load(page, options);
        const attempts = sessionAttempts(r);
        const refetch = r.events.findIndex((e) => e.phase === 'download' && e.file === victim);
        // A session was built from the tampered bytes, then released unrun, and a second built from the refetched shard.
        expect(attempts.map((e) => e.file)).toEqual([artifact.manifest.graph.digest, artifact.manifest.graph.digest]);
        expect(refetch).toBeGreaterThan(r.events.indexOf(attempts[0]));
        expect(r.engine!.externalData[0]).toEqual(artifact.manifest.shards.map(() => ('inMemoryLoadBytes' in options ? 'Blob' : 'Uint8Array')));
        expect(r.warnings.join('\n')).toMatch(new RegExp(`${victim} in indexeddb is corrupt`));
        // What came out is the untampered model's, and the load says where every blob came from.
        expect(r.output).toEqual(clean.output);
        expect(r.info.sources[victim]).toBe('network');
        for (const b of artifact.blobs) if (b.digest !== victim) expect(r.info.sources[b.digest]).toBe('store');
        expect(origin.gets(artifact.blobPath(victim))).toBe(1);
        expect(r.info.bytesFetched).toBe(artifact.manifest.shards[1].size);
        // The shard was stored again, intact: the next load reads it from IndexedDB.
        const again = await load(page, options);
        expect(again.info.sources[victim]).toBe('store');
        expect(again.warnings).toEqual([]);
        await page.context().close();
      });
    }
  }

  test('a shard corrupted in transit goes to ORT as it arrives and is hashed once the session is built: caught before any output, fetched again', async () => {
    const page = await openPage();
    const victim = artifact.manifest.shards[1].digest;
    origin.reset();
    origin.corrupt(artifact.blobPath(victim));
    const r = await load(page);
    const attempts = sessionAttempts(r);
    // A session was built from the bytes as they came, released unrun once they hashed wrong, and built again.
    expect(attempts.map((e) => e.file)).toEqual([artifact.manifest.graph.digest, artifact.manifest.graph.digest]);
    expect(r.engine!.externalData[0]).toEqual(artifact.manifest.shards.map(() => 'Uint8Array'));
    expect(origin.gets(artifact.blobPath(victim))).toBe(2);
    expect(r.info.sources[victim]).toBe('network');
    // Only the good bytes were stored: the next load reads every blob from IndexedDB, with the same output.
    const again = await load(page);
    expect(Object.values(again.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(again.warnings).toEqual([]);
    expect(r.output).toEqual(again.output);
    await page.context().close();
  });

  test('a tampered graph is caught before the engine parses it: one session, from the refetched graph', async () => {
    const page = await openPage();
    const clean = await load(page);
    const graph = artifact.manifest.graph.digest;
    await page.evaluate((d) => window.harness.tamper(d), graph);
    const r = await load(page);
    expect(sessionAttempts(r)).toHaveLength(1);
    expect(r.info.sources[graph]).toBe('network');
    expect(r.warnings.join('\n')).toMatch(new RegExp(`${graph} in indexeddb is corrupt`));
    expect(r.output).toEqual(clean.output);
    await page.context().close();
  });
});
