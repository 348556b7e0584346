import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Digest, sha256 } from '../../common/digest.ts';
import { createFileLocks } from '../../tools/runtime/locks.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { REPO_ROOT } from '../support/paths.ts';

const BIN = join(REPO_ROOT, 'bin/fuseload.js');
let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'fuseload-harden-store-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const bytes = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);

async function storeWith(squatter: (path: string) => Promise<void>): Promise<{ store: DiskStore; digest: Digest; path: string; corrupt: string[] }> {
  const corrupt: string[] = [];
  const store = new DiskStore(root, { onCorrupt: (d) => corrupt.push(d) });
  const digest = await sha256(bytes);
  await mkdir(store.blobsDir, { recursive: true });
  await squatter(store.path(digest));
  return { store, digest, path: store.path(digest), corrupt };
}

const fifo = async (path: string) => void execFileSync('mkfifo', [path]);
const directory = async (path: string) => {
  await mkdir(path);
  await writeFile(join(path, 'x'), 'x');
};

describe('DiskStore opens only regular files and heals what else sits at a blob path', () => {
  it.each([
    ['a FIFO (a read would block forever)', fifo],
    ['a directory', directory],
  ])('get: %s is removed and is a miss; the blob can then be stored', async (_, squatter) => {
    const { store, digest, path, corrupt } = await storeWith(squatter);
    expect(await store.get(digest)).toBeNull();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(corrupt).toEqual([digest]);
    await store.put(digest, bytes);
    expect(await store.get(digest)).toEqual(bytes);
  }, 10_000);

  it('get and locate never follow a symlink, even to the right bytes; the link goes, its target stays untouched', async () => {
    const outside = join(root, 'outside.bin');
    await writeFile(outside, bytes);
    const before = await stat(outside);
    const { store, digest, path } = await storeWith((p) => symlink(outside, p));
    expect(await store.has(digest)).toBe(false);
    expect(await store.locate(digest, bytes.length)).toBeNull();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await symlink(outside, path);
    expect(await store.get(digest)).toBeNull();
    const after = await stat(outside);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    await store.put(digest, bytes);
    expect((await stat(path)).isFile()).toBe(true);
  });

  it('locate: a FIFO at the blob path is removed, not waited on', async () => {
    const { store, digest, path } = await storeWith(fifo);
    expect(await store.locate(digest, bytes.length)).toBeNull();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  }, 10_000);

  it('put replaces a directory squatting on the blob name', async () => {
    const { store, digest, path } = await storeWith(directory);
    await store.put(digest, bytes);
    expect((await stat(path)).isFile()).toBe(true);
    expect(await store.get(digest)).toEqual(bytes);
  });

  it('entries lists regular files only; verifyAll and prune sweep the rest away', async () => {
    const { store, digest } = await storeWith(fifo);
    const other = await sha256(new Uint8Array([1]));
    await directory(store.path(other));
    const listed = [];
    for await (const e of store.entries()) listed.push(e.digest);
    expect(listed).toEqual([]);
    expect(await store.verifyAll()).toEqual({ checked: 0, ok: 0, removed: [] });
    expect(await readdir(store.blobsDir)).toEqual([]);
    await fifo(store.path(digest));
    await store.prune(1 << 30);
    expect(await readdir(store.blobsDir)).toEqual([]);
  }, 10_000);
});

describe('PIPELINE_STORE that is not a directory', () => {
  it('the store says so in one line instead of holding nothing', async () => {
    const file = join(root, 'a-file');
    await writeFile(file, 'not a store');
    const store = new DiskStore(file, {});
    await expect(store.check()).rejects.toThrow(`${file}: not a directory — PIPELINE_STORE must name a directory`);
    await expect((async () => {
      for await (const _ of store.entries());
    })()).rejects.toThrow(/not a directory/);
    await expect(store.get(await sha256(bytes))).rejects.toThrow(/not a directory/);
    await expect(store.put(await sha256(bytes), bytes)).rejects.toThrow(/not a directory/);
  });

  it.each([['ls'], ['verify'], ['prune', '--max-bytes', '1']])('`fuseload cache %s` exits non-zero with one line, not "0 blobs"', async (...args) => {
    const file = join(root, 'a-file');
    await writeFile(file, 'not a store');
    const result = await promisify(execFile)(process.execPath, [BIN, 'cache', ...args], { env: { ...process.env, PIPELINE_STORE: file } }).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(result.code).not.toBe(0);
    expect(result.stdout).not.toMatch(/0 blobs/);
    expect(result.stderr).toBe(`fuseload: ${file}: not a directory — PIPELINE_STORE must name a directory (or be unset for ~/.cache/fuseload)\n`);
  });
});

describe('cross-process locks', () => {
  it('a killed lock holder is detected by its pid and the lock taken over at once, not after the stale timeout', { timeout: 30_000 }, async () => {
    const script = join(root, 'holder.mts');
    await writeFile(
      script,
      `import { createFileLocks } from ${JSON.stringify(join(REPO_ROOT, 'tools/runtime/locks.ts'))};
       const withLock = createFileLocks(${JSON.stringify(root)}, { staleMs: 60_000 });
       // A pending promise keeps no process alive (the lock's refresh timer is unref'd): without this
       // timer the holder could exit on its own before the kill, and its exit handler frees the lock.
       setInterval(() => {}, 60_000);
       await withLock('fuseload:blob:abc', () => { process.stdout.write('held\\n'); return new Promise(() => {}); });`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
      child.once('exit', (code) => reject(new Error(`holder exited early (${code})`)));
    });
    child.kill('SIGKILL');
    // Killed, not gone by itself: a holder that exits runs its exit handler, which frees the lock.
    expect(await new Promise((r) => child.once('exit', (_code, signal) => r(signal)))).toBe('SIGKILL');

    const warnings: string[] = [];
    const withLock = createFileLocks(root, { staleMs: 60_000, timeoutMs: 8000, warn: (m) => warnings.push(m) });
    expect(await withLock('fuseload:blob:abc', async () => 'mine')).toBe('mine');
    expect(warnings).toEqual([`lock fuseload_blob_abc: its holder (pid ${child.pid}) is gone; taking it over`]);
    expect((await readdir(join(root, 'locks'))).filter((n) => !n.startsWith('.'))).toEqual([]);
  });

  it('a waiter says it is waiting, and on whom, while a live holder keeps the lock', async () => {
    const holder = createFileLocks(root, { staleMs: 60_000 });
    const warnings: string[] = [];
    const waiter = createFileLocks(root, { staleMs: 60_000, waitNoticeMs: 100, warn: (m) => warnings.push(m) });
    let open!: () => void;
    const held = holder('fuseload:blob:def', () => new Promise<void>((r) => (open = r)));
    await expect.poll(() => open !== undefined).toBe(true);
    const waited = waiter('fuseload:blob:def', async () => 'second');
    await expect.poll(() => warnings.length, { timeout: 3000 }).toBe(1);
    expect(warnings[0]).toMatch(new RegExp(`^waiting for lock fuseload_blob_def \\(held by pid ${process.pid}, \\d+ s so far\\)`));
    open();
    await held;
    expect(await waited).toBe('second');
  });
});
