/**
 * `fuseload publish --local` writes the R2 state `wrangler dev` serves. Proven end to end:
 * the real `wrangler dev` (4.86.0, offline) runs the real edge worker with its default
 * persistence in a project directory; publish there with the CLI; read back through it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import { localR2Location, publishLocal } from '../../tools/local-r2/index.ts';
import { REPO_ROOT, closedPort, runCli, tempDir, writeArtifact } from './helpers.ts';

const WRANGLER = join(REPO_ROOT, 'node_modules', '.bin', 'wrangler');
const OFFLINE = { WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' };

/** A project like this repo: a wrangler.toml with the ARTIFACTS binding, running the real edge worker. */
async function project(): Promise<string> {
  const dir = await tempDir('proj');
  const repoConfig = await readFile(join(REPO_ROOT, 'wrangler.toml'), 'utf8');
  await writeFile(join(dir, 'wrangler.toml'), repoConfig.replace(/^main\s*=.*$/m, `main = ${JSON.stringify(join(REPO_ROOT, 'edge', 'index.ts'))}`));
  return dir;
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill();
});

async function wranglerDev(cwd: string): Promise<string> {
  const port = await closedPort();
  const child = spawn(WRANGLER, ['dev', '--port', String(port), '--ip', '127.0.0.1'], {
    cwd,
    env: { ...process.env, ...OFFLINE },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  const origin = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 45_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited: ${log}`);
    if (/Ready on/.test(log)) return origin;
    if (Date.now() > deadline) throw new Error(`wrangler dev not ready: ${log}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('fuseload publish --local', () => {
  it('finds the state wrangler uses for this repo: .wrangler/state beside wrangler.toml, bucket from the ARTIFACTS binding', () => {
    const loc = localR2Location({ cwd: join(REPO_ROOT, 'tools', 'publish') });
    expect(loc.configPath).toBe(join(REPO_ROOT, 'wrangler.toml'));
    expect(loc.stateDir).toBe(join(REPO_ROOT, '.wrangler', 'state'));
    expect(loc.persistRoot).toBe(join(REPO_ROOT, '.wrangler', 'state', 'v3'));
    expect(loc.bucket).toBe('fuseload-artifacts');
    expect(localR2Location({ cwd: REPO_ROOT, persistTo: 'tmp/state' }).persistRoot).toBe(join(REPO_ROOT, 'tmp', 'state', 'v3'));
  });

  it('what the CLI writes, a running `wrangler dev` serves through the edge worker at once', async () => {
    const proj = await project();
    const art = await writeArtifact(await tempDir('art'), [randomBytes(70_000), randomBytes(30_000)], { name: 'local-demo' });
    const origin = await wranglerDev(proj);
    expect((await fetch(`${origin}/${tagKey('local-demo', 'latest')}`)).status).toBe(404);
    const r = await runCli(['publish', art.dir, '--local', '--tag', 'latest', '--json'], {}, proj);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.target).toBe(`local R2 bucket "fuseload-artifacts" in ${join(proj, '.wrangler', 'state')}`);
    expect(report.uploaded).toHaveLength(5);

    const tag = await fetch(`${origin}/${tagKey('local-demo', 'latest')}`);
    expect(tag.status).toBe(200);
    expect(tag.headers.get('cache-control')).toBe('public, max-age=60, stale-while-revalidate=600');
    expect(await tag.json()).toEqual({ manifest: art.fingerprint });
    const manifest = await fetch(`${origin}/${manifestKey(art.fingerprint)}`);
    expect(manifest.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    expect(manifest.headers.get('content-type')).toBe('application/json');
    const local = await readFile(join(art.dir, 'manifests', 'sha256', `${digestHex(art.fingerprint)}.json`));
    expect(Buffer.from(await manifest.arrayBuffer()).equals(local)).toBe(true);
    const shard = await fetch(`${origin}/${blobKey(art.shards[0])}`);
    expect(shard.headers.get('content-type')).toBe('application/octet-stream');
    expect(Buffer.from(await shard.arrayBuffer()).equals(await readFile(join(art.dir, 'blobs', 'sha256', digestHex(art.shards[0]))))).toBe(true);
  });

  it('--persist-to matches `wrangler --persist-to`; re-publishing writes 0 bytes', async () => {
    const proj = await project();
    const art = await writeArtifact(await tempDir('art'), [randomBytes(10_000)], { name: 'persist' });
    const first = await publishLocal(art.dir, { cwd: proj, persistTo: 'elsewhere', tag: 'v1' });
    expect(first.bytesUploaded).toBe(art.bytes + `{"manifest":"${art.fingerprint}"}`.length);
    const again = await publishLocal(art.dir, { cwd: proj, persistTo: 'elsewhere', tag: 'v1' });
    expect(again.bytesUploaded).toBe(0);
    expect(again.skipped).toHaveLength(4);
    const got = await new Promise<string>((resolve, reject) => {
      const child = spawn(WRANGLER, ['r2', 'object', 'get', `fuseload-artifacts/${tagKey('persist', 'v1')}`, '--local', '--persist-to', 'elsewhere', '--pipe'], {
        cwd: proj,
        env: { ...process.env, ...OFFLINE },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`wrangler r2 object get exited ${code}`))));
    });
    expect(JSON.parse(got)).toEqual({ manifest: art.fingerprint });
  });
});
