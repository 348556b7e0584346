/**
 * Browser load bench (`npx tsx test/bench/browser-load.ts`): a synthetic ≥ 256 MiB artifact
 * built by `fuseload build`, served from a local origin, loaded in headless Chromium with a
 * persistent profile (real on-disk IndexedDB).
 *
 *   cold_ratio     = cold loadPipeline, blobs fetched + verified / bare fetch of the same bytes (target ≤ 1.3);
 *                    IndexedDB writes go on behind the load, and the time until they end is printed beside it
 *   warm_ratio     = warm loadPipeline, blobs read + verified from IndexedDB / raw IndexedDB read of the same records (target ≤ 1.2)
 *   cacheapi_ratio = the same warm load / reading the same bytes from the Cache API (reported)
 *
 *   cold_memorystore_ratio = the cold load with a MemoryStore / bare fetch: the loader's own cost, without IndexedDB writes
 *
 * Ratios use the loader's part (until every blob is in memory and verified); session creation
 * (onnxruntime-web, WASM) is reported beside them, since it is the engine's cost, not the cache's.
 */
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mulberry32 } from '../../common/sample-input.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { encodeModel } from '../../tools/onnx/model.ts';
import type { HarnessResult } from '../browser/harness/harness.ts';
import { fuseload } from '../support/artifact.ts';
import { launchPersistentChromium } from '../support/chromium.ts';
import { startOrigin } from '../support/origin.ts';
import { PAGE_PATHS, buildPages } from '../support/web-pages.ts';

const MiB = 1024 * 1024;
/** 5 weights of 56 MiB: 280 MiB in 5 shards of the default 64 MiB. */
const WEIGHTS = 5;
const WEIGHT_BYTES = 56 * MiB;
const RUNS = 3;

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
    await mkdir(join(out, 'tags', 'big'), { recursive: true });
    await writeFile(join(out, 'tags', 'big', 'latest.json'), JSON.stringify({ manifest: fingerprint }));
    await rm(join(work, 'store'), { recursive: true, force: true });
    await rm(join(work, 'big.onnx'));
    await writeFile(join(work, 'fingerprint'), fingerprint);
    await rm(home, { recursive: true, force: true });
    await rename(work, home);
  }
  return { dir: join(home, 'artifact'), fingerprint: (await readFile(done, 'utf8')).trim() };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (ms: number) => `${ms.toFixed(0)} ms`;

async function main() {
  const t0 = Date.now();
  const big = await bigArtifact();
  console.log(`artifact ready in ${Date.now() - t0} ms: ${big.dir}`);
  const manifest = JSON.parse(await readFile(join(big.dir, 'manifests', 'sha256', `${big.fingerprint.slice(7)}.json`), 'utf8'));
  const blobs: { digest: string; size: number }[] = [manifest.graph, ...manifest.shards];
  const bytes = blobs.reduce((n, b) => n + b.size, 0);
  console.log(`${blobs.length} blobs, ${(bytes / MiB).toFixed(1)} MiB`);

  const pagesDir = await buildPages(['harness']);
  const site = await startOrigin({ root: pagesDir });
  const origin = await startOrigin({ root: big.dir });
  const profile = await mkdtemp(join(tmpdir(), 'fuseload-bench-profile-'));
  const context = await launchPersistentChromium(profile);
  try {
    const page = await context.newPage();
    await page.goto(site.url + PAGE_PATHS.harness);
    await page.waitForFunction(() => document.title === 'harness ready');
    const urls = blobs.map((b) => `${origin.url}/blobs/sha256/${b.digest.slice(7)}`);
    const digests = blobs.map((b) => b.digest);
    const load = (memoryStore = false) =>
      page.evaluate((o) => window.harness.load(o), { origin: origin.url, model: 'big', tag: 'latest', device: 'wasm' as const, keepEvents: false, memoryStore }) as Promise<HarnessResult>;
    const check = (r: HarnessResult) => {
      if (!r.ok) throw new Error(`load failed: ${r.error?.message}`);
      return r;
    };

    await page.evaluate((u) => window.harness.bench.bareFetch(u), urls); // warm the OS page cache and the connection pool
    const fetchMs: number[] = [];
    const hashMs: number[] = [];
    const cold: HarnessResult[] = [];
    const warm: HarnessResult[] = [];
    const idbMs: number[] = [];
    const idbHashMs: number[] = [];
    const memoryOnly: HarnessResult[] = [];
    for (let i = 0; i < RUNS; i++) {
      fetchMs.push(await page.evaluate((u) => window.harness.bench.bareFetch(u), urls));
      hashMs.push(await page.evaluate((u) => window.harness.bench.fetchAndHash(u), urls));
      await page.evaluate(() => window.harness.clearCache());
      const c = check(await load());
      if (Object.values(c.info!.sources).some((s) => s !== 'network')) throw new Error('cold load was not cold');
      cold.push(c);
      // The same cold load with a MemoryStore: the loader's own cost, without IndexedDB writes.
      memoryOnly.push(check(await load(true)));
      const w = check(await load());
      if (Object.values(w.info!.sources).some((s) => s !== 'store')) throw new Error('warm load did not come from IndexedDB');
      warm.push(w);
      idbMs.push(await page.evaluate((d) => window.harness.bench.idbRead(d), digests));
      idbHashMs.push(await page.evaluate((d) => window.harness.bench.idbReadAndHash(d), digests));
    }
    await page.evaluate((u) => window.harness.bench.cacheApiFill(u), urls);
    const cacheMs: number[] = [];
    for (let i = 0; i < RUNS; i++) cacheMs.push(await page.evaluate((u) => window.harness.bench.cacheApiRead(u), urls));

    const coldBlobs = median(cold.map((r) => r.blobsReadyMs!));
    const coldAll = median(cold.map((r) => r.ms));
    const warmBlobs = median(warm.map((r) => r.blobsReadyMs!));
    const warmAll = median(warm.map((r) => r.ms));
    const f = median(fetchMs);
    const idb = median(idbMs);
    const cache = median(cacheMs);
    console.log(`bare fetch            ${fmt(f)}  (${((bytes / MiB / f) * 1000).toFixed(0)} MiB/s)`);
    console.log(`bare fetch + SHA-256  ${fmt(median(hashMs))}`);
    console.log(`cold loadPipeline     ${fmt(coldBlobs)} blobs fetched+verified, ${fmt(coldAll)} with the WASM session, ${fmt(median(cold.map((r) => r.storedMs!)))} until stored in IndexedDB`);
    console.log(`raw IndexedDB read    ${fmt(idb)}`);
    console.log(`raw IndexedDB read + SHA-256  ${fmt(median(idbHashMs))}`);
    console.log(`Cache API read        ${fmt(cache)}`);
    console.log(`warm loadPipeline     ${fmt(warmBlobs)} blobs read+verified, ${fmt(warmAll)} with the WASM session`);
    const mem = median(memoryOnly.map((r) => r.blobsReadyMs!));
    console.log(`cold, MemoryStore     ${fmt(mem)} (ratio ${(mem / f).toFixed(2)}: the loader without IndexedDB writes)`);
    console.log(`cold / (fetch + SHA-256) ${(coldBlobs / median(hashMs)).toFixed(2)}, warm / (IndexedDB read + SHA-256) ${(warmBlobs / median(idbHashMs)).toFixed(2)}: over the least a verifying loader must do`);
    console.log(`with session: cold ${(coldAll / f).toFixed(2)}, warm/idb ${(warmAll / idb).toFixed(2)}`);
    console.log(
      `BENCH browser cold_ratio=${(coldBlobs / f).toFixed(2)} warm_ratio=${(warmBlobs / idb).toFixed(2)} cacheapi_ratio=${(warmBlobs / cache).toFixed(2)} cold_memorystore_ratio=${(mem / f).toFixed(2)} bytes=${bytes}`,
    );
  } finally {
    await context.close();
    await site.close();
    await origin.close();
    await rm(profile, { recursive: true, force: true });
    await rm(pagesDir, { recursive: true, force: true });
  }
}

await main();
