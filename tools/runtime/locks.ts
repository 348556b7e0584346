/**
 * Cross-process locks over the store, so several processes loading one model download each
 * blob once: the loader takes `withLock(<digest>)` around "check the store, else fetch, verify,
 * put", and the second process finds the blob stored when it gets the lock.
 *
 * proper-lockfile (an atomic `mkdir` of `<root>/locks/<name>.lock`, refreshed while held and
 * taken over when stale) works across processes and on network filesystems. Within one
 * process a promise chain per name queues callers first, so they don't poll the directory.
 *
 * Beside each held lock, `<name>.owner` names its holder (`{pid, host, ino}`). A waiter on the
 * same host whose holder's pid is gone (`process.kill(pid, 0)` fails) takes the lock over at
 * once instead of waiting out the stale timeout; a waiter that waits says so, with the pid.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, join } from 'node:path';
import lockfile from 'proper-lockfile';

export interface FileLocksOptions {
  /** A lock not refreshed for this long is taken over (its holder died). Default 20 s. */
  staleMs?: number;
  /** Give up waiting after this long. Default 10 min (a slow download of a large shard). */
  timeoutMs?: number;
  /** Say so (through `warn`) once a wait passes this, then every 30 s. Default 2 s. */
  waitNoticeMs?: number;
  warn?: (message: string) => void;
}

export type WithLock = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

interface LockOwner {
  pid: number;
  host: string;
  /** The lock directory's inode when this holder made it: a later lock under the name is another. */
  ino: number;
}

const NOTICE_EVERY_MS = 30_000;

/** True while `pid` is a live process here (EPERM: alive, just not ours to signal). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readOwner(path: string): Promise<LockOwner | null> {
  try {
    const o = JSON.parse(await readFile(path, 'utf8')) as Partial<LockOwner>;
    return Number.isSafeInteger(o.pid) && typeof o.host === 'string' && typeof o.ino === 'number' ? (o as LockOwner) : null;
  } catch {
    return null;
  }
}

export function createFileLocks(root: string, options: FileLocksOptions = {}): WithLock {
  const dir = join(root, 'locks');
  const staleMs = options.staleMs ?? 20_000;
  const timeoutMs = options.timeoutMs ?? 10 * 60_000;
  const waitNoticeMs = options.waitNoticeMs ?? 2000;
  const warn = options.warn ?? (() => {});
  const host = hostname();
  const local = new Map<string, Promise<unknown>>();

  const ownerFile = (file: string) => `${file}.owner`;
  const lockDir = (file: string) => `${file}.lock`;

  /** Records us as the holder: written whole (temp + rename), after the lock is ours. */
  const writeOwner = async (file: string) => {
    const s = await stat(lockDir(file));
    const temp = `${ownerFile(file)}.tmp-${randomBytes(6).toString('hex')}`;
    await writeFile(temp, JSON.stringify({ pid: process.pid, host, ino: s.ino } satisfies LockOwner));
    await rename(temp, ownerFile(file));
  };

  /**
   * Takes a dead holder's lock: moves its owner file aside (atomic: of several waiters one
   * wins), checks it is still that holder's and the lock directory is still the one it made,
   * then removes the lock. Anything else seen on the way is put back and the caller waits on.
   */
  const takeOver = async (file: string, dead: LockOwner): Promise<boolean> => {
    const moved = `${ownerFile(file)}.takeover-${randomBytes(6).toString('hex')}`;
    try {
      await rename(ownerFile(file), moved);
    } catch {
      return false; // another waiter got there first
    }
    const seen = await readOwner(moved);
    if (!seen || seen.pid !== dead.pid || seen.host !== host || isProcessAlive(seen.pid)) {
      await link(moved, ownerFile(file)).catch(() => {}); // not ours to take: back where it was
      await rm(moved, { force: true });
      return false;
    }
    await rm(moved, { force: true });
    const current = await stat(lockDir(file)).catch(() => null);
    if (current?.ino === seen.ino) await rmdir(lockDir(file)).catch(() => {});
    return true;
  };

  const acquire = async (file: string): Promise<() => Promise<void>> => {
    await mkdir(dir, { recursive: true });
    const started = Date.now();
    const deadline = started + timeoutMs;
    let noticed = 0;
    let wait = 10;
    for (;;) {
      try {
        const release = await lockfile.lock(file, {
          realpath: false,
          stale: staleMs,
          update: Math.max(1000, staleMs / 4),
          onCompromised: (e) => warn(`lock ${file} was taken over: ${e.message}`),
        });
        await writeOwner(file).catch(() => {}); // without it, waiters fall back to the stale timeout
        return async () => {
          // Owner first: a holder that dies between the two leaves a lock with no owner, which
          // only the stale timeout frees, never a lock pointing at the next holder's pid.
          await rm(ownerFile(file), { force: true });
          await release();
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
        const owner = await readOwner(ownerFile(file));
        if (owner && owner.host === host && owner.pid !== process.pid && !isProcessAlive(owner.pid)) {
          if (await takeOver(file, owner)) {
            warn(`lock ${basename(file)}: its holder (pid ${owner.pid}) is gone; taking it over`);
            continue;
          }
        }
        const now = Date.now();
        if (now > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for lock ${file}`);
        if (now - started >= waitNoticeMs && now - noticed >= NOTICE_EVERY_MS) {
          noticed = now;
          const holder = owner ? `pid ${owner.pid}${owner.host === host ? '' : ` on ${owner.host}`}` : 'another process';
          warn(`waiting for lock ${basename(file)} (held by ${holder}, ${Math.round((now - started) / 1000)} s so far): another load is fetching the same blob`);
        }
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 250);
      }
    }
  };

  return async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const file = join(dir, name.replace(/[^A-Za-z0-9._-]/g, '_'));
    const previous = local.get(file) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(async () => {
      const release = await acquire(file);
      try {
        return await fn();
      } finally {
        await release().catch(() => {});
      }
    });
    local.set(file, run);
    try {
      return await run;
    } finally {
      if (local.get(file) === run) local.delete(file);
    }
  };
}
