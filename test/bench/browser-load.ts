/**
 * Browser load bench (`npx tsx test/bench/browser-load.ts`): a synthetic ≥ 256 MiB artifact
 * built by `fuseload build`, served from a local origin, loaded in headless Chromium with a
 * persistent profile (real on-disk IndexedDB). Every ratio is taken inside one round, against
 * baselines measured in that round beside it (their order alternates between rounds); the
 * median and the spread over the rounds are printed. `BENCH_RUNS` rounds (default 7).
 *
 *   cold_ratio            = cold loadPipeline until its blobs are fetched and handed to the engine (hashed once the
 *                           session is built; no run before they match), IndexedDB writes going on behind it / bare
 *                           fetch of the same bytes (target ≤ 1.0)
 *   cold_link_ratio       = the same, both from an origin that sends at most `BENCH_GBIT` Gbit/s (default 1)
 *                           over all its responses: a network link (target ≤ 1.0). On loopback the bare fetch
 *                           alone keeps about 1.6 of this machine's 2 cores busy (the origin, Chromium's network
 *                           service and renderer), and Chromium's SHA-256 (WebCrypto, ~700 MB/s here, run on the
 *                           calling thread) needs another half of its wall time in CPU, so a load that hashed as
 *                           it downloaded measured the cores; over a link the CPU waits on the network
 *   warm_ratio            = warm loadPipeline until the stored shards are read and handed to the engine (their
 *                           digests checked behind it; no run before they match) / a raw IndexedDB read of the
 *                           same records, nothing verified (target ≤ 1.15)
 *   warm_cache_api_ratio  = the same / the Cache API read transformers.js and WebLLM do: `match` + `arrayBuffer`
 *                           of the same bytes in the same page (target ≤ 1.0)
 *   warm_usable_cache_api_ratio = warm load usable (loadPipeline resolved and its `verified()` too: every digest
 *                           matched, the WASM session built) / the peer's whole path: that Cache API read + the
 *                           same session (target ≤ 1.0)
 *
 * These 280 MiB fit in memory (web/browser-loader.ts, `inMemoryLoadBytes`: an eighth of the device's
 * memory), so the load works as the peers do: downloads come as bytes, and stored shards are read
 * once, on the loader's thread; both are handed to onnxruntime-web as bytes, then moved to the
 * hashing workers once the session is built (runs wait for the digests). A load past it (an SD-sized pipeline, test/bench/browser-large.ts) writes downloads into
 * files on disk and hands the engine Blob handles, which its JSPI build reads while it builds the
 * session; the `*_on_disk` columns measure that path on the same bytes.
 *
 * Reported beside them:
 *   warm_usable_idb_ratio       = warm load usable / the raw IndexedDB read + the same session (harness
 *                                 `idbSession`). On 2 cores SHA-256 alone (~700 MB/s a core) costs 280 MiB about as
 *                                 long as that whole path takes, which is also what `warm_ratio` misses by
 *   warm_arraybuffer_idb_ratio  = the warm load's bytes / a raw read of the same bytes as Uint8Array records (the older layout)
 *   warm_usable_floor_ratio     = warm load usable / a session from the stored records as Blobs while
 *                                 hashing workers of the loader's kind hash them, no loader (harness `verifiedSession`)
 *   warm_usable_on_disk_cache_api_ratio = warm_usable_cache_api for the path past inMemoryLoadBytes (Blob handles,
 *                                 hashed beside the session)
 *   warm_resolved_on_disk_cache_api_ratio = the same until loadPipeline resolved: its sessions built, its runs
 *                                 waiting at the gate for the last digests (Pipeline.verified)
 *   cold_memorystore_ratio      = the cold load with a MemoryStore / bare fetch: the loader without IndexedDB writes
 *   cold_on_disk_ratio          = cold_ratio for the path past inMemoryLoadBytes: downloads into OPFS files, their
 *                                 hashes finishing behind the hand-over
 *   cold_usable_ratio           = cold load usable (every digest verified, the WASM session built) / bare fetch
 *   cold_link_usable_ratio      = the same over the link / the link's bare fetch: the whole wait a user has
 *   cold_link_usable_peer_ratio = the same / the peer's whole cold path over the link: fetch every body whole, then the
 *                                 same session from those bytes, nothing verified or stored (harness `fetchSession`)
 *   cold_link_resolved_ratio    = cold loadPipeline resolved over the link, before its last digests are in / the link's bare fetch
 *   cold_link_worker_usable_ratio      = cold_link_usable with the loader in its Web Worker (createWorkerLoader, the
 *                                        demo's default), one worker kept across the run as a page keeps it
 *   warm_usable_worker_cache_api_ratio = warm_usable_cache_api with the loader in its Web Worker, the same way
 */
import { mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mulberry32 } from '../../common/sample-input.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { encodeModel } from '../../tools/onnx/model.ts';
import type { HarnessLoad, HarnessResult } from '../browser/harness/harness.ts';
import type { WorkerHarnessLoad, WorkerHarnessResult } from '../browser/harness/worker-harness.ts';
import { fuseload } from '../support/artifact.ts';
import { launchPersistentChromium } from '../support/chromium.ts';
import { startOrigin } from '../support/origin.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';
import { writeTag } from '../support/tag.ts';
import { median, spread } from '../support/bench.ts';

const MiB = 1024 * 1024;
/** 5 weights of 56 MiB: 280 MiB in 5 shards of the default 64 MiB. */
const WEIGHTS = 5;
const WEIGHT_BYTES = 56 * MiB;

/** A graph that reads one element of each weight: session cost stays small, bytes stay big. */
async function bigArtifact(): Promise<{ dir: string; fingerprint: string }> {
  const home = join(tmpdir(), `fuseload-bench-big-${WEIGHTS}x${WEIGHT_BYTES}`);
  const done = join(home, 'fingerprint');
  if (!(await stat(done).catch(() => null))) {
    const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-build-'));
    const g = new GraphBuilder();
    let sum = g.input('x', { dtype: 'float32', dims: [1] });
    const index = g.int64('index', [0]);
    const rand = mulberry32(1);
    for (let i = 0; i < WEIGHTS; i++) {
      const values = new Float32Array(WEIGHT_BYTES / 4);
      for (let j = 0; j < values.length; j++) values[j] = rand();
      const picked = g.op('Gather', [g.weight(`w${i}`, [values.length], values), index], { axis: 0 });
      sum = g.op('Add', [sum, picked]);
    }
    g.rename(sum, 'y');
    g.output('y', { dtype: 'float32', dims: [1] });
    await writeFile(join(work, 'big.onnx'), encodeModel(g.model(17, 'fuseload bench')));
    const out = join(work, 'artifact');
    const env = { PIPELINE_STORE: join(work, 'store') };
    const fingerprint = (await fuseload(['build', '--base', join(work, 'big.onnx'), '--name', 'big', '--out', out], env)).trim();
    await writeTag(out, 'big', fingerprint);
    await rm(join(work, 'store'), { recursive: true, force: true });
    await rm(join(work, 'big.onnx'));
    await writeFile(join(work, 'fingerprint'), fingerprint);
    await rm(home, { recursive: true, force: true });
    await rename(work, home);
  }
  return { dir: join(home, 'artifact'), fingerprint: (await readFile(done, 'utf8')).trim() };
}

const fmt = (ms: number) => `${ms.toFixed(0)} ms`;
const RUNS = Number(process.env.BENCH_RUNS ?? 7) || 7;
const GBIT = Number(process.env.BENCH_GBIT ?? 1) || 1;

/**
 * Runs the steps in this order on even rounds and reversed on odd ones (drift in a loaded machine
 * cancels), each after `before` (a full collection: see main).
 */
async function alternating(round: number, steps: (() => Promise<void>)[], before: () => Promise<void>): Promise<void> {
  for (const step of round % 2 ? [...steps].reverse() : steps) {
    await before();
    await step();
  }
}

async function main() {
  const t0 = Date.now();
  const big = await bigArtifact();
  console.log(`artifact ready in ${Date.now() - t0} ms: ${big.dir}`);
  const manifest = JSON.parse(await readFile(join(big.dir, 'manifests', 'sha256', `${big.fingerprint.slice(7)}.json`), 'utf8'));
  const blobs: { digest: string; size: number }[] = [manifest.graph, ...manifest.shards];
  const bytes = blobs.reduce((n, b) => n + b.size, 0);
  console.log(`${blobs.length} blobs, ${(bytes / MiB).toFixed(1)} MiB; ${RUNS} rounds`);

  const pagesDir = await buildPages(['harness']);
  const site = await startOrigin({ root: pagesDir });
  const origin = await startOrigin({ root: big.dir });
  const link = await startOrigin({ root: big.dir, bytesPerSecond: (GBIT * 1e9) / 8 });
  const profile = await mkdtemp(join(tmpdir(), 'fuseload-bench-profile-'));
  // `gc()` in the page: every timed step starts on a collected heap. Each step leaves ~280 MiB of
  // buffers behind, and without it their collection lands on whichever step comes next: five warm
  // loads beside raw reads read 0.36-2.76 of them on the same bytes, and 0.79-1.22 with it.
  const context = await launchPersistentChromium(profile, ['--js-flags=--expose-gc']);
  try {
    const page = await context.newPage();
    await page.goto(site.url + PAGE_PATHS.harness);
    await page.waitForFunction(() => document.title === 'harness ready');
    const urls = blobs.map((b) => `${origin.url}/blobs/sha256/${b.digest.slice(7)}`);
    const linkUrls = blobs.map((b) => `${link.url}/blobs/sha256/${b.digest.slice(7)}`);
    const digests = blobs.map((b) => b.digest);
    const load = (options: Partial<HarnessLoad> = {}) =>
      page.evaluate((o) => window.harness.load(o), { origin: origin.url, model: 'big', tag: 'latest', device: 'wasm' as const, keepEvents: false, ...options }) as Promise<HarnessResult>;
    // The demo's path: the loader in its Web Worker, one kept for the whole run as a page keeps it,
    // with no memory tier (as each of the page's loads here makes a loader of its own).
    const inWorker = (options: Partial<WorkerHarnessLoad> = {}) =>
      page.evaluate((o) => window.workerHarness.load(o), { origin: origin.url, model: 'big', tag: 'latest', device: 'wasm' as const, reuse: true, loader: { memoryBudgetBytes: 0 }, ...options }) as Promise<WorkerHarnessResult>;
    const check = <R extends HarnessResult | WorkerHarnessResult>(r: R, want: 'network' | 'store' | null): R => {
      if (!r.ok) throw new Error(`load failed: ${r.error?.message}`);
      if (want && Object.values(r.info!.sources).some((s) => s !== want)) throw new Error(`a ${want === 'network' ? 'cold' : 'warm'} load took blobs from elsewhere: ${JSON.stringify(r.info!.sources)}`);
      return r;
    };
    const settle = () => new Promise((r) => setTimeout(r, 500));
    const collected = async () => {
      await page.evaluate(() => (globalThis as unknown as { gc(): void }).gc());
      await settle();
    };

    // Once: the peers' caches, the connection pool, the OS page cache and ORT's compiled WASM.
    await page.evaluate((u) => window.harness.bench.cacheApiFill(u), urls);
    await page.evaluate((u) => window.harness.bench.idbArrayBufferFill(u), urls);
    await page.evaluate((u) => window.harness.bench.bareFetch(u), urls);
    await page.evaluate(() => window.harness.clearCache());
    check(await load(), 'network');
    await page.evaluate(() => window.harness.clearCache());
    check(await inWorker(), 'network');

    const rows: Record<string, number>[] = [];
    for (let round = 0; round < RUNS; round++) {
      const r: Record<string, number> = {};
      // The cold load past inMemoryLoadBytes (an SD-sized pipeline's path: files on disk), on an empty store.
      await page.evaluate(() => window.harness.clearCache());
      await settle();
      r.coldOnDisk = check(await load({ inMemoryLoadBytes: 0 }), 'network').blobsReadyMs!;
      // Cold: an empty store, then the bare fetch and the cold load beside each other.
      await page.evaluate(() => window.harness.clearCache());
      await settle();
      let cold!: HarnessResult;
      await alternating(round, [
        async () => void (r.fetch = await page.evaluate((u) => window.harness.bench.bareFetch(u), urls)),
        async () => void (cold = check(await load(), 'network')),
      ], collected);
      r.cold = cold.blobsReadyMs!;
      r.coldUsable = cold.ms;
      r.coldStored = cold.storedMs!;
      const memoryOnly = check(await load({ memoryStore: true }), 'network');
      r.coldMemory = memoryOnly.blobsReadyMs!;
      // Over the link: the demo's worker loader, then the page's beside the bare fetch and the peer.
      await page.evaluate(() => window.harness.clearCache());
      await settle();
      r.linkWorkerUsable = check(await inWorker({ origin: link.url }), 'network').loadMs!;
      await page.evaluate(() => window.harness.clearCache());
      await settle();
      let linkCold!: HarnessResult;
      await alternating(round, [
        async () => void (r.linkFetch = await page.evaluate((u) => window.harness.bench.bareFetch(u), linkUrls)),
        async () => void (linkCold = check(await load({ origin: link.url }), 'network')),
        async () => void (r.linkPeer = await page.evaluate((u) => window.harness.bench.fetchSession(u), linkUrls)),
      ], collected);
      r.linkCold = linkCold.blobsReadyMs!;
      r.linkColdUsable = linkCold.ms;
      r.linkColdResolved = linkCold.resolvedMs!;

      await settle();
      // Warm: the loader against raw reads of the same bytes and the Cache API, order alternating.
      let warm!: HarnessResult;
      await alternating(round, [
        async () => void (warm = check(await load(), 'store')),
        async () => void (r.idb = await page.evaluate((d) => window.harness.bench.idbRead(d), digests)),
        async () => void (r.cache = await page.evaluate((u) => window.harness.bench.cacheApiRead(u), urls)),
        async () => void (r.idbArrayBuffer = await page.evaluate((u) => window.harness.bench.idbArrayBufferRead(u), urls)),
        async () => void (r.cacheSession = await page.evaluate((u) => window.harness.bench.cacheApiSession(u), urls)),
        async () => void (r.idbSession = await page.evaluate((d) => window.harness.bench.idbSession(d), digests)),
        async () => void (r.verifiedSession = await page.evaluate((d) => window.harness.bench.verifiedSession(d), digests)),
        async () => void (r.warmWorkerUsable = check(await inWorker(), 'store').loadMs!),
        async () => {
          const onDisk = check(await load({ inMemoryLoadBytes: 0 }), 'store');
          r.warmOnDiskUsable = onDisk.ms;
          r.warmOnDiskResolved = onDisk.resolvedMs!;
        },
      ], collected);
      r.warm = warm.blobsReadyMs!;
      r.warmUsable = warm.ms;
      rows.push(r);
      console.log(
        `round ${round + 1}: fetch ${fmt(r.fetch)} cold ${fmt(r.cold)} (stored ${fmt(r.coldStored)}) memory-store ${fmt(r.coldMemory)} on-disk ${fmt(r.coldOnDisk)} link: fetch ${fmt(r.linkFetch)} cold ${fmt(r.linkCold)} usable ${fmt(r.linkColdUsable)} peer+session ${fmt(r.linkPeer)} | ` +
          `idb ${fmt(r.idb)} idb+session ${fmt(r.idbSession)} cache ${fmt(r.cache)} idb-uint8 ${fmt(r.idbArrayBuffer)} warm ${fmt(r.warm)} usable ${fmt(r.warmUsable)} on-disk usable ${fmt(r.warmOnDiskUsable)} peer+session ${fmt(r.cacheSession)} session+hashes ${fmt(r.verifiedSession)} | ` +
          `worker: link cold ${fmt(r.linkWorkerUsable)} warm ${fmt(r.warmWorkerUsable)}`,
      );
    }
    const col = (k: string) => rows.map((r) => r[k]);
    const ratio = (a: string, b: string) => rows.map((r) => r[a] / r[b]);
    const ratios = {
      cold_ratio: ratio('cold', 'fetch'),
      cold_link_ratio: ratio('linkCold', 'linkFetch'),
      warm_usable_idb_ratio: ratio('warmUsable', 'idbSession'),
      warm_usable_cache_api_ratio: ratio('warmUsable', 'cacheSession'),
      warm_ratio: ratio('warm', 'idb'),
      warm_cache_api_ratio: ratio('warm', 'cache'),
      warm_arraybuffer_idb_ratio: ratio('warm', 'idbArrayBuffer'),
      warm_usable_floor_ratio: ratio('warmUsable', 'verifiedSession'),
      warm_usable_on_disk_cache_api_ratio: ratio('warmOnDiskUsable', 'cacheSession'),
      warm_resolved_on_disk_cache_api_ratio: ratio('warmOnDiskResolved', 'cacheSession'),
      cold_memorystore_ratio: ratio('coldMemory', 'fetch'),
      cold_on_disk_ratio: ratio('coldOnDisk', 'fetch'),
      cold_usable_ratio: ratio('coldUsable', 'fetch'),
      cold_link_usable_ratio: ratio('linkColdUsable', 'linkFetch'),
      cold_link_usable_peer_ratio: ratio('linkColdUsable', 'linkPeer'),
      cold_link_resolved_ratio: ratio('linkColdResolved', 'linkFetch'),
      cold_link_worker_usable_ratio: ratio('linkWorkerUsable', 'linkFetch'),
      warm_usable_worker_cache_api_ratio: ratio('warmWorkerUsable', 'cacheSession'),
    };
    console.log(`bare fetch            ${fmt(median(col('fetch')))}  (${((bytes / MiB / median(col('fetch'))) * 1000).toFixed(0)} MiB/s)`);
    console.log(`cold loadPipeline     ${fmt(median(col('cold')))} blobs fetched and handed to the engine, ${fmt(median(col('coldStored')))} until stored in IndexedDB`);
    console.log(`cold, MemoryStore     ${fmt(median(col('coldMemory')))}`);
    console.log(`cold, files on disk   ${fmt(median(col('coldOnDisk')))} (past inMemoryLoadBytes)`);
    console.log(`cold loadPipeline     ${fmt(median(col('coldUsable')))} usable (verified, WASM session built)`);
    console.log(`over a ${GBIT} Gbit/s link: bare fetch ${fmt(median(col('linkFetch')))}, cold loadPipeline ${fmt(median(col('linkCold')))} (resolved ${fmt(median(col('linkColdResolved')))}, usable ${fmt(median(col('linkColdUsable')))}); the peer's fetch + session ${fmt(median(col('linkPeer')))}`);
    console.log(`raw IndexedDB read    ${fmt(median(col('idb')))} (Blob records); ${fmt(median(col('idbArrayBuffer')))} as Uint8Array records; with the WASM session ${fmt(median(col('idbSession')))}`);
    console.log(`Cache API read        ${fmt(median(col('cache')))}; with the WASM session ${fmt(median(col('cacheSession')))}`);
    console.log(`warm loadPipeline     ${fmt(median(col('warm')))} bytes to the engine, ${fmt(median(col('warmUsable')))} usable (verified, WASM session built); past inMemoryLoadBytes resolved ${fmt(median(col('warmOnDiskResolved')))}, usable ${fmt(median(col('warmOnDiskUsable')))}`);
    console.log(`session + hashes      ${fmt(median(col('verifiedSession')))} (the same session from the stored records while workers hash them, no loader)`);
    console.log(`in the loader's Web Worker (the demo's path): cold over the link ${fmt(median(col('linkWorkerUsable')))} usable, warm ${fmt(median(col('warmWorkerUsable')))} usable`);
    for (const [k, v] of Object.entries(ratios)) console.log(`${k.padEnd(28)} ${spread(v)}  (median [min–max] of ${RUNS})`);
    const spreads = Object.entries(ratios).map(([k, v]) => `${k.replace(/_ratio$/, '')}_spread=${Math.min(...v).toFixed(2)}-${Math.max(...v).toFixed(2)}`);
    console.log(`BENCH browser ${Object.entries(ratios).map(([k, v]) => `${k}=${median(v).toFixed(2)}`).join(' ')} ${spreads.join(' ')} rounds=${RUNS} bytes=${bytes}`);
  } finally {
    await context.close();
    await site.close();
    await origin.close();
    await link.close();
    await rm(profile, { recursive: true, force: true });
    await rm(pagesDir, { recursive: true, force: true });
  }
}

await main();
