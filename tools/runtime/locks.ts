/**
 * Cross-process locks over the store, so several processes loading one model download each
 * blob once: the loader takes `withLock(<digest>)` around "check the store, else fetch, verify,
 * put", and the second process finds the blob stored when it gets the lock.
 *
 * proper-lockfile (an atomic `mkdir` of `<root>/locks/<name>.lock`, refreshed while held and
 * taken over when stale) works across processes and on network filesystems. Within one
 * process a promise chain per name queues callers first, so they don't poll the directory.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';

export interface FileLocksOptions {
  /** A lock not refreshed for this long is taken over (its holder died). Default 20 s. */
  staleMs?: number;
  /** Give up waiting after this long. Default 10 min (a slow download of a large shard). */
  timeoutMs?: number;
  warn?: (message: string) => void;
}

export type WithLock = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

export function createFileLocks(root: string, options: FileLocksOptions = {}): WithLock {
  const dir = join(root, 'locks');
  const staleMs = options.staleMs ?? 20_000;
  const timeoutMs = options.timeoutMs ?? 10 * 60_000;
  const local = new Map<string, Promise<unknown>>();

  const acquire = async (file: string): Promise<() => Promise<void>> => {
    await mkdir(dir, { recursive: true });
    const deadline = Date.now() + timeoutMs;
    let wait = 10;
    for (;;) {
      try {
        return await lockfile.lock(file, {
          realpath: false,
          stale: staleMs,
          update: Math.max(1000, staleMs / 4),
          onCompromised: (e) => options.warn?.(`lock ${file} was taken over: ${e.message}`),
        });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for lock ${file}`);
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
