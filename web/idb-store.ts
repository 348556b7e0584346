/**
 * The browser's persistent tier: a BlobStore over idb-keyval. One record per blob
 * (`blob:<digest>`), shared by every artifact that names it, beside a small LRU record
 * (`meta:<digest>` → size, lastUsed). Both are written in one transaction, so a reader
 * sees a whole blob with its record or neither.
 *
 * A blob's record is a `Blob`, not its bytes: Chromium keeps a large IndexedDB value in a file
 * either way, but a cloned Uint8Array is serialized and deserialized on the calling thread, while a
 * Blob is copied once on write and read back by the browser's blob path (the one the Cache API
 * reads through): 2–4× faster to read here (test/bench/browser-load.ts), and a reader that only
 * needs a handle (`getBlob`) reads no bytes at all. Records of the older layout (a Uint8Array)
 * are still read. A download the loader wrote to an OPFS file (`fileSink`, web/blob-files.ts) is
 * stored as that file: IndexedDB keeps it by reference, the `meta:` record names it, and it is
 * removed with the record.
 *
 * A `tag:<url>` record keeps the fingerprint a tag named at the last load and that manifest's bytes
 * (`tagHint`; a bare fingerprint in records from before): what the loader reads ahead while the tag
 * revalidates, never what it loads without asking.
 *
 * It does not vouch for its reads (no `verifiesReads`): IndexedDB has no modification stamp,
 * and any script of the origin or an extension can rewrite a record, so the loader re-hashes
 * every blob it reads from here.
 */
import { createStore, delMany, get, promisifyRequest, set, setMany, type UseStore } from 'idb-keyval';
import { type Digest, isDigest } from '../common/digest.ts';
import { FuseloadError } from '../common/errors.ts';
import type { BlobStore, TagHint } from '../common/store.ts';
import { BlobFiles, type FileSink } from './blob-files.ts';

export interface IdbStoreOptions {
  /** IndexedDB database name (default `fuseload`). */
  dbName?: string;
  /** Bytes this store may hold; least recently used blobs go first (default: no budget, only the browser's quota). */
  budgetBytes?: number;
  /** Downloads the loader hands on as Blobs are written to OPFS files that become their records (default true where the browser has OPFS; web/blob-files.ts). */
  filesOnDisk?: boolean;
}

export interface CachedBlob {
  digest: Digest;
  size: number;
  lastUsed: number;
}

export interface CacheInfo {
  count: number;
  bytes: number;
  blobs: CachedBlob[];
}

/** What a `blob:` record holds: a Blob (this layout) or a Uint8Array / ArrayBuffer (the layout before it). */
type StoredRecord = Blob | Uint8Array | ArrayBuffer;

interface BlobMeta {
  size: number;
  lastUsed: number;
  /** The OPFS file that holds the record's bytes (a download written to disk, web/blob-files.ts). */
  file?: string;
}

const BLOB = 'blob:';
const META = 'meta:';
/** `tag:<url>` → the fingerprint that tag named at the last load here, with its manifest (a hint: BlobStore.tagHint). */
const TAG = 'tag:';
/** How long reads' LRU times wait to be written together. */
const TOUCH_DELAY_MS = 1000;

export class IdbStore implements BlobStore {
  readonly kind = 'indexeddb';
  readonly #db: UseStore;
  budgetBytes: number;
  /** Puts run one at a time, so parallel downloads cannot all fit the same free space. */
  #writes: Promise<unknown> = Promise.resolve();
  /** Reads not yet written to their LRU record (digest → when read); written together, later. */
  readonly #touched = new Map<Digest, number>();
  #touchTimer: ReturnType<typeof setTimeout> | undefined;

  /** The OPFS files that back records of downloads (web/blob-files.ts); null without OPFS or when turned off. */
  readonly #files: BlobFiles | null;
  #swept: Promise<unknown> | null = null;

  constructor(options: IdbStoreOptions = {}) {
    const dbName = options.dbName ?? 'fuseload';
    this.#db = createStore(dbName, 'blobs');
    this.budgetBytes = options.budgetBytes ?? Number.POSITIVE_INFINITY;
    this.#files = options.filesOnDisk !== false && BlobFiles.available() ? new BlobFiles(`${dbName}.files`) : null;
  }

  /** Keeps `digest`'s file (if its record's bytes are one) until the returned function is called, even if the record is deleted meanwhile. */
  async hold(digest: Digest): Promise<() => Promise<void>> {
    const file = this.#files && (await get<BlobMeta>(META + digest, this.#db))?.file;
    return file ? this.#files!.hold(file) : async () => {};
  }

  /**
   * A file on disk to download `digest` into (blobs.ts, for shards the engine reads as Blobs): its
   * `File`, given to `putBlob`, becomes the record's bytes. Null where there is no OPFS. The first
   * call also removes files that loads which died left behind.
   */
  async fileSink(digest: Digest, size: number): Promise<FileSink | null> {
    if (!this.#files) return null;
    this.#swept ??= this.#files.sweep(async () => new Set((await this.#metas()).flatMap((m) => (m.file ? [m.file] : [])))).catch(() => 0);
    // Not where the origin's quota cannot take it (the file and, for a moment, IndexedDB's view of it):
    // the download then goes to memory, and a full quota is met where the loader handles it (`put`).
    const { quota, usage } = await navigator.storage.estimate().catch(() => ({ quota: undefined, usage: undefined }));
    if (quota !== undefined && usage !== undefined && quota - usage < 2 * size) return null;
    return this.#files.sink(digest, size).catch(() => null);
  }

  async has(digest: Digest): Promise<boolean> {
    return (await get<BlobMeta>(META + digest, this.#db)) !== undefined;
  }

  async tagHint(url: string): Promise<TagHint | null> {
    const value = await get<unknown>(TAG + url, this.#db);
    // A bare fingerprint: a record from before the manifest was kept with it.
    if (isDigest(value)) return { fingerprint: value };
    const hint = value as Partial<TagHint> | undefined;
    if (!hint || !isDigest(hint.fingerprint)) return null;
    return { fingerprint: hint.fingerprint, manifest: hint.manifest instanceof Uint8Array ? hint.manifest : undefined };
  }

  async setTagHint(url: string, hint: TagHint): Promise<void> {
    const m = hint.manifest;
    // A view is stored with its whole buffer: a manifest read into a larger one is copied out first.
    const manifest = m && (m.byteOffset || m.byteLength !== m.buffer.byteLength) ? m.slice() : m;
    await set(TAG + url, { fingerprint: hint.fingerprint, ...(manifest ? { manifest } : {}) }, this.#db);
  }

  async get(digest: Digest): Promise<Uint8Array | null> {
    const record = await this.#record(digest);
    if (record === null) return null;
    return record instanceof Blob ? new Uint8Array(await record.arrayBuffer()) : record;
  }

  /**
   * The blob as a `Blob` handle, its bytes not read (an engine that streams external data can read
   * it slice by slice); null when missing. Like `get`, unverified: the caller hashes what it reads.
   */
  async getBlob(digest: Digest): Promise<Blob | null> {
    const record = await this.#record(digest);
    if (record === null) return null;
    return record instanceof Blob ? record : new Blob([record as Uint8Array<ArrayBuffer>]);
  }

  async #record(digest: Digest): Promise<Blob | Uint8Array | null> {
    const record = await get<StoredRecord>(BLOB + digest, this.#db);
    if (record === undefined || record === null) return null;
    // lastUsed is for eviction only: one write for a load's reads, after them, so the reads of a
    // warm load are not queued behind a readwrite transaction each.
    this.#touched.set(digest, Date.now());
    this.#touchTimer ??= setTimeout(() => void this.#writeTouches().catch(() => {}), TOUCH_DELAY_MS);
    if (record instanceof Blob || record instanceof Uint8Array) return record;
    if (record instanceof ArrayBuffer) return new Uint8Array(record);
    return null; // not a record this store wrote: treated as missing (the loader fetches and rewrites it)
  }

  /** Writes pending lastUsed times into the LRU records that still exist (never resurrects a deleted blob's). */
  async #writeTouches(): Promise<void> {
    clearTimeout(this.#touchTimer);
    this.#touchTimer = undefined;
    if (this.#touched.size === 0) return;
    const touched = [...this.#touched];
    this.#touched.clear();
    await this.#db('readwrite', (store) => {
      for (const [digest, lastUsed] of touched) {
        const request = store.get(META + digest);
        request.onsuccess = () => {
          const meta = request.result as BlobMeta | undefined;
          if (meta) store.put({ ...meta, lastUsed: Math.max(meta.lastUsed, lastUsed) } satisfies BlobMeta, META + digest);
        };
      }
      return promisifyRequest(store.transaction);
    });
  }

  put(digest: Digest, bytes: Uint8Array): Promise<void> {
    // A Blob holds exactly the view's bytes (never the rest of its buffer), copied once, here.
    return this.putBlob(digest, new Blob([bytes as Uint8Array<ArrayBuffer>]));
  }

  /** `put` of bytes already in a Blob (a download the loader handed on as one): stored as it is, not copied here. */
  putBlob(digest: Digest, blob: Blob): Promise<void> {
    // A download's file (web/blob-files.ts) is kept as a plain Blob of its bytes: a slice, not a copy;
    // IndexedDB keeps it by reference, so the file is the record's bytes from now on, named in its meta.
    const file = blob instanceof File && this.#files?.isOpen(blob.name) ? blob.name : undefined;
    const record = file ? blob.slice(0, blob.size) : blob;
    const next = this.#writes.then(() => this.#put(digest, record, file)).then(() => void (file && this.#files?.recorded(file)));
    this.#writes = next.catch(() => {});
    return next;
  }

  async #put(digest: Digest, record: Blob, file?: string): Promise<void> {
    const size = record.size;
    if (size > this.budgetBytes) {
      throw new FuseloadError('quota', `blob ${digest}: ${size} bytes is more than the cache budget of ${this.budgetBytes}`);
    }
    await this.#writeTouches().catch(() => {}); // eviction below must see the latest reads
    await this.#evict(digest, (await this.#usedBytes(digest)) + size - this.budgetBytes);
    // A record this one replaces may have had its bytes in a file of its own: it goes once this is written.
    const replaced = this.#files && (await get<BlobMeta>(META + digest, this.#db).catch(() => undefined))?.file;
    const write = () =>
      setMany(
        [
          [BLOB + digest, record],
          [META + digest, { size, lastUsed: Date.now(), ...(file ? { file } : {}) } satisfies BlobMeta],
        ],
        this.#db,
      );
    try {
      await write();
    } catch (e) {
      if (!isQuotaError(e)) throw e;
      // The origin's quota is full: make room from the least recently used blobs, then try once more.
      const freed = await this.#evict(digest, size);
      try {
        if (freed === 0) throw e;
        await write();
      } catch (again) {
        if (!isQuotaError(again)) throw again;
        throw new FuseloadError('quota', `blob ${digest}: IndexedDB quota exceeded, even after evicting ${freed} bytes`, { cause: again });
      }
    }
    if (replaced && replaced !== file) await this.#files!.remove(replaced);
  }

  async delete(digest: Digest): Promise<void> {
    await this.#delete(digest, this.#files ? (await get<BlobMeta>(META + digest, this.#db).catch(() => undefined))?.file : undefined);
  }

  /** Deletes the record, and the file that holds its bytes (`file`, from its meta) if any. */
  async #delete(digest: Digest, file: string | undefined): Promise<void> {
    await delMany([BLOB + digest, META + digest], this.#db);
    if (file) await this.#files?.remove(file);
  }

  async *entries(): AsyncIterable<CachedBlob> {
    await this.#writeTouches().catch(() => {});
    for (const blob of await this.#metas()) yield cached(blob);
  }

  async info(): Promise<CacheInfo> {
    await this.#writeTouches().catch(() => {});
    const blobs = (await this.#metas()).map(cached);
    return { count: blobs.length, bytes: blobs.reduce((n, b) => n + b.size, 0), blobs };
  }

  async clear(): Promise<void> {
    await this.#db('readwrite', (store) => {
      store.clear();
      return promisifyRequest(store.transaction);
    });
    await this.#files?.clear();
  }

  async #metas(): Promise<(CachedBlob & { file?: string })[]> {
    const range = IDBKeyRange.bound(META, `${META}\uffff`);
    const [keys, values] = await this.#db('readonly', (store) =>
      Promise.all([promisifyRequest(store.getAllKeys(range)), promisifyRequest(store.getAll(range))]),
    );
    return keys.map((key, i) => ({ digest: String(key).slice(META.length) as Digest, ...(values[i] as BlobMeta) }));
  }

  async #usedBytes(except: Digest): Promise<number> {
    if (!Number.isFinite(this.budgetBytes)) return 0;
    return (await this.#metas()).filter((b) => b.digest !== except).reduce((n, b) => n + b.size, 0);
  }

  /** Deletes least recently used blobs (never `keep`) until `bytes` are freed; returns what was freed. */
  async #evict(keep: Digest, bytes: number): Promise<number> {
    if (bytes <= 0) return 0;
    const victims = (await this.#metas()).filter((b) => b.digest !== keep).sort((a, b) => a.lastUsed - b.lastUsed);
    let freed = 0;
    for (const victim of victims) {
      if (freed >= bytes) break;
      await this.#delete(victim.digest, victim.file);
      freed += victim.size;
    }
    return freed;
  }
}

/** What callers see of a record: not the name of the file that holds its bytes. */
const cached = ({ digest, size, lastUsed }: CachedBlob): CachedBlob => ({ digest, size, lastUsed });

function isQuotaError(e: unknown): boolean {
  return e instanceof DOMException ? e.name === 'QuotaExceededError' : (e as Error)?.name === 'QuotaExceededError';
}

