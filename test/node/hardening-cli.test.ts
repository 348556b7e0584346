import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FuseloadError, systemError, userFacingError } from '../../common/errors.ts';
import { writeTinyArtifact } from '../support/node-onnx.ts';
import { REPO_ROOT } from '../support/paths.ts';

const BIN = join(REPO_ROOT, 'bin/fuseload.js');
let work: string;
let artifactDir: string;

/** The environment without any bucket or key: what a dry run must not need. */
const bare = (() => {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (/^(B2_|AWS_|S3_ENDPOINT|R2_ACCOUNT_ID)/.test(k)) delete env[k];
  return env;
})();

function runNode(args: string[], env: NodeJS.ProcessEnv = bare, timeout = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, args, { env, timeout, cwd: REPO_ROOT }, (error, stdout, stderr) => {
      const code = error ? ((error as { code?: number }).code ?? null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}
const fuseload = (args: string[], env?: NodeJS.ProcessEnv, timeout?: number) => runNode([BIN, ...args], env, timeout);

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-harden-cli-'));
  artifactDir = join(work, 'artifact');
  await writeTinyArtifact(artifactDir, { name: 'tiny' });
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** One line on stderr, no stack frames. */
function expectOneLine(stderr: string) {
  expect(stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(stderr).not.toMatch(/\n\s+at /);
}

describe('the CLI error mapper', () => {
  it('a Node system error is "<address>: …" on one line, exit 1 (serve on a port in use)', async () => {
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const { port } = busy.address() as AddressInfo;
    try {
      const r = await fuseload(['serve', '--origin', 'http://127.0.0.1:9', '--port', String(port)], { ...bare, PIPELINE_STORE: join(work, 'store') });
      expect(r.code).toBe(1);
      expectOneLine(r.stderr);
      expect(r.stderr).toBe(`fuseload: 127.0.0.1:${port}: address already in use (EADDRINUSE)\n`);
    } finally {
      busy.close();
    }
  });

  it('a store path through a file: one line naming it', async () => {
    const r = await fuseload(['cache', 'ls'], { ...bare, PIPELINE_STORE: '/etc/passwd/x' });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('fuseload: /etc/passwd/x: a part of this path is a file, not a directory — PIPELINE_STORE must name a directory (or be unset for ~/.cache/fuseload)\n');
  });

  it('names ENOENT, EISDIR, ENOTDIR and EACCES by path', async () => {
    const fail = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e);
    expect(systemError(await fail(readFile(join(work, 'missing'))))).toEqual({ code: 'ENOENT', message: `${join(work, 'missing')}: no such file or directory (ENOENT)` });
    expect(systemError(await fail(readFile(work)))?.message).toBe('is a directory, not a file (EISDIR)');
    expect(systemError(await fail(readFile('/etc/passwd/x')))?.message).toBe('/etc/passwd/x: a part of this path is a file, not a directory (ENOTDIR)');
    const eacces = Object.assign(new Error("EACCES: permission denied, open '/srv/x'"), { code: 'EACCES', path: '/srv/x', syscall: 'open' });
    expect(userFacingError(eacces)).toEqual({ code: 'EACCES', message: '/srv/x: permission denied (EACCES)' });
    const refused = Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED', address: '127.0.0.1', port: 9 }) });
    expect(userFacingError(refused)?.message).toBe('127.0.0.1:9: connection refused (ECONNREFUSED)');
    expect(userFacingError(new FuseloadError('bad-input', 'x: two\nlines'))?.message).toBe('x: two lines');
    expect(userFacingError(new Error('a bug'))).toBeNull();
  });
});

describe('a reader that stops early', () => {
  it('`fuseload inspect … | head`: a closed stdout ends the command quietly, no EPIPE stack', async () => {
    // The read end is closed before the CLI writes a byte, so its first write meets EPIPE.
    const child = spawn(process.execPath, [BIN, 'inspect', join(REPO_ROOT, 'tools/sample/pipeline')], { cwd: REPO_ROOT, env: bare, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});

describe('fuseload publish', () => {
  it('--dry-run needs no bucket, credentials or endpoint: it lists everything', async () => {
    const r = await fuseload(['publish', artifactDir, '--dry-run', '--tag', 'latest']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^would upload blobs\/sha256\/[0-9a-f]{64}$/m);
    expect(r.stdout).toMatch(/dry run: \d+ to upload \(.*\), 0 already in no bucket \(none configured: everything is listed\)/);
  });

  it('complains about a missing directory before asking for a bucket', async () => {
    const r = await fuseload(['publish', join(work, 'nodir')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`fuseload: ${join(work, 'nodir')}: no such directory\n`);
  });

  it('--json prints a failure as JSON on stdout, exit 1', async () => {
    const r = await fuseload(['publish', join(work, 'nodir'), '--json']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ error: 'bad-input', message: `${join(work, 'nodir')}: no such directory` });
    const noBucket = await fuseload(['publish', artifactDir, '--json']);
    expect(noBucket.code).toBe(1);
    expect(JSON.parse(noBucket.stdout)).toMatchObject({ error: 'bad-input', message: expect.stringMatching(/no bucket/) });
  });
});

describe('fuseload serve', () => {
  it('refuses credentials in --origin with one line, exit 1, never echoing them', async () => {
    const r = await fuseload(['serve', '--origin', 'http://alice:s3cret@127.0.0.1:9', '--port', '0'], bare, 20_000);
    expect(r.code).toBe(1);
    expectOneLine(r.stderr);
    expect(r.stderr).toMatch(/^fuseload: --origin: must not carry credentials/);
    expect(r.stderr + r.stdout).not.toContain('s3cret');
  });
});

describe('npm start settings', () => {
  it.each([
    [{ FUSELOAD_EDGE_PORT: 'abc' }, 'fuseload start: FUSELOAD_EDGE_PORT="abc" is not a port number (1-65535; default 8787)'],
    [{ FUSELOAD_DEMO_PORT: '70000' }, 'fuseload start: FUSELOAD_DEMO_PORT="70000" is not a port number (1-65535; default 5173)'],
    [{ FUSELOAD_HMR: 'maybe' }, 'fuseload start: FUSELOAD_HMR="maybe": want 0 or 1'],
  ])('%j is one line and exit 2, before anything starts', async (settings, line) => {
    const r = await runNode(['--import', 'tsx', 'tools/dev/start.ts'], { ...bare, ...settings }, 20_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`${line}\n`);
    expect(r.stdout).toBe('');
  });
});
