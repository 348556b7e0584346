/**
 * The Node blob store: `<root>/blobs/sha256/<hex>`, the same relative paths as the bucket
 * (DESIGN.md). Writes are atomic (temp file in the same directory, fsync, rename), so a
 * reader — in this process or another — sees a whole blob or none.
 *
 * Cheap integrity on every read: a blob is written with its mtime set to a fixed stamp
 * (`VERIFIED_MTIME`), so any later write into the file (which sets mtime to now) is seen on
 * the next `get` or `locate`, which then re-hashes it and drops it if it no longer matches. Re-hashing
 * every read would double a warm load; bit rot that leaves mtime alone is `verify()`'s job.
 * LRU order is the access time, which `get` sets explicitly (mounts may be noatime).
 *
 * Manifests are content-addressed too, and the loader keeps them through the same
 * `put(fingerprint, bytes, 'manifest')` (the caller says so; the store never sniffs) and they are kept where the bucket
 * keeps them, `<root>/manifests/sha256/<hex>.json`, outside the blob budget.
 *
 * Only regular files are read: a path is looked at with `lstat` and opened with
 * `O_NOFOLLOW | O_NONBLOCK`, so a symlink is never followed and a FIFO never blocks a read.
 * Anything else found at a blob's path (FIFO, directory, symlink, socket) is removed, so the
 * store heals and the blob is fetched again.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { type Digest, digestHex, isHex } from '../../common/digest.ts';
import { FuseloadError } from '../../common/errors.ts';
import type { BlobKind, BlobStore } from '../../common/store.ts';

/** `PIPELINE_STORE`, or `~/.cache/fuseload` (the build cache and the Node runtime share it). */
export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.PIPELINE_STORE || join(homedir(), '.cache', 'fuseload');
}

/** A byte budget from the environment (a whole number of bytes), or undefined: unset or not a count. */
export function envBytes(name: string, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env[name];
  if (!raw) return undefined;
  const n = Number(raw);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** `PIPELINE_STORE_MAX_BYTES` (a byte budget for blobs), or unlimited. */
export function defaultMaxBytes(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return envBytes('PIPELINE_STORE_MAX_BYTES', env);
}

/** 2001-09-09T01:46:40Z: the mtime of a blob as we wrote it. Anything else means it was touched. */
export const VERIFIED_MTIME = 1_000_000_000;

/** Read-only, never through a symlink, never waiting on a FIFO's writer (0 where the OS lacks a flag). */
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);

/**
 * Opens `path` for reading only when it is a regular file; null when it is anything else (a
 * symlink, FIFO, directory, socket). Missing → ENOENT as usual.
 */
export async function openRegularFile(path: string): Promise<FileHandle | null> {
  let fh: FileHandle;
  try {
    fh = await open(path, READ_FLAGS);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // ELOOP: a symlink under O_NOFOLLOW; ENXIO: a socket or a FIFO with no writer (some OSes).
    if (code === 'ELOOP' || code === 'ENXIO' || code === 'EISDIR' || code === 'EMLINK') return null;
    throw e;
  }
  const s = await fh.stat().catch(async (e) => {
    await fh.close();
    throw e;
  });
  if (!s.isFile()) {
    await fh.close();
    return null;
  }
  return fh;
}

/** Temp files older than this are leftovers of a crashed writer. */
const STALE_TEMP_MS = 60 * 60 * 1000;

export interface DiskStoreOptions {
  /** Byte budget for blobs; after each `put` the least recently used are evicted to fit. */
  maxBytes?: number;
  /** Told when a stored file no longer matches its digest and has been removed. */
  onCorrupt?: (digest: Digest, path: string) => void;
}

export interface BlobEntry {
  digest: Digest;
  size: number;
  /** Last access (ms since epoch), the LRU order. */
  lastUsed: number;
}

export interface PruneResult {
  removed: BlobEntry[];
  freedBytes: number;
  keptBytes: number;
}

export interface VerifyResult {
  checked: number;
  ok: number;
  /** Blobs whose bytes no longer hash to their name; they have been removed. */
  removed: Digest[];
}

export class DiskStore implements BlobStore {
  readonly kind = 'disk';
  /**
   * `get` and `locate` return a blob only while its file carries the verified stamp and has
   * not changed during the read; anything else is re-hashed first (and removed if wrong). So
   * a write into a stored file (another writer, a truncation) is caught on the next load.
   * Bit rot under an unchanged mtime is not: `verifyAll` (`fuseload cache verify`) re-hashes.
   */
  readonly verifiesReads = true;
  readonly maxBytes: number | undefined;
  readonly #onCorrupt: DiskStoreOptions['onCorrupt'];
  /** Blobs this process has read or written: evicted last, only when nothing else frees enough. */
  readonly #inUse = new Set<Digest>();
  /** The exact byte arrays this store read from or wrote to a blob file, and that file. */
  readonly #files = new WeakMap<Uint8Array, string>();

  constructor(
    readonly root: string = defaultStoreRoot(),
    options: DiskStoreOptions = { maxBytes: defaultMaxBytes() },
  ) {
    this.maxBytes = options.maxBytes;
    this.#onCorrupt = options.onCorrupt;
  }

  get blobsDir(): string {
    return join(this.root, 'blobs', 'sha256');
  }

  /** Where a blob lives (it may not exist yet). */
  path(digest: Digest): string {
    return join(this.blobsDir, digestHex(digest));
  }

  /** Where a manifest lives (it may not exist yet). */
  manifestPath(fingerprint: Digest): string {
    return join(this.root, 'manifests', 'sha256', `${digestHex(fingerprint)}.json`);
  }

  async has(digest: Digest): Promise<boolean> {
    for (const path of [this.path(digest), this.manifestPath(digest)]) {
      const s = await lstat(path).catch((e) => this.#missing(e));
      if (s?.isFile()) return true;
    }
    return false;
  }

  /**
   * Fails with one line when the root (or a folder under it) is not a directory — say
   * `PIPELINE_STORE` names a file — instead of a store that silently holds nothing.
   */
  async check(): Promise<void> {
    for (const dir of [this.root, join(this.root, 'blobs'), this.blobsDir]) {
      let s;
      try {
        s = await stat(dir);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return; // created on the first put
        if (code === 'ENOTDIR') throw this.#notADirectory(dir, true); // a file higher up the path
        throw e;
      }
      if (!s.isDirectory()) throw this.#notADirectory(dir);
    }
  }

  #notADirectory(dir: string, above = false): FuseloadError {
    const what = above
      ? `${this.root}: a part of this path is a file, not a directory`
      : dir === this.root
        ? `${dir}: not a directory`
        : `${this.root}: ${dir.slice(this.root.length + 1)} is not a directory`;
    return new FuseloadError('bad-input', `${what} — PIPELINE_STORE must name a directory (or be unset for ~/.cache/fuseload)`);
  }

  /** null for a missing file; a root that is not a directory becomes its one-line error. */
  async #missing(e: unknown): Promise<null> {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ENOTDIR') {
      await this.check();
      return null;
    }
    throw e;
  }

  /** Removes whatever non-file sits at a blob's path (FIFO, directory, symlink), so it is fetched again. */
  async #removeStray(digest: Digest, path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
    this.#onCorrupt?.(digest, path);
  }

  async get(digest: Digest): Promise<Uint8Array | null> {
    const blob = await this.#read(digest, this.path(digest));
    return blob ?? (await this.#read(digest, this.manifestPath(digest)));
  }

  async #read(digest: Digest, path: string): Promise<Uint8Array | null> {
    try {
      if (!(await this.#checkStamp(digest, path))) return null;
      const fh = await openRegularFile(path);
      if (!fh) {
        // Swapped for something else since the lstat.
        await this.#removeStray(digest, path);
        return null;
      }
      let buffer: Buffer;
      try {
        const before = await fh.stat();
        buffer = await fh.readFile();
        // Written into while we read (the stamp moves) or swapped under us: the bytes may be torn.
        const after = await fh.stat();
        if (!isStamped(before) || !isStamped(after) || after.size !== before.size || after.size !== buffer.byteLength) {
          // A miss, not these bytes: the file is re-hashed (removed if wrong) for the next reader.
          await this.#verifyFile(digest, path);
          return null;
        }
      } finally {
        await fh.close().catch(() => {});
      }
      this.#inUse.add(digest);
      await utimes(path, new Date(), VERIFIED_MTIME).catch(() => {});
      const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      this.#files.set(bytes, path);
      return bytes;
    } catch (e) {
      return this.#missing(e);
    }
  }

  /**
   * True when a regular file is there with the verified stamp, or re-hashes correctly (then
   * re-stamped). Anything but a regular file is removed. Missing → ENOENT.
   */
  async #checkStamp(digest: Digest, path: string): Promise<boolean> {
    const s = await lstat(path);
    if (!s.isFile()) {
      await this.#removeStray(digest, path);
      return false;
    }
    return isStamped(s) || (await this.#verifyFile(digest, path));
  }

  /**
   * The blob's file, vouched for exactly as `get` vouches for bytes (verified stamp, else a
   * re-hash), without reading it; null when missing or corrupt (a corrupt one is removed).
   * Marks it used for LRU. A file rewritten in place after this is the same risk as after a
   * `get`: caught on the next load, not under a session already running on it.
   */
  async locate(digest: Digest, size: number): Promise<string | null> {
    const path = this.path(digest);
    try {
      let s = await lstat(path);
      if (!s.isFile()) {
        await this.#removeStray(digest, path);
        return null;
      }
      if (!isStamped(s)) {
        if (!(await this.#verifyFile(digest, path))) return null;
        s = await lstat(path);
      }
      if (s.size !== size) {
        // Stamped but the wrong length: someone restored our stamp by hand. Not ours any more.
        await rm(path, { force: true });
        this.#onCorrupt?.(digest, path);
        return null;
      }
      this.#inUse.add(digest);
      await utimes(path, new Date(), VERIFIED_MTIME).catch(() => {});
      return path;
    } catch (e) {
      return this.#missing(e);
    }
  }

  async put(digest: Digest, bytes: Uint8Array, kind: BlobKind = 'blob'): Promise<void> {
    if (kind === 'manifest') {
      await this.writeAtomic(this.manifestPath(digest), bytes, VERIFIED_MTIME);
      return;
    }
    await this.writeAtomic(this.path(digest), bytes, VERIFIED_MTIME);
    this.#files.set(bytes, this.path(digest));
    this.#inUse.add(digest);
    if (this.maxBytes !== undefined) await this.prune(this.maxBytes, { keep: [digest] });
  }

  /**
   * The file holding exactly these bytes, when they are an array this store returned from
   * `get` or was given to `put`, and the file is still there, the same size and unmodified
   * (verified stamp). Lets the engine hand onnxruntime file paths (mmap) instead of copies.
   * A copy (say, a LoRA-overlaid shard) is never vouched for.
   */
  async fileOf(bytes: Uint8Array): Promise<string | null> {
    const path = this.#files.get(bytes);
    if (!path) return null;
    const s = await lstat(path).catch(() => null);
    if (!s?.isFile() || s.size !== bytes.byteLength || !isStamped(s)) return null;
    return path;
  }

  async delete(digest: Digest): Promise<void> {
    // recursive: a directory squatting on the name goes too.
    await rm(this.path(digest), { recursive: true, force: true });
    await rm(this.manifestPath(digest), { recursive: true, force: true });
  }

  /** Regular files named by a digest; a root that is not a directory is a one-line error, not "0 blobs". */
  async *entries(): AsyncIterable<BlobEntry> {
    await this.check();
    let names: string[];
    try {
      names = await readdir(this.blobsDir);
    } catch (e) {
      await this.#missing(e);
      return;
    }
    for (const name of names.sort()) {
      if (!isHex(name)) continue; // temp files and strays are not blobs
      try {
        const s = await lstat(join(this.blobsDir, name));
        if (!s.isFile()) continue; // not a blob; get/locate/verify remove it
        yield { digest: `sha256:${name}`, size: s.size, lastUsed: s.atimeMs };
      } catch {
        // deleted while listing
      }
    }
  }

  /** Removes every non-file under a blob's name (FIFO, directory, symlink); returns how many. */
  async removeStrays(): Promise<number> {
    const names = await readdir(this.blobsDir).catch((e) => this.#missing(e).then(() => [] as string[]));
    let removed = 0;
    for (const name of names) {
      if (!isHex(name)) continue;
      const s = await lstat(join(this.blobsDir, name)).catch(() => null);
      if (s && !s.isFile()) {
        await this.#removeStray(`sha256:${name}`, join(this.blobsDir, name));
        removed++;
      }
    }
    return removed;
  }

  /** Total bytes of blobs held. */
  async usage(): Promise<{ blobs: number; bytes: number }> {
    let blobs = 0;
    let bytes = 0;
    for await (const e of this.entries()) {
      blobs++;
      bytes += e.size;
    }
    return { blobs, bytes };
  }

  /**
   * Re-hashes a stored blob; a blob that does not match its name is removed. A matching one
   * gets its verified stamp back, so reads stop re-hashing it.
   */
  async verify(digest: Digest): Promise<boolean> {
    return this.#verifyFile(digest, this.path(digest));
  }

  async #verifyFile(digest: Digest, path: string): Promise<boolean> {
    const actual = await sha256File(path).catch((e: unknown) => (isNotRegular(e) ? ('not-a-file' as const) : null));
    if (actual === digest) {
      const s = await lstat(path).catch(() => null);
      if (s) await utimes(path, s.atime, VERIFIED_MTIME).catch(() => {});
      return true;
    }
    await rm(path, { recursive: true, force: true });
    if (actual !== null) this.#onCorrupt?.(digest, path);
    return false;
  }

  /** Re-hashes every blob (removing the bad ones, and anything at a blob's name that is not a file). */
  async verifyAll(onBlob?: (digest: Digest, ok: boolean) => void): Promise<VerifyResult> {
    await this.removeStrays();
    const result: VerifyResult = { checked: 0, ok: 0, removed: [] };
    for await (const e of this.entries()) {
      const ok = await this.verify(e.digest);
      result.checked++;
      if (ok) result.ok++;
      else result.removed.push(e.digest);
      onBlob?.(e.digest, ok);
    }
    return result;
  }

  /**
   * Evicts least-recently-used blobs until they fit in `maxBytes`; also clears temp files
   * left by crashed writers. `keep` is never evicted; blobs this process uses go last.
   * Another process reading an evicted blob keeps its open file (POSIX unlink semantics);
   * one that has not opened it yet sees it missing and fetches it again.
   */
  async prune(maxBytes: number, options: { keep?: Digest[] } = {}): Promise<PruneResult> {
    await this.removeStaleTemps();
    await this.removeStrays();
    const keep = new Set(options.keep ?? []);
    const all: BlobEntry[] = [];
    for await (const e of this.entries()) all.push(e);
    let total = all.reduce((n, e) => n + e.size, 0);
    const result: PruneResult = { removed: [], freedBytes: 0, keptBytes: total };
    if (total <= maxBytes) return result;
    const rank = (e: BlobEntry) => (this.#inUse.has(e.digest) ? 1 : 0);
    const order = all
      .filter((e) => !keep.has(e.digest))
      .sort((a, b) => rank(a) - rank(b) || a.lastUsed - b.lastUsed || a.digest.localeCompare(b.digest));
    for (const e of order) {
      if (total <= maxBytes) break;
      await this.delete(e.digest);
      this.#inUse.delete(e.digest);
      total -= e.size;
      result.removed.push(e);
      result.freedBytes += e.size;
    }
    result.keptBytes = total;
    return result;
  }

  /** Marks a blob used now, for LRU eviction (atime only: mtime is the verified stamp). */
  async touch(digest: Digest): Promise<void> {
    const path = this.path(digest);
    const s = await lstat(path).catch(() => null);
    if (s?.isFile()) await utimes(path, new Date(), s.mtime).catch(() => {});
  }

  /**
   * Temp + fsync + rename in the target's directory: never a partial file under the final
   * name. `mtime` (seconds) is set before the rename, so the blob never appears unstamped.
   */
  async writeAtomic(target: string, bytes: Uint8Array, mtime?: number): Promise<void> {
    const dir = dirname(target);
    await mkdir(dir, { recursive: true }).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOTDIR' || e.code === 'EEXIST') await this.check();
      throw e;
    });
    const temp = join(dir, `.tmp-${randomBytes(6).toString('hex')}`);
    // wx: a fresh file of ours, never through something planted under the temp name.
    const fh = await open(temp, 'wx');
    try {
      await fh.writeFile(bytes);
      if (mtime !== undefined) await fh.utimes(new Date(), mtime);
      await fh.sync();
    } catch (e) {
      await fh.close();
      await rm(temp, { force: true });
      throw e;
    }
    await fh.close();
    try {
      await rename(temp, target);
    } catch (e) {
      // A directory squatting on the name: rename cannot replace it. Remove it, try once more.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EISDIR' && code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'EPERM') {
        await rm(temp, { force: true });
        throw e;
      }
      await rm(target, { recursive: true, force: true });
      await rename(temp, target).catch(async (again) => {
        await rm(temp, { force: true });
        throw again;
      });
    }
  }

  async removeStaleTemps(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const dir of [this.blobsDir, join(this.root, 'manifests', 'sha256')]) {
      const names = await readdir(dir).catch(() => [] as string[]);
      for (const name of names) {
        if (!name.includes('.tmp-')) continue; // ours (.tmp-x) and the build tool's (<hex>.tmp-x)
        const s = await lstat(join(dir, name)).catch(() => null);
        // ctime, not mtime: a temp file carries the verified mtime stamp before its rename.
        if (s && now - s.ctimeMs > STALE_TEMP_MS) {
          await rm(join(dir, name), { force: true });
          removed++;
        }
      }
    }
    return removed;
  }
}

function isStamped(s: { mtimeMs: number }): boolean {
  return Math.floor(s.mtimeMs / 1000) === VERIFIED_MTIME;
}

const NOT_REGULAR = Symbol('not a regular file');

function isNotRegular(e: unknown): boolean {
  return typeof e === 'object' && e !== null && NOT_REGULAR in e;
}

/**
 * Streaming SHA-256 of a regular file, for blobs too large to hold in memory. Anything else
 * (a FIFO, which would block forever; a symlink; a directory) is refused with one line.
 */
export async function sha256File(path: string): Promise<Digest> {
  const fh = await openRegularFile(path);
  if (!fh) throw Object.assign(new FuseloadError('bad-input', `${path}: not a regular file`), { [NOT_REGULAR]: true });
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    fh.createReadStream()
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(`sha256:${hash.digest('hex')}`));
  });
}
