import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex, sha256 } from '../../common/digest.ts';
import { blobKey } from '../../common/keys.ts';
import { createLoader } from '../../common/loader/index.ts';
import type { Provider } from '../../common/pipeline.ts';
import { sampleFeeds } from '../../common/sample-input.ts';
import { createNodeRuntime, type NodeRuntime } from '../../tools/runtime/index.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { writeTinyArtifact, type WrittenArtifact } from '../support/node-onnx.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';

let originDir: string;
let artifact: WrittenArtifact;
let origin: CountingOrigin;
const temps: string[] = [];

async function freshStore(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fuseload-node-store-'));
  temps.push(dir);
  return dir;
}

const runtimes: NodeRuntime[] = [];
function runtime(storeRoot: string, warnings: string[] = []): NodeRuntime {
  const rt = createNodeRuntime({ storeRoot, maxBytes: undefined, warn: (m) => warnings.push(m) });
  runtimes.push(rt);
  return rt;
}

beforeAll(async () => {
  originDir = await mkdtemp(join(tmpdir(), 'fuseload-node-origin-'));
  temps.push(originDir);
  artifact = await writeTinyArtifact(originDir, { name: 'tiny', padShards: 2, padBytes: 256 * 1024 });
  origin = await startCountingOrigin(originDir);
});

afterAll(async () => {
  for (const rt of runtimes) await rt.flush(); // store-behind writes, before the stores go
  await origin.close();
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

/** A cold load into `root`, waited out until the store holds everything. */
async function fill(root: string): Promise<void> {
  const rt = runtime(root);
  await (await rt.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' })).dispose();
  await rt.flush();
}

const blobBytes = () => [...artifact.blobs.values()].reduce((n, b) => n + b.byteLength, 0);

describe('Node runtime: disk store', () => {
  it('a cold load fetches every blob once and fills the store', async () => {
    const root = await freshStore();
    origin.reset();
    const rt = runtime(root);
    const p = await rt.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' });
    await rt.flush(); // blobs are stored behind the load
    expect(Object.values(p.info.sources)).toEqual(Array(artifact.blobs.size).fill('network'));
    expect(p.info.bytesFetched).toBe(blobBytes());
    for (const digest of artifact.blobs.keys()) {
      expect(origin.requests.get(`/${blobKey(digest)}`)).toBe(1);
      expect(await sha256(await readFile(join(root, blobKey(digest))))).toBe(digest);
    }
    expect(await readFile(join(root, 'manifests', 'sha256', `${digestHex(artifact.fingerprint)}.json`))).toEqual(
      Buffer.from(artifact.manifestBytes),
    );
    await p.dispose();
  });

  it('a warm load by tag asks only for the tag; by fingerprint it makes no request, even with the origin gone', async () => {
    const root = await freshStore();
    await fill(root);

    origin.reset();
    const byTag = await runtime(root).loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' });
    expect([...origin.requests.keys()]).toEqual(['/tags/tiny/latest.json']);
    expect(Object.values(byTag.info.sources)).toEqual(Array(artifact.blobs.size).fill('store'));
    expect(byTag.info.bytesFetched).toBe(0);

    origin.reset();
    const byFingerprint = await runtime(root).loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    expect(origin.total()).toBe(0);

    // Nothing listens here: any request would fail the load.
    const offline = await runtime(root).loadPipeline({ origin: 'http://127.0.0.1:9', model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    expect(offline.info.bytesFetched).toBe(0);
    for (const p of [byTag, byFingerprint, offline]) await p.dispose();
  });

  it('a corrupt or truncated store file is detected and fetched again, and the store is repaired', async () => {
    const root = await freshStore();
    await fill(root);
    const [graph, shard0, shard1] = [...artifact.blobs.keys()];
    const garbled = Buffer.from(artifact.blobs.get(shard0)!);
    garbled[3] ^= 0xff;
    await writeFile(join(root, blobKey(shard0)), garbled);
    await truncate(join(root, blobKey(shard1)), 10);

    origin.reset();
    const warnings: string[] = [];
    const rt = runtime(root, warnings);
    const p = await rt.loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    await rt.flush();
    expect(warnings.filter((w) => /is corrupt/.test(w))).toHaveLength(2);
    expect(p.info.sources[graph]).toBe('store');
    expect(p.info.sources[shard0]).toBe('network');
    expect(p.info.sources[shard1]).toBe('network');
    expect(origin.requests.get(`/${blobKey(shard0)}`)).toBe(1);
    expect(origin.requests.get(`/${blobKey(shard1)}`)).toBe(1);
    expect(origin.total()).toBe(2);
    for (const d of [shard0, shard1]) expect(await sha256(await readFile(join(root, blobKey(d))))).toBe(d);
    await p.dispose();
  });

  it('the same runtime serves a second load from its pipeline cache', async () => {
    const rt = runtime(await freshStore());
    const a = await rt.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' });
    origin.reset();
    const b = await rt.loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    expect(b.info.fromPipelineCache).toBe(true);
    expect(origin.total()).toBe(0);
    await a.dispose();
    await b.dispose();
  });
});

describe('Node runtime: execution providers', () => {
  it('auto on a host without CUDA runs on cpu and says why CUDA was passed over', async () => {
    const warnings: string[] = [];
    const p = await runtime(await freshStore(), warnings).loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest' });
    expect(p.info.provider).toBe('cpu');
    expect(p.info.fallbacks).toHaveLength(1);
    expect(p.info.fallbacks[0].provider).toBe('cuda');
    expect(p.info.fallbacks[0].reason).toMatch(/^CUDA execution provider unavailable: .*(shared library|CUDA)/);
    expect(warnings.join('\n')).toMatch(/cuda could not run it/);
    await p.dispose();
  });

  it("device 'cuda' alone fails with one clear engine error", async () => {
    const load = runtime(await freshStore()).loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cuda' });
    await expect(load).rejects.toMatchObject({ name: 'FuseloadError', code: 'engine', message: expect.stringMatching(/cuda: CUDA execution provider unavailable/) });
  });

  it("device 'webgpu' is refused in Node before anything is fetched", async () => {
    expect(() => new OrtNodeEngine().providers('webgpu')).toThrow(/not available in Node/);
  });

  it('the pipeline computes exactly what onnxruntime-node computes on the artifact files directly', async () => {
    const p = await runtime(await freshStore()).loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' });
    const feeds = sampleFeeds({ seed: 7, width: 32, height: 24 });
    const ours = (await p.run(feeds)).image;
    // The graph blob as stored at the origin loads by path: its shards are its siblings.
    const direct = await ort.InferenceSession.create(join(originDir, blobKey(artifact.manifest.graph.digest)));
    const latent = feeds.latent;
    const theirs = (await direct.run({ latent: new ort.Tensor('float32', latent.data as Float32Array, latent.dims) })).image;
    expect(ours.dims).toEqual([1, 3, 24, 32]);
    expect(ours.data).toEqual(theirs.data);
    const values = ours.data as Float32Array;
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThanOrEqual(1);
    expect(new Set(values).size).toBeGreaterThan(10); // not a constant image
    await direct.release();
    await p.dispose();
  });
});

describe('Node runtime: how weights reach onnxruntime', () => {
  it("from the store's files when the store vouches for every blob, from memory for copies, same result", async () => {
    const root = await freshStore();
    const cold = runtime(root);
    await (await cold.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' })).dispose();
    // Cold, the session is built before the store-behind writes land: from memory.
    expect(cold.engine.lastSource).toBe('memory');
    await cold.flush();
    const rt = runtime(root);
    const p = await rt.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' });
    expect(rt.engine.lastSource).toBe('files');
    const feeds = sampleFeeds({ seed: 3, width: 8, height: 8 });
    const fromFiles = (await p.run(feeds)).image.data;

    const graph = (await rt.store.get(artifact.manifest.graph.digest))!;
    const shards = await Promise.all(artifact.manifest.shards.map(async (s) => ({ path: digestHex(s.digest), data: (await rt.store.get(s.digest))! })));
    // A copy of one shard (what a LoRA overlay hands over) is not the stored file.
    shards[1] = { ...shards[1], data: shards[1].data.slice() };
    const session = await rt.engine.create(graph, shards, 'cpu');
    expect(rt.engine.lastSource).toBe('memory');
    expect((await session.run(feeds)).image.data).toEqual(fromFiles);
    await session.release();
    await p.dispose();
  });

  it('from memory when a stored file changed after it was read', async () => {
    const rt = runtime(await freshStore());
    const graph = (await rt.store.get(artifact.manifest.graph.digest)) ?? artifact.blobs.get(artifact.manifest.graph.digest)!;
    await (await rt.loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' })).dispose();
    await rt.flush();
    const stored = (await rt.store.get(artifact.manifest.graph.digest))!;
    expect(await rt.store.fileOf(stored)).toBe(rt.store.path(artifact.manifest.graph.digest));
    expect(await rt.store.fileOf(graph)).toBeNull(); // never read from or written to the store
    await writeFile(rt.store.path(artifact.manifest.graph.digest), stored); // rewritten in place: mtime moves
    expect(await rt.store.fileOf(stored)).toBeNull();
  });

  it('a warm load reads no blob into memory and re-hashes none: onnxruntime gets the stored files', async () => {
    const root = await freshStore();
    await fill(root);
    const reference = (await (await runtime(await freshStore()).loadPipeline({ origin: origin.url, model: 'tiny', tag: 'latest', device: 'cpu' })).run(sampleFeeds({ seed: 5, width: 8, height: 8 }))).image.data;
    const rt = runtime(root);
    const phases = new Set<string>();
    const p = await rt.loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu', onProgress: (e) => phases.add(e.phase) });
    expect(rt.engine.lastSource).toBe('files');
    expect(Object.values(p.info.sources)).toEqual(Array(artifact.blobs.size).fill('store'));
    for (const digest of artifact.blobs.keys()) expect(await rt.loader.memory.has(digest)).toBe(false);
    expect(phases.has('verify')).toBe(false);
    expect((await p.run(sampleFeeds({ seed: 5, width: 8, height: 8 }))).image.data).toEqual(reference);
    await p.dispose();
  });

  it('a stored shard written into in place is detected on the next load and fetched again', async () => {
    const root = await freshStore();
    await fill(root);
    const victim = artifact.manifest.shards.at(-1)!.digest;
    const file = await open(join(root, blobKey(victim)), 'r+');
    await file.write(new Uint8Array([0xee]), 0, 1, 100); // one byte, size unchanged
    await file.close();

    origin.reset();
    const warnings: string[] = [];
    const rt = runtime(root, warnings);
    const p = await rt.loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    await rt.flush();
    expect(p.info.sources[victim]).toBe('network');
    for (const digest of artifact.blobs.keys()) if (digest !== victim) expect(p.info.sources[digest]).toBe('store');
    expect(origin.total()).toBe(1);
    expect(warnings.filter((w) => w.includes(victim) && /is corrupt/.test(w))).toHaveLength(1);
    expect(await sha256(await readFile(join(root, blobKey(victim))))).toBe(victim);
    await p.dispose();
  });

  it('a shard file gone between the store\'s check and the session: the load reads bytes instead and fetches it', async () => {
    const root = await freshStore();
    await fill(root);
    const victim = artifact.manifest.shards.at(-1)!.digest;
    const store = new DiskStore(root, {});
    // Another process evicts the shard after `locate` vouched for it, before onnxruntime opens it.
    class EvictedUnderfoot extends OrtNodeEngine {
      override async createFromFiles(graph: string, externalData: { path: string; file: string }[], provider: Provider) {
        await rm(store.path(victim), { force: true });
        return super.createFromFiles(graph, externalData, provider);
      }
    }
    const loader = createLoader({ engine: new EvictedUnderfoot(), store, warn: () => {} });
    origin.reset();
    const p = await loader.loadPipeline({ origin: origin.url, model: 'tiny', fingerprint: artifact.fingerprint, device: 'cpu' });
    await loader.flush();
    expect(p.info.sources[victim]).toBe('network');
    expect(origin.requests.get(`/${blobKey(victim)}`)).toBe(1);
    expect(origin.total()).toBe(1);
    expect(await sha256(await readFile(store.path(victim)))).toBe(victim);
    await p.dispose();
  });
});

describe('Node runtime: several processes at once', () => {
  it('three processes loading into one empty store download each blob once and all run', async () => {
    const { spawn } = await import('node:child_process');
    const root = await freshStore();
    const slow = await startCountingOrigin(originDir, { delayMs: 300 });
    try {
      const workers = [0, 1, 2].map(() =>
        spawn(process.execPath, ['--import', 'tsx', 'test/node/fixtures/load-worker.ts', slow.url, 'tiny', root], { stdio: ['pipe', 'pipe', 'pipe'] }),
      );
      const outputs = workers.map(
        (w) =>
          new Promise<{ lines: string[]; code: number | null; stderr: string }>((resolve) => {
            let out = '';
            let err = '';
            w.stdout.on('data', (d) => (out += d));
            w.stderr.on('data', (d) => (err += d));
            w.on('close', (code) => resolve({ lines: out.trim().split('\n'), code, stderr: err }));
          }),
      );
      // Start them together once every one has its runtime up.
      await Promise.all(workers.map((w) => new Promise<void>((resolve) => w.stdout.once('data', () => resolve()))));
      for (const w of workers) w.stdin.end('go\n');
      const results = await Promise.all(outputs);
      for (const r of results) expect(r.code, r.stderr).toBe(0);
      const reports = results.map((r) => JSON.parse(r.lines.at(-1)!) as { sources: Record<string, string>; first: number });
      for (const digest of artifact.blobs.keys()) {
        expect(slow.requests.get(`/${blobKey(digest)}`), digest).toBe(1);
        expect(await sha256(await readFile(join(root, blobKey(digest))))).toBe(digest);
        // One process fetched it; the others found it stored when they got the lock.
        expect(reports.map((r) => r.sources[digest]).sort()).toEqual(['network', 'store', 'store']);
      }
      expect(new Set(reports.map((r) => r.first)).size).toBe(1);
      const { readdir } = await import('node:fs/promises');
      expect((await readdir(join(root, 'blobs', 'sha256'))).sort()).toEqual([...artifact.blobs.keys()].map(digestHex).sort());
      expect((await stat(join(root, 'locks'))).isDirectory()).toBe(true);
    } finally {
      await slow.close();
    }
  });
});
