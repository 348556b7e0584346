/**
 * The Node blob store: `<root>/blobs/sha256/<hex>`, the same relative paths as the bucket
 * (DESIGN.md). Writes are atomic (temp file in the same directory, fsync, rename), so a
 * reader — in this process or another — sees a whole blob or none.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { type Digest, digestHex, isHex } from '../../common/digest.ts';
import type { BlobStore } from '../../common/store.ts';

/** `PIPELINE_STORE`, or `~/.cache/fuseload` (the build cache and the Node runtime share it). */
export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.PIPELINE_STORE || join(homedir(), '.cache', 'fuseload');
}

export class DiskStore implements BlobStore {
  readonly kind = 'disk';
  constructor(readonly root: string = defaultStoreRoot()) {}

  /** Where a blob lives (it may not exist yet). */
  path(digest: Digest): string {
    return join(this.root, 'blobs', 'sha256', digestHex(digest));
  }

  async has(digest: Digest): Promise<boolean> {
    try {
      return (await stat(this.path(digest))).isFile();
    } catch {
      return false;
    }
  }

  async get(digest: Digest): Promise<Uint8Array | null> {
    try {
      const bytes = await readFile(this.path(digest));
      await this.touch(digest);
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async put(digest: Digest, bytes: Uint8Array): Promise<void> {
    await this.writeAtomic(this.path(digest), bytes);
  }

  async delete(digest: Digest): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  async *entries(): AsyncIterable<{ digest: Digest; size: number; lastUsed: number }> {
    const dir = join(this.root, 'blobs', 'sha256');
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names.sort()) {
      if (!isHex(name)) continue; // temp files and strays are not blobs
      try {
        const s = await stat(join(dir, name));
        yield { digest: `sha256:${name}`, size: s.size, lastUsed: s.mtimeMs };
      } catch {
        // deleted while listing
      }
    }
  }

  /** Re-hashes a stored blob; a blob that does not match its name is removed. */
  async verify(digest: Digest): Promise<boolean> {
    const actual = await sha256File(this.path(digest)).catch(() => null);
    if (actual === digest) return true;
    await this.delete(digest);
    return false;
  }

  /** Marks a blob used now, for LRU eviction. */
  async touch(digest: Digest): Promise<void> {
    const now = new Date();
    await utimes(this.path(digest), now, now).catch(() => {});
  }

  /** Temp + fsync + rename in the target's directory: never a partial file under the final name. */
  async writeAtomic(target: string, bytes: Uint8Array): Promise<void> {
    const dir = join(target, '..');
    await mkdir(dir, { recursive: true });
    const temp = join(dir, `.tmp-${randomBytes(6).toString('hex')}`);
    const fh = await open(temp, 'w');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } catch (e) {
      await fh.close();
      await rm(temp, { force: true });
      throw e;
    }
    await fh.close();
    await rename(temp, target);
  }
}

/** Streaming SHA-256 of a file, for blobs too large to hold in memory. */
export function sha256File(path: string): Promise<Digest> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(`sha256:${hash.digest('hex')}`));
  });
}
