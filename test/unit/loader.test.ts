/**
 * The runtime-neutral loader (common/loader) in Node: a MemoryStore as the persistent tier,
 * onnxruntime-node as the engine, the sample artifact from `fuseload build` behind a real
 * local HTTP origin that counts requests.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Digest, sha256 } from '../../common/digest.ts';
import { isFuseloadError } from '../../common/errors.ts';
import type { OffThreadHasher } from '../../common/loader/blobs.ts';
import { type Loader, type LoaderRuntime, createLoader } from '../../common/loader/index.ts';
import type { Engine, LoadPipelineOptions, Pipeline, ProgressEvent, TensorLike } from '../../common/pipeline.ts';
import { sampleFeeds } from '../../common/sample-input.ts';
import { type BlobKind, MemoryStore, type TagHint } from '../../common/store.ts';
import { type SampleArtifact, sampleArtifact } from '../support/artifact.ts';
import { type Origin, startOrigin } from '../support/origin.ts';

let artifact: SampleArtifact;
let origin: Origin;

beforeAll(async () => {
  artifact = await sampleArtifact();
  origin = await startOrigin({ root: artifact.dir });
});
afterAll(() => origin?.close());

/** onnxruntime-node on CPU; 'cuda' fails the way a machine without a GPU does, so fallback is exercised. */
function cpuEngine(log: string[] = []): Engine {
  return {
    providers: (device) => (device === 'auto' ? ['cuda', 'cpu'] : device === 'cpu' || device === 'cuda' ? [device] : []),
    async create(graph, externalData, provider) {
      log.push(provider);
      if (provider === 'cuda') throw new Error('no CUDA device in this test machine');
      const session = await ort.InferenceSession.create(graph, { executionProviders: ['cpu'], externalData, logSeverityLevel: 3 });
      return {
        inputNames: session.inputNames,
        outputNames: session.outputNames,
        async run(feeds) {
          const inputs = Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, new ort.Tensor('float32', t.data as Float32Array, t.dims)]));
          const out = await session.run(inputs);
          return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { type: t.type, dims: t.dims, data: t.data as TensorLike['data'] }]));
        },
        release: () => session.release(),
      };
    },
  };
}

function loader(overrides: Partial<LoaderRuntime> = {}) {
  const warnings: string[] = [];
  const store = (overrides.store as MemoryStore | undefined) ?? new MemoryStore();
  const l: Loader = createLoader({ engine: cpuEngine(), store, warn: (m) => warnings.push(m), ...overrides });
  return { loader: l, store, warnings };
}

const opts = (extra: Partial<LoadPipelineOptions> = {}): LoadPipelineOptions => ({ origin: origin.url, model: artifact.name, tag: artifact.tag, device: 'auto', ...extra });
const blobGets = () => artifact.blobs.map((b) => origin.gets(artifact.blobPath(b.digest)));
const feeds = sampleFeeds({ seed: 3, width: 16, height: 16 });
/** A run's outputs, as plain arrays by name. */
const runOnce = async (p: Pipeline) => Object.fromEntries(Object.entries(await p.run(feeds)).map(([name, t]) => [name, Array.from(t.data as Float32Array)]));

describe('createLoader', () => {
  test('cold load: every blob from the network once, verified, stored; provider fallback recorded', async () => {
    origin.reset();
    const { loader: l, store } = loader();
    const events: ProgressEvent[] = [];
    const p = await l.loadPipeline(opts({ onProgress: (e) => events.push(e) }));
    await l.flush();
    expect(p.info.fingerprint).toBe(artifact.fingerprint);
    expect(p.info.provider).toBe('cpu');
    expect(p.info.fallbacks).toEqual([{ provider: 'cuda', reason: 'no CUDA device in this test machine' }]);
    expect(Object.values(p.info.sources)).toEqual(artifact.blobs.map(() => 'network'));
    expect(p.info.bytesFetched).toBe(artifact.bytes);
    expect(blobGets()).toEqual(artifact.blobs.map(() => 1));
    for (const b of artifact.blobs) expect(await store.has(b.digest)).toBe(true);
    expect(await store.has(artifact.fingerprint)).toBe(true); // the manifest, keyed by its fingerprint

    const out = await p.run(feeds);
    expect(out.image.dims).toEqual([1, 3, 16, 16]);

    const aggregate = events.filter((e) => e.aggregate && e.phase !== 'manifest').map((e) => e.aggregate!.loaded);
    expect(aggregate).toEqual([...aggregate].sort((a, b) => a - b));
    expect(events.filter((e) => e.phase === 'session').at(-1)).toMatchObject({ phase: 'session', loaded: 1, total: 1, aggregate: { loaded: artifact.bytes, total: artifact.bytes } });
    await p.dispose();
  });

  test('warm load from the store: no blob requests; a pinned fingerprint makes no request at all', async () => {
    const store = new MemoryStore();
    const cold = loader({ store }).loader;
    await (await cold.loadPipeline(opts())).dispose();
    await cold.flush();
    origin.reset();
    const warm = await loader({ store }).loader.loadPipeline(opts());
    expect(Object.values(warm.info.sources)).toEqual(artifact.blobs.map(() => 'store'));
    expect(blobGets()).toEqual(artifact.blobs.map(() => 0));
    origin.reset();
    const pinned = await loader({ store }).loader.loadPipeline(opts({ tag: undefined, fingerprint: artifact.fingerprint }));
    expect(origin.requests).toHaveLength(0);
    expect(pinned.info.bytesFetched).toBe(0);
  });

  test('pipeline cache: same (fingerprint, overlays, provider) is built once; released with its last handle', async () => {
    const log: string[] = [];
    const { loader: l } = loader({ engine: cpuEngine(log) });
    const [a, b] = await Promise.all([l.loadPipeline(opts()), l.loadPipeline(opts())]);
    const c = await l.loadPipeline(opts({ device: 'cpu' })); // 'auto' ran on cpu, so this is a hit too
    expect(log).toEqual(['cuda', 'cpu']);
    // The two concurrent loads race to resolve the tag; whichever gets there first builds, the other shares it.
    expect([a.info.fromPipelineCache, b.info.fromPipelineCache].sort()).toEqual([false, true]);
    expect(c.info.fromPipelineCache).toBe(true);
    expect(c.info.sources[artifact.manifest.graph.digest]).toBe('memory');
    await a.dispose();
    await b.dispose();
    expect((await c.run(feeds)).image.dims).toEqual([1, 3, 16, 16]);
    await c.dispose();
    await expect(c.run(feeds)).rejects.toThrow(/run after dispose/);
    await l.loadPipeline(opts());
    expect(log).toEqual(['cuda', 'cpu', 'cuda', 'cpu']); // rebuilt from the memory tier after release
    expect(l.memory.size).toBe(artifact.blobs.length + 1);
    await l.clearMemory();
    expect(l.memory.size).toBe(0);
  });

  test('a corrupt blob in the store is dropped and fetched again', async () => {
    const store = new MemoryStore();
    const first = loader({ store }).loader;
    const clean = await runOnce(await first.loadPipeline(opts()));
    await first.flush();
    const victim = artifact.manifest.shards[0].digest;
    const bad = (await store.get(victim))!.slice();
    bad[0] ^= 1;
    await store.put(victim, bad);
    origin.reset();
    const { loader: l, warnings } = loader({ store });
    const p = await l.loadPipeline(opts());
    // The load resolved with the shard still hashing; the first run waits for it and gets the refetched bytes.
    expect(await runOnce(p)).toEqual(clean);
    await l.flush();
    expect(p.info.sources[victim]).toBe('network');
    expect(origin.gets(artifact.blobPath(victim))).toBe(1);
    expect(warnings.join('\n')).toContain(`blob ${victim} in memory is corrupt`);
    expect((await store.get(victim))![0]).not.toBe(bad[0]);
  });

  test('a load resolves while its shards still hash; every run waits for their digests, and a mismatch found then rebuilds first', async () => {
    const clean = await runOnce(await loader().loader.loadPipeline(opts()));
    // A hasher whose shard digests come back when the test says, and wrong once for one shard (real
    // SHA-256 of what it was given otherwise): the only way to hold a check open from outside.
    const shards = new Set<string>(artifact.manifest.shards.map((s) => s.digest));
    const victim = artifact.manifest.shards[0].digest;
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let lies = 1;
    const hasher: OffThreadHasher = {
      blob: async (blob) => sha256(new Uint8Array(await blob.arrayBuffer())),
      stream: () => {
        const chunks: Uint8Array[] = [];
        return {
          update: (chunk) => void chunks.push(chunk.slice()),
          async digest() {
            const d = await sha256(Buffer.concat(chunks));
            if (shards.has(d)) await held;
            return d === victim && lies-- > 0 ? (`sha256:${'0'.repeat(64)}` as Digest) : d;
          },
          abandon: () => {},
        };
      },
    };
    origin.reset();
    const log: string[] = [];
    const { loader: l, warnings } = loader({ engine: cpuEngine(log), hasher });
    const p = await l.loadPipeline(opts());
    expect(log).toEqual(['cuda', 'cpu']); // built, its shards not yet checked
    let ran = false;
    const running = runOnce(p).then((out) => ((ran = true), out));
    const direct = p.sessions.model!.run(feeds).then(() => void (ran = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(ran).toBe(false);
    release();
    // The shard that did not match released that session and was fetched again; the run went to the second.
    expect(await running).toEqual(clean);
    await direct;
    expect(log).toEqual(['cuda', 'cpu', 'cuda', 'cpu']);
    expect(origin.gets(artifact.blobPath(victim))).toBe(2);
    expect(p.info.sources[victim]).toBe('network');
    expect(warnings.filter((w) => !/cuda could not run it/.test(w))).toEqual([]);
    await p.verified();
  });

  test('a dropped connection resumes with Range + If-Range; 5xx answers are retried', async () => {
    const shard = artifact.manifest.shards[0];
    const path = artifact.blobPath(shard.digest);
    origin.reset();
    origin.cutAfter(path, 5000);
    origin.failWith(artifact.blobPath(artifact.manifest.graph.digest), 503, 2);
    const p = await loader().loader.loadPipeline(opts());
    await p.verified();
    const gets = origin.requests.filter((r) => r.path === path);
    expect(gets.map((r) => [r.range, r.status])).toEqual([
      [null, 200],
      ['bytes=5000-', 206],
    ]);
    expect(gets[1].ifRange).toBe(`"${shard.digest.slice(7)}"`);
    expect(origin.bytesServed(path)).toBe(shard.size);
    expect(origin.gets(artifact.blobPath(artifact.manifest.graph.digest))).toBe(3);
    expect(p.info.bytesFetched).toBe(artifact.bytes);
  });

  test('a store that cannot write (quota) leaves the load running from memory with a warning', async () => {
    const store = new MemoryStore();
    store.put = async () => {
      throw new DOMException('quota exceeded', 'QuotaExceededError');
    };
    const { loader: l, warnings } = loader({ store });
    const p = await l.loadPipeline(opts());
    await l.flush();
    expect(p.info.provider).toBe('cpu');
    expect(warnings.filter((w) => /running from memory/.test(w))).toHaveLength(artifact.blobs.length);
    expect(store.size).toBe(0);
  });

  test('a manifest that does not hash to its fingerprint is refused', async () => {
    const corrupting: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (!String(input).includes('/manifests/')) return response;
      const bytes = new Uint8Array(await response.arrayBuffer());
      bytes[bytes.length - 2] = 0x20;
      return new Response(bytes, { status: 200 });
    };
    const error = await loader({ fetch: corrupting }).loader.loadPipeline(opts()).catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('digest-mismatch');
  });

  test('a blob corrupted in transit is fetched again once; corrupt twice, the load fails with digest-mismatch', async () => {
    const shard = artifact.manifest.shards[0];
    const corruptions = { left: 1 };
    const corrupting: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (!String(input).endsWith(shard.digest.slice(7)) || corruptions.left-- <= 0) return response;
      const bytes = new Uint8Array(await response.arrayBuffer());
      bytes[10] ^= 0xff;
      return new Response(bytes, { status: 200, headers: response.headers });
    };
    origin.reset();
    const { loader: ok, store } = loader({ fetch: corrupting });
    await (await ok.loadPipeline(opts())).verified();
    await ok.flush();
    expect(origin.gets(artifact.blobPath(shard.digest))).toBe(2);
    expect(await store.has(shard.digest)).toBe(true);

    corruptions.left = 5;
    origin.reset();
    const { loader: bad, store: empty } = loader({ fetch: corrupting });
    // The load resolves (its sessions are built while the shard hashes); nothing it built gives output.
    const p = await bad.loadPipeline(opts());
    const error = await p.verified().catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('digest-mismatch');
    const ran = await runOnce(p).catch((e) => e);
    expect(isFuseloadError(ran) && ran.code).toBe('digest-mismatch');
    expect(error.message).toMatch(/bytes hash to sha256:[0-9a-f]{64}, expected/);
    expect(origin.gets(artifact.blobPath(shard.digest))).toBe(2);
    await bad.flush();
    expect(await empty.has(shard.digest)).toBe(false);
  });

  test('an abort stops the load and stores no partial blob', async () => {
    const shard = artifact.manifest.shards[0];
    origin.reset();
    origin.stallAfter(artifact.blobPath(shard.digest), 1000);
    const controller = new AbortController();
    const { loader: l, store } = loader();
    const error = await l
      .loadPipeline(opts({ signal: controller.signal, onProgress: (e) => e.file === shard.digest && e.loaded >= 1000 && controller.abort() }))
      .catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('aborted');
    await l.flush();
    expect(await store.has(shard.digest)).toBe(false);
    for await (const entry of store.entries()) {
      const ref = artifact.blobs.find((b) => b.digest === entry.digest);
      if (ref) expect(entry.size).toBe(ref.size);
    }
  });

  test('held-back store writes (deferStoreWrites) start only once every blob of the load is verified', async () => {
    const blobDigests = new Set<string>(artifact.blobs.map((b) => b.digest));
    const order: string[] = [];
    class RecordingStore extends MemoryStore {
      override async put(digest: Digest, bytes: Uint8Array) {
        if (blobDigests.has(digest)) order.push('put');
        return super.put(digest, bytes);
      }
    }
    const store = new RecordingStore();
    const { loader: l } = loader({ store, deferStoreWrites: true });
    origin.reset();
    const p = await l.loadPipeline(opts({ onProgress: (e) => void (e.phase === 'verify' && e.loaded === e.total && order.push('verified')) }));
    await l.flush();
    expect(order.filter((x) => x === 'verified')).toHaveLength(artifact.blobs.length);
    expect(order.filter((x) => x === 'put')).toHaveLength(artifact.blobs.length);
    expect(order.lastIndexOf('verified')).toBeLessThan(order.indexOf('put'));
    for (const b of artifact.blobs) expect(await store.has(b.digest)).toBe(true);
    await p.dispose();
  });

  test('a fetched manifest is stored behind the load: loadPipeline does not wait for its write; flush does', async () => {
    // A fake only in its timing: IndexedDB queues the manifest's write behind the blobs' own, which
    // cannot be made slow on purpose here, so this store holds the manifest write until the test lets it go.
    let letGo!: () => void;
    const held = new Promise<void>((resolve) => (letGo = resolve));
    let manifestWritten = false;
    class SlowManifestStore extends MemoryStore {
      override async put(digest: Digest, bytes: Uint8Array, kind?: BlobKind) {
        if (kind === 'manifest') {
          await held;
          manifestWritten = true;
        }
        return super.put(digest, bytes);
      }
    }
    const store = new SlowManifestStore();
    const { loader: l } = loader({ store });
    const p = await l.loadPipeline(opts());
    await p.verified();
    expect(manifestWritten).toBe(false);
    for (const b of artifact.blobs) expect(await store.has(b.digest)).toBe(true);
    let flushed = false;
    const flushing = l.flush().then(() => void (flushed = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(flushed).toBe(false);
    letGo();
    await flushing;
    expect(manifestWritten).toBe(true);
    expect(await store.has(artifact.fingerprint)).toBe(true);
    // The next load finds it: a pinned fingerprint makes no request at all.
    origin.reset();
    const again = await loader({ store }).loader.loadPipeline(opts({ tag: undefined, fingerprint: artifact.fingerprint }));
    expect(origin.requests).toHaveLength(0);
    await again.dispose();
    await p.dispose();
  });

  test('two loaders sharing a store and locks, both holding writes back, fetch each blob once and both finish', async () => {
    // FIFO locks shared by both "tabs", telling a waiter's loader before it waits (as Web Locks do here).
    const tails = new Map<string, Promise<void>>();
    const withLock = async <T>(name: string, fn: () => Promise<T>, onContended?: () => void): Promise<T> => {
      const previous = tails.get(name);
      let release!: () => void;
      const mine = new Promise<void>((resolve) => (release = resolve));
      const tail = (previous ?? Promise.resolve()).then(() => mine);
      tails.set(name, tail);
      if (previous) {
        onContended?.();
        await previous;
      }
      try {
        return await fn();
      } finally {
        release();
        if (tails.get(name) === tail) tails.delete(name);
      }
    };
    const store = new MemoryStore();
    const [a, b] = [loader({ store, withLock, deferStoreWrites: true }).loader, loader({ store, withLock, deferStoreWrites: true }).loader];
    origin.reset();
    const [pa, pb] = await Promise.all([a.loadPipeline(opts({ device: 'cpu' })), b.loadPipeline(opts({ device: 'cpu' }))]);
    await Promise.all([a.flush(), b.flush()]);
    expect(blobGets()).toEqual(artifact.blobs.map(() => 1));
    for (const blob of artifact.blobs) expect([pa.info.sources[blob.digest], pb.info.sources[blob.digest]].sort()).toEqual(['network', 'store']);
    await pa.dispose();
    await pb.dispose();
  });

  test('one lock per network blob; none for blobs already stored', async () => {
    const locked: string[] = [];
    const store = new MemoryStore();
    const withLock = async <T>(name: string, fn: () => Promise<T>) => {
      locked.push(name);
      return fn();
    };
    const first = loader({ store, withLock }).loader;
    await first.loadPipeline(opts());
    await first.flush();
    expect(locked.sort()).toEqual(artifact.blobs.map((b) => `fuseload:blob:${b.digest.slice(7)}`).sort());
    locked.length = 0;
    await loader({ store, withLock }).loader.loadPipeline(opts());
    expect(locked).toEqual([]);
  });

  test('a malformed load-time LoRA is refused before any request (overlays: test/node/overlay.test.ts)', async () => {
    origin.reset();
    const error = await loader()
      .loader.loadPipeline(opts({ loras: [{ digest: `sha256:${'0'.repeat(64)}` as Digest, url: 'https://example.com/x.safetensors', scale: 1 }] }))
      .catch((e) => e);
    expect(isFuseloadError(error) && error.code).toBe('bad-input');
    expect(origin.requests).toHaveLength(0);
  });

  test("a store's tag hint is only a hint: one naming a manifest not here, one whose manifest bytes are corrupt, or a tag that is gone, loads or fails as without it", async () => {
    // IdbStore keeps hints in IndexedDB (test/browser/load-paths.test.ts reads ahead by them); here, a Map.
    class HintingStore extends MemoryStore {
      readonly hints = new Map<string, TagHint>();
      async tagHint(url: string) {
        return this.hints.get(url) ?? null;
      }
      async setTagHint(url: string, hint: TagHint) {
        this.hints.set(url, hint);
      }
    }
    const store = new HintingStore();
    const tagUrl = `${origin.url}/tags/${artifact.name}/${artifact.tag}.json`;
    const stale = `sha256:${'0'.repeat(64)}` as Digest;
    store.hints.set(tagUrl, { fingerprint: stale });
    const { loader: l, warnings } = loader({ store });
    const p = await l.loadPipeline(opts({ device: 'cpu' }));
    await l.flush();
    expect(p.info.fingerprint).toBe(artifact.fingerprint);
    expect(warnings).toEqual([]);
    // The hint follows the tag, with the manifest's bytes kept beside the fingerprint.
    const manifestFile = new Uint8Array(await readFile(join(artifact.dir, 'manifests', 'sha256', `${artifact.fingerprint.slice(7)}.json`)));
    expect(store.hints.get(tagUrl)).toEqual({ fingerprint: artifact.fingerprint, manifest: manifestFile });
    await p.dispose();
    // The right fingerprint with corrupt manifest bytes: they fail its hash, so the load goes on as without a
    // hint, and the hint is written again whole.
    const corrupt = manifestFile.slice();
    corrupt[corrupt.length - 2] ^= 1;
    store.hints.set(tagUrl, { fingerprint: artifact.fingerprint, manifest: corrupt });
    const again = loader({ store });
    const q = await again.loader.loadPipeline(opts({ device: 'cpu' }));
    await again.loader.flush();
    expect(q.info.fingerprint).toBe(artifact.fingerprint);
    expect(again.warnings).toEqual([]);
    expect(store.hints.get(tagUrl)).toEqual({ fingerprint: artifact.fingerprint, manifest: manifestFile });
    await q.dispose();
    // The hint names a stored manifest, but the tag is not there: the tag's answer is the load's.
    store.hints.set(`${origin.url}/tags/${artifact.name}/nope.json`, { fingerprint: artifact.fingerprint });
    await expect(loader({ store }).loader.loadPipeline(opts({ tag: 'nope' }))).rejects.toThrow(new RegExp(`^${origin.url}/tags/sample/nope\\.json: HTTP 404$`));
  });

  test('bad inputs fail in one line naming the input', async () => {
    await expect(loader().loader.loadPipeline(opts({ origin: 'not a url' }))).rejects.toThrow(/^origin: "not a url" is not an absolute URL$/);
    await expect(loader().loader.loadPipeline(opts({ model: '../x' }))).rejects.toThrow(/model: "\.\.\/x" is not a model name/);
    await expect(loader().loader.loadPipeline(opts({ tag: 'nope' }))).rejects.toMatchObject({ code: 'not-found' });
    await expect(loader().loader.loadPipeline(opts({ model: 'other', tag: undefined, fingerprint: artifact.fingerprint }))).rejects.toThrow(
      /manifest is for model "sample", not "other"/,
    );
  });
});

describe('the memory tier', () => {
  const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}` as Digest;
  test('keeps at most its byte budget, dropping the least recently used; a blob over the budget is not kept', async () => {
    const m = new MemoryStore(100);
    await m.put(d(1), new Uint8Array(40));
    await m.put(d(2), new Uint8Array(40));
    await m.get(d(1)); // 1 is now the most recently used
    await m.put(d(3), new Uint8Array(40));
    expect([await m.has(d(1)), await m.has(d(2)), await m.has(d(3))]).toEqual([true, false, true]);
    expect(m.bytes).toBe(80);
    await m.put(d(4), new Uint8Array(101));
    expect(await m.has(d(4))).toBe(false);
    await m.put(d(1), new Uint8Array(10)); // replacing a blob counts its new size only
    expect(m.bytes).toBe(50);
  });

  test('a loader with a memory budget holds no more than it, and a later load reads what was dropped from the store', async () => {
    const budget = Math.max(...artifact.blobs.map((b) => b.size)) + 1024;
    const { loader: l, store } = loader({ memoryBudgetBytes: budget });
    const first = await l.loadPipeline(opts());
    await l.flush();
    expect(l.memory.bytes).toBeLessThanOrEqual(budget);
    expect(l.memory.size).toBeLessThan(artifact.blobs.length + 1);
    await first.dispose(); // the session goes with its last handle: the next load builds again
    origin.reset();
    const again = await l.loadPipeline(opts());
    const sources = Object.values(again.info.sources);
    expect(sources).toContain('store');
    expect(sources).not.toContain('network');
    expect(blobGets().every((n) => n === 0)).toBe(true);
    expect((await again.run(feeds)).image.dims).toEqual([1, 3, 16, 16]);
    await again.dispose();
    expect(await store.has(artifact.manifest.graph.digest)).toBe(true);
  });
});
