import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import { type WrittenArtifact, writeTinyArtifact } from '../support/node-onnx.ts';
import { REPO_ROOT, WRANGLER_ENV, type WranglerDev, startWranglerDev } from './wrangler-dev.ts';

const run = promisify(execFile);

/** Writes the artifact into wrangler's local R2 state the way a user would. */
async function publishWithFuseload(artifactDir: string, persistTo: string): Promise<void> {
  await run(process.execPath, ['bin/fuseload.js', 'publish', artifactDir, '--local', '--persist-to', persistTo, '--tag', 'latest', '--json'], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...WRANGLER_ENV },
  });
}

/** The same through `wrangler r2 object put`, one object at a time (slower; no fuseload code involved). */
async function putWithWrangler(artifactDir: string, persistTo: string): Promise<void> {
  for (const name of await readdir(artifactDir, { recursive: true })) {
    const file = join(artifactDir, name);
    if (!(await stat(file)).isFile()) continue;
    const key = name.split(sep).join('/');
    await run('npx', ['wrangler', 'r2', 'object', 'put', `fuseload-artifacts/${key}`, '--local', '--persist-to', persistTo, '--file', file], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...WRANGLER_ENV },
    });
  }
}

/** Which writer fills the local R2 state: switch to putWithWrangler here if publish is unavailable. */
const writeIntoLocalR2: (artifactDir: string, persistTo: string) => Promise<void> = publishWithFuseload;

let work: string;
let persistTo: string;
let artifact: WrittenArtifact;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-edge-dev-'));
  persistTo = join(work, 'state');
  artifact = await writeTinyArtifact(join(work, 'artifact'), { name: 'edge-dev', padShards: 1, padBytes: 300_000 });
  await writeIntoLocalR2(join(work, 'artifact'), persistTo);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('wrangler dev serves what publish --local wrote', () => {
  let dev: WranglerDev;
  beforeAll(async () => {
    dev = await startWranglerDev({ persistTo });
  });
  afterAll(() => dev?.stop());

  it('GET of the tag, then the manifest it names, byte for byte', async () => {
    const tag = await fetch(`${dev.origin}/${tagKey('edge-dev', 'latest')}`);
    expect(tag.status).toBe(200);
    expect(tag.headers.get('Cache-Control')).toBe('public, max-age=60, stale-while-revalidate=600');
    expect(((await tag.json()) as { manifest: string }).manifest).toBe(artifact.fingerprint);

    const res = await fetch(`${dev.origin}/${manifestKey(artifact.fingerprint)}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('Content-Type')).toBe('application/json');
    expect(res.headers.get('ETag')).toBe(`"${artifact.fingerprint.slice(7)}"`);
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(artifact.manifestBytes);
  });

  it('a whole blob, a range of it, HEAD and a 304', async () => {
    const [digest, blob] = [...artifact.blobs].sort((a, b) => b[1].length - a[1].length)[0];
    const bytes = new Uint8Array(blob);
    expect(bytes.length).toBeGreaterThanOrEqual(300_000);
    const url = `${dev.origin}/${blobKey(digest)}`;

    const whole = await fetch(url);
    expect(whole.status).toBe(200);
    expect(whole.headers.get('Content-Length')).toBe(String(bytes.length));
    expect(whole.headers.get('Cache-Control')).toBe('public, max-age=31536000, immutable');
    expect(new Uint8Array(await whole.arrayBuffer())).toEqual(bytes);

    const part = await fetch(url, { headers: { Range: 'bytes=100-1123' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('Content-Range')).toBe(`bytes 100-1123/${bytes.length}`);
    expect(part.headers.get('Content-Length')).toBe('1024');
    expect(new Uint8Array(await part.arrayBuffer())).toEqual(bytes.slice(100, 1124));

    const head = await fetch(url, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('Content-Length')).toBe(String(bytes.length));

    const etag = whole.headers.get('ETag')!;
    const notModified = await fetch(url, { headers: { 'If-None-Match': etag } });
    expect(notModified.status).toBe(304);
    expect(notModified.headers.get('ETag')).toBe(etag);
    expect((await notModified.arrayBuffer()).byteLength).toBe(0);
  });

  it('404 for a path outside the three shapes', async () => {
    const res = await fetch(`${dev.origin}/wrangler.toml`);
    expect(res.status).toBe(404);
    await res.body?.cancel();
  });
});

describe('a private deployment accepts what `fuseload sign` makes', () => {
  const secret = 'edge-dev-signing-secret';
  let dev: WranglerDev;
  beforeAll(async () => {
    dev = await startWranglerDev({ persistTo, vars: { SIGNING_SECRET: secret } });
  });
  afterAll(() => dev?.stop());

  it('signed by the CLI in Node, verified by the worker in workerd', async () => {
    const key = manifestKey(artifact.fingerprint);
    const { stdout } = await run(process.execPath, ['bin/fuseload.js', 'sign', key, '--ttl', '120', '--origin', dev.origin], {
      cwd: REPO_ROOT,
      env: { ...process.env, FUSELOAD_SIGNING_SECRET: secret },
    });
    const signed = stdout.trim();
    expect(signed).toMatch(new RegExp(`^${dev.origin}/${key}\\?exp=\\d+&sig=[0-9a-f]{64}$`));
    const ok = await fetch(signed);
    expect(ok.status).toBe(200);
    expect(new Uint8Array(await ok.arrayBuffer())).toEqual(artifact.manifestBytes);

    const unsigned = await fetch(`${dev.origin}/${key}`);
    expect(unsigned.status).toBe(401);
    await unsigned.body?.cancel();
    const tampered = await fetch(signed.replace(/sig=./, (m) => (m.endsWith('0') ? 'sig=1' : 'sig=0')));
    expect(tampered.status).toBe(403);
    await tampered.body?.cancel();
  });
});
