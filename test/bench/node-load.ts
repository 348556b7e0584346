/**
 * Node load bench: `npx tsx test/bench/node-load.ts [--mib 68] [--runs 5]`
 *
 * - warm_ratio: a Node load from a warm disk store (fresh loader, so no memory tier; by
 *   fingerprint, so no network) over reading the same bytes from disk with readFile.
 *   Target ≤ 1.2.
 * - cold_ratio: a load into an empty store from a local HTTP origin over a plain download
 *   (fetch → arrayBuffer) of the same blobs from the same origin.
 *
 * The artifact is the test model padded with shards to ≥ 64 MiB (the build tool's sample is
 * ~75 KiB, too small to measure I/O); medians over --runs. Prints a breakdown, then
 * `BENCH node warm_ratio=… cold_ratio=…`.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pLimit from 'p-limit';
import { sha256 } from '../../common/digest.ts';
import { blobKey } from '../../common/keys.ts';
import { manifestBlobs } from '../../common/manifest.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { writeTinyArtifact } from '../support/node-onnx.ts';
import { startCountingOrigin } from '../support/node-origin.ts';
import { median } from '../support/bench.ts';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '68' }, runs: { type: 'string', default: '5' } } });
const totalMib = Number(values.mib);
const runs = Number(values.runs);
const SHARD_MIB = 17;
const padShards = Math.max(1, Math.ceil(totalMib / SHARD_MIB));

const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-'));
const artifact = await writeTinyArtifact(join(work, 'origin'), { name: 'bench', padShards, padBytes: SHARD_MIB * 1024 * 1024 });
const refs = manifestBlobs(artifact.manifest);
const bytes = refs.reduce((n, r) => n + r.size, 0);
const origin = await startCountingOrigin(join(work, 'origin'));
const quiet = { warn: () => {} };

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

try {
  // Warm: fill one store, then load from it with a fresh runtime each time.
  const warmStore = join(work, 'warm-store');
  const filler = createNodeRuntime({ storeRoot: warmStore, ...quiet });
  await (await filler.loadPipeline({ origin: origin.url, model: 'bench', fingerprint: artifact.fingerprint, device: 'cpu' })).dispose();
  await filler.flush();
  const readAll = () => {
    const limit = pLimit(4); // the loader's default concurrency
    return Promise.all(refs.map((r) => limit(() => readFile(join(warmStore, blobKey(r.digest))))));
  };
  await readAll(); // page cache warm for both sides
  const warmLoad: number[] = [];
  const warmRead: number[] = [];
  /** Where the warm sessions' weights came from: 'files' means onnxruntime mapped the store's files. */
  const warmSources = new Set<string | null>();
  for (let i = 0; i < runs; i++) {
    warmRead.push(await time(readAll));
    warmLoad.push(
      await time(async () => {
        const rt = createNodeRuntime({ storeRoot: warmStore, ...quiet });
        const p = await rt.loadPipeline({ origin: origin.url, model: 'bench', fingerprint: artifact.fingerprint, device: 'cpu' });
        warmSources.add(rt.engine.lastSource);
        await p.dispose();
      }),
    );
  }
  // The fill fetched the manifest and each blob once; the warm loads nothing.
  if (origin.total() !== 1 + refs.length) throw new Error(`warm loads touched the network: ${origin.total()} requests`);

  // Where warm time would go without the store's checks: re-hashing every blob, and a session
  // from memory instead of the store's files (the loader now does neither on a warm load).
  const files = (await readAll()).map((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
  const hashMs = median(
    await (async () => {
      const xs: number[] = [];
      for (let i = 0; i < 3; i++) {
        const limit = pLimit(4);
        xs.push(await time(() => Promise.all(files.map((f) => limit(() => sha256(f))))));
      }
      return xs;
    })(),
  );
  const store = new DiskStore(warmStore, {});
  const stored = await Promise.all(refs.map((r) => store.get(r.digest)));
  const sessionMs = async (engine: OrtNodeEngine, blobs: Uint8Array[]) => {
    const shards = artifact.manifest.shards.map((s, i) => ({ path: s.digest.slice(7), data: blobs[i + 1] }));
    const xs: number[] = [];
    for (let i = 0; i < 3; i++) xs.push(await time(async () => (await engine.create(blobs[0], shards, 'cpu')).release()));
    return median(xs);
  };
  const fromFilesMs = await sessionMs(new OrtNodeEngine({ fileOf: (b) => store.fileOf(b) }), stored as Uint8Array[]);
  const fromMemoryMs = await sessionMs(new OrtNodeEngine(), files);

  // Cold: empty store every time, against a plain download of the same blobs.
  const download = () => {
    const limit = pLimit(4);
    return Promise.all(refs.map((r) => limit(async () => new Uint8Array(await (await fetch(`${origin.url}/${blobKey(r.digest)}`)).arrayBuffer()))));
  };
  const coldLoad: number[] = [];
  const coldDownload: number[] = [];
  /** Until the pipeline is usable (store writes still running behind it). */
  const coldUntilReady: number[] = [];
  for (let i = 0; i < runs; i++) {
    coldDownload.push(await time(download));
    const store = join(work, `cold-store-${i}`);
    let loadedMs = 0;
    coldLoad.push(
      await time(async () => {
        const rt = createNodeRuntime({ storeRoot: store, ...quiet });
        const p = await rt.loadPipeline({ origin: origin.url, model: 'bench', fingerprint: artifact.fingerprint, device: 'cpu' });
        loadedMs = performance.now();
        await p.dispose();
        await rt.flush(); // counted: a cold load is done when the next start is warm
      }),
    );
    coldUntilReady.push(coldLoad.at(-1)! - (performance.now() - loadedMs));
    await rm(store, { recursive: true, force: true });
  }

  const mib = (bytes / 2 ** 20).toFixed(1);
  const f = (ms: number) => `${ms.toFixed(1)} ms`;
  const warm = median(warmLoad) / median(warmRead);
  const cold = median(coldLoad) / median(coldDownload);
  console.log(`artifact: ${mib} MiB in ${refs.length} blobs (${padShards} pad shards of ${SHARD_MIB} MiB), median of ${runs}`);
  console.log(`warm: load ${f(median(warmLoad))} (weights from ${[...warmSources].join(', ')}; mapped files are paged in as onnxruntime touches them)  readFile ${f(median(warmRead))}`);
  console.log(`  for scale: sha256 of all blobs (not done: the disk store vouches) ${f(hashMs)}; session from store files ${f(fromFilesMs)} (from memory ${f(fromMemoryMs)})`);
  console.log(`cold: load ${f(median(coldLoad))} incl. store writes (usable after ${f(median(coldUntilReady))})  plain download ${f(median(coldDownload))}`);
  console.log(`BENCH node warm_ratio=${warm.toFixed(2)} cold_ratio=${cold.toFixed(2)}`);
} finally {
  await origin.close();
  await rm(work, { recursive: true, force: true });
}
