import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobKey } from '../../common/keys.ts';
import { writeTinyArtifact, type WrittenArtifact } from '../support/node-onnx.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';

const BIN = new URL('../../bin/fuseload.js', import.meta.url).pathname;
let work: string;
let store: string;
let artifact: WrittenArtifact;
let origin: CountingOrigin;

async function fuseload(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], {
      env: { ...process.env, PIPELINE_STORE: store, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-cli-'));
  store = join(work, 'store');
  artifact = await writeTinyArtifact(join(work, 'origin'), { name: 'tiny' });
  origin = await startCountingOrigin(join(work, 'origin'));
});

afterAll(async () => {
  await origin.close();
  await rm(work, { recursive: true, force: true });
});

describe('fuseload generate', () => {
  it('writes a PNG of the requested size; with --fingerprint and a warm store it needs no origin', async () => {
    const out = join(work, 'a.png');
    const cold = await fuseload(['generate', '--origin', origin.url, '--model', 'tiny', '--seed', '5', '--width', '40', '--height', '24', '--out', out]);
    expect(cold.code, cold.stderr).toBe(0);
    expect(cold.stdout).toMatch(/a\.png: 40x24 sha256:[0-9a-f]{64} provider=cpu \(cuda unavailable\) fetched=/);
    const png = decode(await readFile(out));
    expect([png.width, png.height]).toEqual([40, 24]);
    expect(new Set(png.data.filter((_, i) => i % 4 === 1)).size).toBeGreaterThan(8);

    const offline = join(work, 'b.png');
    const warm = await fuseload(['generate', '--origin', 'http://127.0.0.1:9', '--model', 'tiny', '--fingerprint', artifact.fingerprint.slice(7), '--seed', '5', '--width', '40', '--height', '24', '--device', 'cpu', '--out', offline]);
    expect(warm.code, warm.stderr).toBe(0);
    expect(warm.stdout).toMatch(/fetched=0B/);
    expect(await readFile(offline)).toEqual(await readFile(out)); // same seed, same bytes
  });

  it.each([
    [['--device', 'cuda'], /^fuseload: tiny: no execution provider could run it: cuda: CUDA execution provider unavailable/],
    [['--width', '20'], /^fuseload: --width: 20 is not a multiple of 8/],
    [['--tag', 'latest', '--fingerprint', 'a'.repeat(64)], /^fuseload: --tag\/--fingerprint: give one, not both/],
    [['--lora', './no-such.safetensors:0.5'], /--lora.*"\.\/no-such\.safetensors" is not a URL, a sha256 digest or an existing file/],
    [['--fingerprint', 'zz'], /^fuseload: fingerprint: "zz" is not a sha256 digest/],
  ])('bad input %j: one line, exit 1', async (args, message) => {
    const r = await fuseload(['generate', '--origin', origin.url, '--model', 'tiny', ...args, '--out', join(work, 'x.png')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe('fuseload cache', () => {
  it('ls lists blobs, verify finds and removes a corrupt one, prune evicts to a budget', async () => {
    const root = join(work, 'cache-store');
    const env = { PIPELINE_STORE: root };
    expect((await fuseload(['generate', '--origin', origin.url, '--model', 'tiny', '--out', join(work, 'c.png')], env)).code).toBe(0);
    const ls = await fuseload(['cache', 'ls', '--json'], env);
    const listing = JSON.parse(ls.stdout) as { blobs: number; bytes: number };
    expect(listing.blobs).toBe(artifact.blobs.size);
    expect(listing.bytes).toBe([...artifact.blobs.values()].reduce((n, b) => n + b.byteLength, 0));

    expect((await fuseload(['cache', 'verify'], env)).stdout).toMatch(/2\/2 blobs intact/);
    const shard = artifact.manifest.shards[0].digest;
    await writeFile(join(root, blobKey(shard)), new Uint8Array(128));
    const verify = await fuseload(['cache', 'verify'], env);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain(`corrupt, removed: ${shard}`);

    const prune = await fuseload(['cache', 'prune', '--max-bytes', '0'], env);
    expect(prune.stdout).toMatch(/^removed 1 blobs/);
    expect(JSON.parse((await fuseload(['cache', 'ls', '--json'], env)).stdout).blobs).toBe(0);
    const noBudget = await fuseload(['cache', 'prune'], env);
    expect([noBudget.code, noBudget.stderr.trim()]).toEqual([1, 'fuseload: --max-bytes: give a budget (or set PIPELINE_STORE_MAX_BYTES)']);
  });
});

describe('fuseload serve (the CLI process)', () => {
  it('listens, answers /healthz and generates', async () => {
    const child: ChildProcess = spawn(process.execPath, [BIN, 'serve', '--origin', origin.url, '--port', '0'], {
      env: { ...process.env, PIPELINE_STORE: join(work, 'serve-store') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (d) => {
          out += d;
          const m = /listening on (http:\/\/\S+)/.exec(out);
          if (m) resolve(m[1]);
        });
        child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
      });
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const health = (await (await fetch(`${url}/healthz`)).json()) as { ok: boolean; providers: string[] };
      expect(health).toMatchObject({ ok: true, providers: ['cpu'] });
      const res = await fetch(`${url}/v1/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ model: 'tiny', tag: 'latest', width: 8, height: 8 }) });
      expect(res.status).toBe(200);
      expect(decode(new Uint8Array(await res.arrayBuffer())).width).toBe(8);
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  });
});

describe('fuseload verify <url>', () => {
  it('re-hashes a published artifact through its tag or its manifest URL, and names a blob that does not match', async () => {
    const byTag = await fuseload(['verify', `${origin.url}/tags/tiny/latest.json`, '--json']);
    expect(byTag.stderr).toBe('');
    const expectedBlobs = new Set([artifact.manifest.graph.digest, ...artifact.manifest.shards.map((s) => s.digest)]);
    const bytes = [...expectedBlobs].reduce((n, d) => n + artifact.blobs.get(d)!.byteLength, 0);
    expect(JSON.parse(byTag.stdout)).toEqual({ manifests: 1, blobs: expectedBlobs.size, bytes });
    const hex = artifact.fingerprint.slice('sha256:'.length);
    expect((await fuseload(['verify', `${origin.url}/manifests/sha256/${hex}.json`])).stdout).toMatch(/^ok: 1 manifest\(s\)/);

    // Serve a copy of the artifact with one shard's bytes changed.
    const copy = join(work, 'tampered');
    await writeTinyArtifact(copy, { name: 'tiny' });
    const shard = artifact.manifest.shards[0].digest;
    const bad = Buffer.from(artifact.blobs.get(shard)!);
    bad[0] ^= 0xff;
    await writeFile(join(copy, blobKey(shard)), bad);
    const tampered = await startCountingOrigin(copy);
    try {
      const r = await fuseload(['verify', `${tampered.url}/tags/tiny/latest.json`]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`${blobKey(shard)}: hashes to sha256:`);
    } finally {
      await tampered.close();
    }
    const wrong = await fuseload(['verify', `${origin.url}/blobs/sha256/${hex}`]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/want <origin>\/tags\/<model>\/<tag>\.json/);
  });
});
