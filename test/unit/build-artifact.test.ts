/**
 * The artifact on disk: DESIGN.md layout, determinism, external data in one or several
 * files, shard packing, the build cache, and the CLI's report.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { decodeManifest, type Manifest, schema1 } from '../../common/manifest.ts';
import { build } from '../../tools/build/build.ts';
import { verifyDir } from '../../tools/commands/verify.ts';
import { decodeModel } from '../../tools/onnx/model.ts';
import { DiskStore, sha256File } from '../../tools/store/disk-store.ts';
import { BATCH, externalise, fixtureModel, IMAGE, LAYERS, loraFactors, loraFile, random, writeModel } from '../fixtures/models.ts';

const run = promisify(execFile);
const BIN = new URL('../../bin/fuseload.js', import.meta.url).pathname;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-artifact-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readManifest(path: string): Promise<Manifest> {
  return schema1(await decodeManifest(new Uint8Array(await readFile(path)), path));
}

async function listFiles(root: string): Promise<Record<string, Digest>> {
  const out: Record<string, Digest> = {};
  for (const sub of ['blobs/sha256', 'manifests/sha256']) {
    for (const name of await readdir(join(root, sub))) out[`${sub}/${name}`] = await sha256File(join(root, sub, name));
  }
  return out;
}

async function outputs(graphPath: string): Promise<Float32Array[]> {
  const session = await ort.InferenceSession.create(graphPath);
  const out = await session.run({
    x: new ort.Tensor('float32', random(11, BATCH * 16), [BATCH, 16]),
    img: new ort.Tensor('float32', random(12, 4 * IMAGE * IMAGE), [1, 4, IMAGE, IMAGE]),
  });
  await session.release();
  return LAYERS.map((_, i) => out[`y${i}`].data as Float32Array);
}

async function loraFixture(sub: string): Promise<{ base: string; a: string; b: string }> {
  const d = join(dir, sub);
  const base = await writeModel(d, 'base.onnx', fixtureModel({ dtype: 'float16' }));
  const a = join(d, 'a.safetensors');
  const b = join(d, 'b.safetensors');
  await writeFile(a, loraFile('kohya', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, i)])), 2));
  await writeFile(b, loraFile('peft', new Map(LAYERS.slice(2).map((l, i) => [l.module, loraFactors(l, 3, 50 + i)]))));
  return { base, a, b };
}

describe('artifact layout', () => {
  it('writes blobs/sha256/<hex> and manifests/sha256/<fingerprint>.json, every blob named by its digest', async () => {
    const { base, a } = await loraFixture('layout');
    const out = join(dir, 'layout', 'out');
    const report = await build({ base, loras: [{ path: a, scale: 1 }], name: 'fixture', out, store: null });
    const manifest = await readManifest(report.manifest);
    expect(report.manifest).toBe(join(out, 'manifests', 'sha256', `${digestHex(report.fingerprint)}.json`));
    expect(await sha256(new Uint8Array(await readFile(report.manifest)))).toBe(report.fingerprint);
    const files = await listFiles(out);
    for (const [path, digest] of Object.entries(files)) {
      if (path.startsWith('blobs/')) expect(path).toBe(`blobs/sha256/${digestHex(digest)}`);
    }
    // graph, shards and the LoRA file, nothing else
    const expected = new Set([manifest.graph.digest, ...manifest.shards.map((s) => s.digest), manifest.loras[0].digest]);
    expect(new Set(Object.values(files).filter((_, i) => Object.keys(files)[i].startsWith('blobs/')))).toEqual(expected);
    expect(manifest.loras[0].digest).toBe(await sha256(new Uint8Array(await readFile(a))));
    expect(manifest.base).toEqual({ digest: await sha256(new Uint8Array(await readFile(base))), source: 'base.onnx' });
    expect(manifest.build).toMatchObject({ tool: 'fuseload', alignment: 64, shardSize: 64 * 1024 * 1024, strict: false });

    // Every LoRA target is indexed with its module and the layout of the stored tensor.
    const byModule = Object.fromEntries(manifest.tensors.filter((t) => t.module).map((t) => [t.module, t.layout]));
    expect(byModule).toEqual({
      'blocks.0.attn1.to_q': 'io',
      'blocks.0.ff.net.0.proj': 'io',
      'blocks.0.ff.net.2': 'oi',
      'blocks.1.attn1.to_k': 'oi',
      'blocks.1.proj_in': 'oihw',
      'conv_out': 'oihw',
    });
    // The index points at the right bytes: compare with the base's initializer bytes for an untouched tensor.
    const baseModel = decodeModel(new Uint8Array(await readFile(base)), 'base');
    const bias = manifest.tensors.find((t) => t.name === 'blocks.0.ff.net.0.proj.bias');
    expect(bias).toBeUndefined(); // 80 bytes: tiny, no LoRA target, stays inline
    const shard = new Uint8Array(await readFile(join(out, 'blobs', 'sha256', digestHex(manifest.shards[0].digest))));
    const convOut = manifest.tensors.find((t) => t.module === 'blocks.1.proj_in')!;
    expect(convOut.offset % 64).toBe(0);
    const orig = baseModel.graph!.initializer!.find((t) => t.name === convOut.name)!;
    expect(convOut.length).toBe(orig.rawData!.length);
    expect(shard.subarray(convOut.offset, convOut.offset + convOut.length)).not.toEqual(orig.rawData); // merged
    await expect(verifyDir(out)).resolves.toMatchObject({ manifests: 1, blobs: expected.size });
  });

  it('gives the same bytes in two directories and the same fingerprint for permuted LoRA order, from any cwd', async () => {
    const { base, a, b } = await loraFixture('determinism');
    const one = await build({ base, loras: [{ path: a, scale: 0.5 }, { path: b, scale: 2 }], name: 'fixture', out: join(dir, 'det1'), store: null });
    const two = await build({ base, loras: [{ path: b, scale: 2 }, { path: a, scale: 0.5 }], name: 'fixture', out: join(dir, 'det2'), store: null });
    expect(two.fingerprint).toBe(one.fingerprint);
    expect(await listFiles(join(dir, 'det2'))).toEqual(await listFiles(join(dir, 'det1')));
    // Through the CLI, relative paths, another working directory: same fingerprint.
    const { stdout } = await run('node', [BIN, 'build', '--base', 'base.onnx', '--lora', 'b.safetensors:2', '--lora', 'a.safetensors:0.5', '--name', 'fixture', '--out', '../det3'], {
      cwd: join(dir, 'determinism'),
      env: { ...process.env, PIPELINE_STORE: join(dir, 'det-store') },
    });
    expect(stdout.trim()).toBe(one.fingerprint);
    // A different scale is a different artifact.
    const three = await build({ base, loras: [{ path: a, scale: 0.5 }, { path: b, scale: 1 }], name: 'fixture', out: join(dir, 'det4'), store: null });
    expect(three.fingerprint).not.toBe(one.fingerprint);
  });
});

describe('external data', () => {
  for (const files of [1, 3]) {
    it(`reads a base whose weights live in ${files} external file(s) and gives the same shards as the inline base`, async () => {
      const d = join(dir, `ext-${files}`);
      const inline = await writeModel(join(dir, 'ext-inline'), 'base.onnx', fixtureModel());
      const model = fixtureModel();
      await externalise(model, d, files);
      const base = await writeModel(d, 'base.onnx', model);
      const lora = join(d, 'a.safetensors');
      await writeFile(lora, loraFile('diffusers', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, i)]))));
      const ext = await build({ base, loras: [{ path: lora, scale: 1 }], name: 'fixture', out: join(d, 'out'), store: null });
      const inl = await build({ base: inline, loras: [{ path: lora, scale: 1 }], name: 'fixture', out: join(d, 'out-inline'), store: null });
      const me = await readManifest(ext.manifest);
      const mi = await readManifest(inl.manifest);
      expect(me.shards).toEqual(mi.shards);
      expect(me.tensors).toEqual(mi.tensors);
      // base.digest covers the external files: sha256 of canonical {graph, external[]}
      const graphDigest = await sha256(new Uint8Array(await readFile(base)));
      const extDigests = [];
      for (let f = 0; f < files; f++) extDigests.push(await sha256(new Uint8Array(await readFile(join(d, `weights-${f}.bin`)))));
      const expected = await sha256(new TextEncoder().encode(`{"external":${JSON.stringify(extDigests)},"graph":"${graphDigest}"}`));
      expect(me.base.digest).toBe(expected);
      // The graph blob runs as it is with its shards as siblings, and equals the inline build.
      const a = await outputs(join(d, 'out', 'blobs', 'sha256', digestHex(me.graph.digest)));
      const b = await outputs(join(d, 'out-inline', 'blobs', 'sha256', digestHex(mi.graph.digest)));
      expect(a).toEqual(b);
    });
  }

  it('packs shards of at most --shard-size, 64-byte aligned, never splitting a tensor', async () => {
    const base = await writeModel(join(dir, 'shards'), 'base.onnx', fixtureModel());
    const shardSize = 1500;
    const report = await build({ base, name: 'fixture', out: join(dir, 'shards', 'out'), shardSize, store: null });
    const m = await readManifest(report.manifest);
    expect(m.shards.length).toBeGreaterThan(1);
    for (const t of m.tensors) {
      expect(t.offset % 64).toBe(0);
      expect(t.offset + t.length).toBeLessThanOrEqual(m.shards[t.shard].size);
      // Only a tensor larger than the shard size may exceed it, alone in its shard.
      if (t.length > shardSize) expect(m.tensors.filter((u) => u.shard === t.shard)).toHaveLength(1);
    }
    for (const s of m.shards) {
      const alone = m.tensors.filter((t) => m.shards[t.shard] === s);
      if (alone.length > 1) expect(s.size).toBeLessThanOrEqual(shardSize);
    }
    const graph = decodeModel(new Uint8Array(await readFile(join(dir, 'shards', 'out', 'blobs', 'sha256', digestHex(m.graph.digest)))), 'graph');
    const locations = new Set(graph.graph!.initializer!.flatMap((t) => (t.externalData ?? []).filter((e) => e.key === 'location').map((e) => e.value)));
    expect(locations).toEqual(new Set(m.shards.map((s) => digestHex(s.digest))));
    const outs = await outputs(join(dir, 'shards', 'out', 'blobs', 'sha256', digestHex(m.graph.digest)));
    expect(outs).toEqual(await outputs(base));
  });
});

describe('build cache', () => {
  it('is hit on a rebuild with the same inputs, and a corrupted cached blob is rebuilt, not reused', async () => {
    const { base, a } = await loraFixture('cache');
    const store = new DiskStore(join(dir, 'cache-store'));
    const first = await build({ base, loras: [{ path: a, scale: 1 }], name: 'fixture', out: join(dir, 'cache', 'o1'), store });
    expect(first.cached).toBe(false);
    const second = await build({ base, loras: [{ path: a, scale: 1 }], name: 'fixture', out: join(dir, 'cache', 'o2'), store });
    expect(second.cached).toBe(true);
    expect(second.fingerprint).toBe(first.fingerprint);
    expect(second.loras[0].matched).toBe(first.loras[0].matched);
    expect(await listFiles(join(dir, 'cache', 'o2'))).toEqual(await listFiles(join(dir, 'cache', 'o1')));

    const m = await readManifest(first.manifest);
    await writeFile(store.path(m.shards[0].digest), 'corrupt');
    const third = await build({ base, loras: [{ path: a, scale: 1 }], name: 'fixture', out: join(dir, 'cache', 'o3'), store });
    expect(third.cached).toBe(false);
    expect(third.fingerprint).toBe(first.fingerprint);
    expect(await sha256File(store.path(m.shards[0].digest))).toBe(m.shards[0].digest);
  });
});

describe('build cache with external data', () => {
  it('hashes external data while building, and a hit stops the build and leaves no temp dir', async () => {
    const d = join(dir, 'cache-ext');
    const model = fixtureModel();
    await externalise(model, d, 2);
    const base = await writeModel(d, 'base.onnx', model);
    const store = new DiskStore(join(d, 'store'));
    const first = await build({ base, name: 'fixture', out: join(d, 'o1'), store });
    const second = await build({ base, name: 'fixture', out: join(d, 'o2'), store });
    expect([first.cached, second.cached]).toEqual([false, true]);
    expect(second.fingerprint).toBe(first.fingerprint);
    expect((await readdir(d)).filter((n) => n.includes('fuseload-'))).toEqual([]);
    // Changing the external data changes the base digest, so the cache misses.
    const bytes = new Uint8Array(await readFile(join(d, 'weights-1.bin')));
    bytes[bytes.length - 1] ^= 1;
    await writeFile(join(d, 'weights-1.bin'), bytes);
    const third = await build({ base, name: 'fixture', out: join(d, 'o3'), store });
    expect(third.cached).toBe(false);
    expect(third.fingerprint).not.toBe(first.fingerprint);
  });
});

describe('remote inputs', () => {
  it('fetches an http(s) base with its external data and a LoRA; the manifest names the URL without its query', async () => {
    const d = join(dir, 'remote');
    const model = fixtureModel();
    await externalise(model, d, 2);
    await writeModel(d, 'base.onnx', model);
    await writeFile(join(d, 'a.safetensors'), loraFile('kohya', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, i)])), 2));
    const server = createServer(async (req, res) => {
      const name = new URL(req.url!, 'http://x').pathname.split('/').pop()!;
      try {
        const body = await readFile(join(d, name));
        res.writeHead(200, { 'content-length': body.length }).end(body);
      } catch {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}/models`;
    try {
      const remote = await build({ base: `${origin}/base.onnx?token=abc`, loras: [{ path: `${origin}/a.safetensors`, scale: 1 }], name: 'fixture', out: join(d, 'out'), store: null });
      const local = await build({ base: join(d, 'base.onnx'), loras: [{ path: join(d, 'a.safetensors'), scale: 1 }], name: 'fixture', out: join(d, 'out-local'), store: null });
      const mr = await readManifest(remote.manifest);
      const ml = await readManifest(local.manifest);
      expect(mr.base).toEqual({ digest: ml.base.digest, source: `${origin}/base.onnx` });
      expect(mr.loras[0].source).toBe(`${origin}/a.safetensors`);
      expect(mr.shards).toEqual(ml.shards);
      await expect(build({ base: `${origin}/missing.onnx`, name: 'fixture', out: join(d, 'out-missing'), store: null })).rejects.toThrow(/\/models\/missing\.onnx: HTTP 404$/);
    } finally {
      server.close();
    }
  });
});

describe('CLI', () => {
  it('prints a --json report with fingerprint, manifest path and matched/unmatched per LoRA', async () => {
    const { base, a } = await loraFixture('cli');
    const extra = join(dir, 'cli', 'extra.safetensors');
    const factors = new Map([[LAYERS[0].module, loraFactors(LAYERS[0], 2, 1)], ['blocks.9.nowhere', loraFactors(LAYERS[0], 2, 2)]]);
    await writeFile(extra, loraFile('diffusers', factors));
    const out = join(dir, 'cli', 'out');
    const { stdout, stderr } = await run('node', [BIN, 'build', '--base', base, '--lora', `${a}:0.8`, '--lora', extra, '--name', 'fixture', '--out', out, '--json'], {
      env: { ...process.env, PIPELINE_STORE: join(dir, 'cli-store') },
    });
    expect(stderr).toBe('');
    const report = JSON.parse(stdout);
    expect(report.manifest).toBe(join(out, 'manifests', 'sha256', `${digestHex(report.fingerprint)}.json`));
    const bySource = Object.fromEntries(report.loras.map((l: { source: string }) => [l.source, l]));
    expect(bySource['a.safetensors']).toMatchObject({ scale: 0.8, format: 'kohya', matched: 18, unmatched: 0 });
    expect(bySource['extra.safetensors']).toMatchObject({ matched: 2, unmatched: 2, unmatchedKeys: ['unet.blocks.9.nowhere.lora.down.weight', 'unet.blocks.9.nowhere.lora.up.weight'] });
    const m = await readManifest(report.manifest);
    expect(m.loras.map((l) => [l.source, l.matched, l.unmatched])).toEqual(
      report.loras.map((l: { source: string; matched: number; unmatched: number }) => [l.source, l.matched, l.unmatched]),
    );
    const verify = await run('node', [BIN, 'verify', out]);
    expect(verify.stdout).toMatch(/^ok: 1 manifest/);
    const inspect = await run('node', [BIN, 'inspect', report.manifest, '--json']);
    expect(JSON.parse(inspect.stdout)).toMatchObject({ kind: 'manifest', name: 'fixture', shards: m.shards.length });
  });

  it('verify finds a tampered blob', async () => {
    const base = await writeModel(join(dir, 'tamper'), 'base.onnx', fixtureModel());
    const report = await build({ base, name: 'fixture', out: join(dir, 'tamper', 'out'), store: null });
    const m = await readManifest(report.manifest);
    const shard = join(dir, 'tamper', 'out', 'blobs', 'sha256', digestHex(m.shards[0].digest));
    const bytes = new Uint8Array(await readFile(shard));
    bytes[100] ^= 1;
    await writeFile(shard, bytes);
    await expect(verifyDir(join(dir, 'tamper', 'out'))).rejects.toThrow(/hashes to sha256:/);
    await mkdir(join(dir, 'tamper', 'empty'));
    await expect(verifyDir(join(dir, 'tamper', 'empty'))).rejects.toThrow(/not an artifact directory/);
  });
});
