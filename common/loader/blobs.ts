/**
 * The one byte path (DESIGN.md, "Caching, one rule everywhere"): a blob by digest from
 * memory → the persistent store (re-verified unless the store vouches for its reads) →
 * the network under a per-blob lock (resumed, retried, verified), stored behind the load.
 * Graph, shards, assets and LoRA files all come through here.
 *
 * A blob can be verified beside the caller's next step instead of before it (`verifyLater`): its
 * bytes go on as soon as they are in, with a `verified` promise, and the caller must not let
 * anything built from them produce output until it resolves (the loader builds sessions from
 * weight shards meanwhile, and the pipeline's runs wait for it: index.ts, `handle`). Stored bytes are hashed once
 * every blob of the call is read (the reads keep the cores to themselves); downloads as they
 * stream where the runtime hashes off this thread (`hasher`), or once each is in; and, with
 * `movable`, stored records read here and downloads that fit in memory once the caller's sessions
 * are built, moved to the hasher and back. Nothing is put in memory or the store before its check. A mismatch drops what was stored and rejects with
 * `LateDigestMismatch`; the next read fetches the blob again.
 */
import pLimit from 'p-limit';
import { type Digest, sha256 } from '../digest.ts';
import { FuseloadError } from '../errors.ts';
import { blobKey, blobLockName } from '../keys.ts';
import type { BlobRef } from '../manifest.ts';
import type { CacheSource } from '../pipeline.ts';
import { type BlobStore, MemoryStore } from '../store.ts';
import { abortError, downloadAsBlob, downloadBlob, type DownloadSink, memoryBlobSink, throwIfAborted } from './download.ts';
import { fetchWithDeadline, readBounded, shownUrl } from './bounded-read.ts';
import type { Progress } from './progress.ts';

export interface BlobSourceOptions {
  store: BlobStore;
  fetch: typeof fetch;
  withLock: <T>(name: string, fn: () => Promise<T>, onContended?: () => void) => Promise<T>;
  deferStoreWrites: boolean;
  concurrency: number;
  memoryBudgetBytes?: number;
  /** LoaderRuntime.inMemoryLoadBytes (default the memory tier's budget). */
  inMemoryLoadBytes?: number;
  warn: (message: string) => void;
  /** Hashing off this thread, where the runtime has it (the browser's Web Workers); default WebCrypto inline. */
  hasher?: OffThreadHasher;
}

/** An incremental SHA-256: `update` may take the chunk's buffer (the caller is done with it), and returns a promise to wait on when behind. */
export interface StreamHash {
  update(chunk: Uint8Array): Promise<void> | void;
  digest(): Promise<Digest>;
  /** The bytes so far are void (the download starts over): frees what it holds. */
  abandon(): void;
}

/**
 * SHA-256 where it does not hold the loader's thread (WebCrypto hashes on the calling thread):
 * of a stored Blob handle, read by the hasher itself, and of a download as it streams.
 */
export interface OffThreadHasher {
  blob(blob: Blob): Promise<Digest>;
  /**
   * Bytes this thread read and no longer uses, moved to the hasher, hashed there and handed back
   * with their digest (`bytes` is detached meanwhile); `reread` gives them again where the hasher died holding them.
   */
  take?(bytes: Uint8Array, reread: () => Promise<Uint8Array>): Promise<{ digest: Digest; bytes: Uint8Array }>;
  /** A download of `size` bytes as it streams; null when it cannot take one (its workers failed): the download is hashed whole, inline. */
  stream(size: number): StreamHash | null;
}

/** A store that keeps Blobs and hands them out without reading them (IdbStore). */
interface HandleStore extends BlobStore {
  getBlob(digest: Digest): Promise<Blob | null>;
  /** `put`, of bytes already in a Blob (verified, like `put`'s); a File from `fileSink` becomes the record's bytes. */
  putBlob(digest: Digest, blob: Blob): Promise<void>;
  /**
   * A file on disk to download `digest` into (IdbStore over the Origin Private File System,
   * web/blob-files.ts); `release` once nothing reads it (it stays as a record's bytes after `putBlob`). Null: none here.
   */
  fileSink?(digest: Digest, size: number): Promise<(DownloadSink<Blob> & { release(): Promise<void> }) | null>;
  /** Keeps what backs `digest`'s handle readable until the returned function is called, even if its record is deleted meanwhile. */
  hold?(digest: Digest): Promise<() => Promise<void>>;
}

const hasHandles = (store: BlobStore): store is HandleStore =>
  typeof (store as Partial<HandleStore>).getBlob === 'function' && typeof (store as Partial<HandleStore>).putBlob === 'function';

export interface GotBlob {
  bytes: Uint8Array;
  source: CacheSource;
  bytesFetched: number;
  /** Resolves once the bytes are known to be the digest's (at once unless read with `verifyLater`); rejects with LateDigestMismatch. */
  verified: Promise<void>;
}

/** A blob from getBlobs: its bytes, or (`asHandle`) a Blob holding them. */
export interface GotData extends Omit<GotBlob, 'bytes'> {
  data: Uint8Array | Blob;
}

export interface GetOptions {
  /** Which blobs go on before they are hashed, with a `verified` promise (see above). Default none. */
  verifyLater?: (ref: BlobRef) => boolean;
  /**
   * Which blobs getBlobs may hand out as a Blob, where the store keeps Blobs (for an engine that reads
   * external data from one, `Engine.externalDataBlobs`): a stored one is its record's handle, unread
   * (hashed by the hasher, which reads it itself). Downloads are handles too when these blobs do not
   * fit in memory together (`downloadsAsHandles`, set by getBlobs against `inMemoryLoadBytes`): gathered
   * into a file on disk (`fileSink`) or a Blob, hashed from it and stored as it is, never whole in memory
   * here. Blobs that fit (`downloadsAsHandles` false) are downloaded as bytes and kept in the memory
   * tier for the next load, and, with `movable` and a hasher that can `take`, stored ones are handed
   * out as bytes read here, not as their records.
   */
  asHandle?: (ref: BlobRef) => boolean;
  downloadsAsHandles?: boolean;
  /** With asHandle: the caller reads the handles until this settles (its sessions are built); a spooled file is kept until then. */
  heldUntil?: Promise<unknown>;
  /** With verifyLater: when stored bytes start hashing (getBlobs: once all its blobs are read). Default at once. */
  hashAfter?: Promise<void>;
  /**
   * With verifyLater, where the hasher can `take`: stored records are read here as bytes (a load that
   * fits in memory reads its handles too), and downloads that fit in memory are not hashed as they
   * stream; both are handed on before they are hashed. Once this settles (the caller's sessions are
   * built: the engine has copied the bytes) those it allows are moved to the hasher, hashed there and
   * moved back for the memory tier (and the store); the rest are hashed from their record, or here.
   * One read, no copy: the engine gets stored bytes as fast as a raw read, and downloads faster than
   * a bare fetch (test/bench/browser-load.ts, docs/architecture.md "Browser loading").
   */
  movable?: Promise<(digest: Digest) => boolean>;
}

/**
 * A blob whose bytes did not hash to its digest after they had been handed on (`verifyLater`):
 * nothing of it was kept (a stored record is deleted); loading again fetches it.
 */
export class LateDigestMismatch extends FuseloadError {
  /** Set by getBlobs: where its other blobs came from and what crossed the network, for the load that goes again. */
  earlier?: { sources: Record<Digest, CacheSource>; bytesFetched: number };
  constructor(
    readonly digest: Digest,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('digest-mismatch', message, options);
  }
}

const VERIFIED = Promise.resolve();

/** Where a load's store writes wait (deferStoreWrites); `open` lets them go. */
export interface WriteGate {
  wait: Promise<void>;
  open(): void;
}

/** The longest a verified blob's store write is held back behind its load (deferStoreWrites). */
const DEFER_WRITES_MAX_MS = 5_000;

export function createBlobSource(o: BlobSourceOptions) {
  const memory = new MemoryStore(o.memoryBudgetBytes);
  const { store, warn, hasher } = o;
  const limit = pLimit(o.concurrency);
  /** Store writes still running after their load went on (store-behind). */
  const pendingWrites = new Set<Promise<unknown>>();
  /** Held-back writes of loads still running (deferStoreWrites), each a gate's opener. */
  const gates = new Set<() => void>();
  const openGates = () => {
    for (const open of gates) open();
  };

  /**
   * Stored records read before a load knows it needs them (`readAhead`), by digest: taken (once) by
   * the next `readStore` of that digest in place of its own read. Only the read moves earlier; the
   * size check and the hash are the same as for any stored record.
   */
  const ahead = new Map<Digest, Promise<{ handle: Blob; bytes: Uint8Array } | null>>();

  /** Stored records can be read here whole and moved to the hasher once the caller is done (`movable`, `readAhead`). */
  const takesBytes = !!hasher?.take && !store.verifiesReads && hasHandles(store);

  /**
   * Opened when the load's blobs are all in memory and verified, when any load of this loader has
   * to wait for a lock, or after DEFER_WRITES_MAX_MS at most.
   */
  function writeGate(): WriteGate {
    if (!o.deferStoreWrites) return { wait: Promise.resolve(), open: () => {} };
    let release!: () => void;
    const wait = new Promise<void>((resolve) => (release = resolve));
    const open = () => {
      gates.delete(open);
      clearTimeout(timer);
      release();
    };
    const timer = setTimeout(open, DEFER_WRITES_MAX_MS);
    gates.add(open);
    return { wait, open };
  }

  /**
   * A stored blob, re-hashed (unless the store vouches for its reads): before it is returned, or
   * with `verifyLater` beside the caller (the size is always checked first; it costs nothing).
   * Null when missing, unreadable, or (hashed first) corrupt.
   */
  async function readStore(ref: BlobRef, progress: Progress, options: GetOptions = {}, asHandle = false): Promise<{ data: Uint8Array | Blob; verified: Promise<void> } | null> {
    const verifyLater = options.verifyLater?.(ref) ?? false;
    let bytes: Uint8Array | null = null;
    // With a hasher and a store of handles, the hasher reads the same (immutable) Blob itself.
    let handle: Blob | null = null;
    // Read here and handed on first, hashed by the hasher once the caller lets go of the bytes.
    const movable = verifyLater && options.movable && takesBytes && (!asHandle || options.downloadsAsHandles === false) ? options.movable : null;
    const early = ahead.get(ref.digest);
    ahead.delete(ref.digest);
    try {
      const read = early && (await early);
      if (read && !(asHandle && !movable)) {
        // As its own read would have: the handle kept only where the hasher hashes from it.
        if (verifyLater && hasher) handle = read.handle;
        bytes = read.bytes;
      } else if (asHandle && hasHandles(store) && !movable) {
        // Held from before the read: an eviction by this load's own writes must not pull the file from under the engine.
        const unhold = await store.hold?.(ref.digest);
        if (unhold) void settled(options.heldUntil).then(unhold);
        handle = await store.getBlob(ref.digest);
      } else if (verifyLater && hasher && !store.verifiesReads && hasHandles(store)) {
        handle = await store.getBlob(ref.digest);
        bytes = handle && new Uint8Array(await handle.arrayBuffer());
      } else {
        bytes = await store.get(ref.digest);
      }
    } catch (e) {
      warn(`blob ${ref.digest}: ${store.kind} read failed (${errorText(e)}); fetching it`);
      return null;
    }
    const data = asHandle && !movable ? handle : bytes;
    if (!data) return null;
    const corrupt = async () => {
      warn(`blob ${ref.digest} in ${store.kind} is corrupt; fetching it again`);
      await store.delete(ref.digest).catch(() => {});
    };
    if ((data instanceof Uint8Array ? data.byteLength : data.size) !== ref.size) {
      await corrupt();
      return null;
    }
    progress.emit('verify', ref.digest, 0, ref.size);
    let found = bytes;
    // A store that verifies its own reads (DiskStore's stamp check) is not hashed twice.
    // Deferred, the hash waits for the call's other reads and for the caller's next step to start:
    // even off this thread it competes with them for the cores (on two, a warm load's reads took a
    // quarter longer when their hashes started beside them: test/bench/browser-load.ts).
    const hash = async () => {
      // A load that fits in memory: the engine has copied the bytes (it copies bytes in hand faster
      // than it reads a Blob), so they go to the hasher and back, one read and no copy
      // (test/bench/browser-load.ts, docs/architecture.md "Browser loading").
      if (movable && (await movable)(ref.digest)) {
        const got = await hasher!.take!(found!, async () => new Uint8Array(await handle!.arrayBuffer()));
        found = got.bytes;
        return got.digest;
      }
      return handle && hasher ? hasher.blob(handle) : sha256(found ?? new Uint8Array(await handle!.arrayBuffer()));
    };
    const start = movable ?? (verifyLater ? (options.hashAfter ?? VERIFIED) : VERIFIED);
    const hashed = store.verifiesReads ? Promise.resolve(true) : start.then(hash).then((d) => d === ref.digest);
    const verified = hashed.then(async (ok) => {
      if (!ok) {
        await corrupt();
        throw new LateDigestMismatch(ref.digest, `blob ${ref.digest} in ${store.kind} is corrupt; it was dropped and is fetched again`);
      }
      // Only verified bytes enter the memory tier: a later load takes them without a check.
      if (found) await memory.put(ref.digest, found);
      progress.blobDone(ref, 'store');
    });
    if (!verifyLater) return verified.then(() => ({ data, verified: VERIFIED }), () => null);
    verified.catch(() => {}); // the caller may stop listening (an aborted load); the record is dropped either way
    return { data, verified };
  }

  /** One blob: memory → store (re-verified: a tampered record is dropped) → network under the lock. */
  async function getBlob(
    origin: string,
    ref: BlobRef,
    progress: Progress,
    signal: AbortSignal | undefined,
    writeAfter: Promise<void>,
    options: Omit<GetOptions, 'asHandle'> = {},
  ): Promise<GotBlob> {
    const { data, ...got } = await getData(origin, ref, progress, signal, writeAfter, options);
    return { ...got, bytes: data as Uint8Array };
  }

  async function getData(
    origin: string,
    ref: BlobRef,
    progress: Progress,
    signal: AbortSignal | undefined,
    writeAfter: Promise<void>,
    options: GetOptions = {},
  ): Promise<GotData> {
    const hit = await memory.get(ref.digest);
    if (hit) {
      progress.blobDone(ref, 'memory');
      return { data: hit, source: 'memory', bytesFetched: 0, verified: VERIFIED };
    }
    const asHandle = (options.asHandle?.(ref) ?? false) && hasHandles(store);
    const downloadAsHandle = asHandle && !!options.downloadsAsHandles;
    const stored = await readStore(ref, progress, options, asHandle);
    if (stored) return { ...stored, source: 'store', bytesFetched: 0 };

    // Store-behind: the load continues as soon as the bytes are verified (with verifyLater, as soon
    // as they are in), while the lock is held until they are verified and stored, so another tab
    // waiting on it finds them in its store.
    // Downloads share the loader's concurrency limit; a slot is freed once the bytes are verified.
    return limit(
      () =>
        new Promise<GotData>((resolve, reject) => {
          throwIfAborted(signal, ref.digest);
          const task = o.withLock(
            blobLockName(ref.digest),
            async () => {
              // Another tab or process may have stored it while we waited for the lock.
              const held = await memory.get(ref.digest);
              const late = held ? { data: held, verified: VERIFIED } : await readStore(ref, progress, options, asHandle);
              const deferVerify = options.verifyLater?.(ref) ?? false;
              if (late) return resolve({ ...late, source: 'store', bytesFetched: 0 });
              const common = {
                url: `${origin}/${blobKey(ref.digest)}`,
                digest: ref.digest,
                size: ref.size,
                fetch: o.fetch,
                signal,
                onBytes: (received: number) => progress.bytes('download', ref, received),
                onVerify: () => progress.emit('verify', ref.digest, 0, ref.size),
                deferVerify,
              };
              // A download that fits in memory, where the hasher can take bytes: handed on as soon as it
              // is in, and hashed once the caller's sessions are built, moved to the hasher and back, as
              // a stored record read here is (`movable`). Hashed as it streamed instead, its chunks cost
              // a copy each in the hasher and a hash beside the other downloads, on the cores a download
              // over loopback keeps busy (test/bench/browser-load.ts, docs/architecture.md "Browser loading").
              const movable = deferVerify && !downloadAsHandle && hasher?.take ? options.movable : undefined;
              let movedBack: Uint8Array | null = null;
              const hashBytes = async (bytes: Uint8Array) => {
                if (!(await movable!)(ref.digest)) return sha256(bytes);
                const got = await hasher!.take!(bytes, () => Promise.reject(new Error(`blob ${ref.digest}: the hashing worker failed holding it`)));
                movedBack = got.bytes;
                return got.digest;
              };
              // As a handle, the bytes are gathered into a Blob as they come and hashed from it: no
              // shard-sized buffer here, and none left for the garbage collector.
              const download = downloadAsHandle
                ? await downloadAsBlob({
                    ...common,
                    ...(hasher ? { hashBlob: (blob: Blob) => hasher.blob(blob) } : {}),
                    sink: async (size: number) => (await (store as HandleStore).fileSink?.(ref.digest, size)) ?? memoryBlobSink(size),
                  })
                : await downloadBlob({ ...common, ...(movable ? { hashBytes } : hasher ? { stream: (size: number) => hasher.stream(size) } : {}) });
              // A downloaded file is let go once it is stored (or could not be) and the caller is done reading it.
              if ('release' in download) void settled(task).then(() => settled(options.heldUntil)).then(download.release);
              const { bytesFetched } = download;
              const verified = download.verified.catch((e: unknown) => {
                throw new LateDigestMismatch(ref.digest, (e as Error).message, { cause: e });
              });
              verified.catch(() => {});
              const downloaded = 'blob' in download ? download.blob : download.bytes;
              // Deferred: the bytes go on now; the lock is held until they are verified, then stored.
              if (deferVerify) resolve({ data: downloaded, source: 'network', bytesFetched, verified });
              await verified;
              // Hashed by the hasher, they came back in a buffer of their own (the handed-on one is detached).
              const data = movedBack ?? downloaded;
              const bytes = data instanceof Uint8Array ? data : null;
              progress.emit('verify', ref.digest, ref.size, ref.size);
              if (bytes) await memory.put(ref.digest, bytes);
              progress.emit('store', ref.digest, 0, ref.size);
              // The write waits at most for this load's own blobs (writeAfter), and a tab that has to
              // wait for a lock first releases its held-back writes: no two tabs wait on each other.
              resolve({ data, source: 'network', bytesFetched, verified: VERIFIED });
              await writeAfter;
              try {
                await (data instanceof Blob ? (store as HandleStore).putBlob(ref.digest, data) : store.put(ref.digest, data));
                progress.emit('store', ref.digest, ref.size, ref.size);
              } catch (e) {
                // Quota or a broken store: the load goes on from memory, never a crash.
                warn(`blob ${ref.digest} not cached in ${store.kind} (${errorText(e)}); running from memory`);
              }
            },
            openGates,
          );
          pendingWrites.add(task);
          task.then(
            () => pendingWrites.delete(task),
            (e) => {
              pendingWrites.delete(task);
              reject(e);
            },
          );
        }),
    );
  }

  /**
   * Many blobs at once, all or nothing: siblings stop as soon as one fails, and the load's
   * held-back store writes are let go once every blob is in memory and verified (or the load
   * failed). `verified` settles when every check has: it rejects with the first mismatch.
   */
  async function getBlobs(origin: string, refs: BlobRef[], progress: Progress, signal: AbortSignal | undefined, label: string, options: GetOptions = {}) {
    const blobs = new Map<Digest, Uint8Array | Blob>();
    const sources: Record<Digest, CacheSource> = {};
    const checks: Promise<void>[] = [];
    let bytesFetched = 0;
    const stop = new AbortController();
    const forward = () => stop.abort(signal?.reason);
    signal?.addEventListener('abort', forward, { once: true });
    const gate = writeGate();
    // With verifyLater, stored bytes are hashed once every blob here is read, and a macrotask
    // later, so the caller's next step (a session's creation) starts first.
    let allRead!: () => void;
    const hashAfter = new Promise<void>((resolve) => (allRead = () => void setTimeout(resolve, 0)));
    const handleBytes = refs.filter((ref) => options.asHandle?.(ref)).reduce((n, ref) => n + ref.size, 0);
    const inMemory = o.inMemoryLoadBytes ?? memory.budgetBytes;
    const get: GetOptions = { ...options, hashAfter: options.hashAfter ?? hashAfter, downloadsAsHandles: options.downloadsAsHandles ?? handleBytes > inMemory };
    try {
      await Promise.all(
        // Not under `limit`: memory and store reads all start at once (getBlob limits downloads).
        refs.map((ref) =>
          (async () => {
            throwIfAborted(stop.signal, label);
            const got = await getData(origin, ref, progress, stop.signal, gate.wait, get);
            checks.push(got.verified);
            sources[ref.digest] = got.source;
            bytesFetched += got.bytesFetched;
            blobs.set(ref.digest, got.data);
          })().catch((e) => {
            if (!stop.signal.aborted) stop.abort(e);
            throw e;
          }),
        ),
      );
    } catch (e) {
      if (signal?.aborted) throw abortError(label, signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', forward);
      allRead();
      // Held-back writes go once every blob is verified too (a failed load lets them go at once).
      void Promise.allSettled(checks).then(gate.open);
    }
    // Every check runs to its end (each corrupt record is dropped), then the first mismatch is thrown.
    const verified = Promise.allSettled(checks).then((results) => {
      const failed = results.find((r) => r.status === 'rejected');
      if (!failed) return;
      if (failed.reason instanceof LateDigestMismatch) failed.reason.earlier = { sources, bytesFetched };
      throw failed.reason;
    });
    verified.catch(() => {});
    return { blobs, sources, bytesFetched, verified };
  }

  /**
   * A small object (tag, manifest) over HTTP, as bytes: a deadline to the headers, an idle
   * deadline in the body, and a cap enforced while it streams (bounded-read.ts).
   */
  async function fetchSmall(url: string, signal: AbortSignal | undefined, cache: RequestCache, maxBytes: number): Promise<Uint8Array> {
    const response = await fetchWithDeadline(o.fetch, url, { cache }, { signal });
    const shown = shownUrl(url);
    if (response.status === 404) throw new FuseloadError('not-found', `${shown}: HTTP 404`);
    if (!response.ok) throw new FuseloadError('network', `${shown}: HTTP ${response.status}`);
    return readBounded(response, maxBytes, shown, { signal });
  }

  /**
   * Starts reading the stored records of `refs` that memory does not hold, as a load that fits in
   * memory reads them (its Blob handle, read whole), before the load has asked for them: the loader
   * does it while a tag revalidates, for the manifest the tag last named (index.ts, `guess`). Nothing
   * is used until a `readStore` takes it (and hashes it as ever); `drop` lets go of what none took,
   * but those named in `keep`. Null where the records would not be read whole (a store without
   * handles, one that vouches for its reads, no hasher that takes bytes, or a load past
   * `inMemoryLoadBytes`): such a load reads nothing ahead.
   */
  async function readAhead(refs: BlobRef[]): Promise<((keep?: Set<Digest>) => void) | null> {
    const inMemory = o.inMemoryLoadBytes ?? memory.budgetBytes;
    if (!takesBytes || refs.reduce((n, r) => n + r.size, 0) > inMemory) return null;
    const started = new Map<Digest, Promise<{ handle: Blob; bytes: Uint8Array } | null>>();
    for (const ref of refs) {
      if (ahead.has(ref.digest) || (await memory.has(ref.digest))) continue;
      const read = store
        .getBlob(ref.digest)
        .then(async (handle) => (handle && handle.size === ref.size ? { handle, bytes: new Uint8Array(await handle.arrayBuffer()) } : null))
        .catch(() => null);
      ahead.set(ref.digest, read);
      started.set(ref.digest, read);
    }
    return (keep) => {
      for (const [digest, read] of started) if (!keep?.has(digest) && ahead.get(digest) === read) ahead.delete(digest);
    };
  }

  return {
    memory,
    store,
    getBlob,
    getBlobs,
    fetchSmall,
    readAhead,
    /** A store write that goes on behind a load (a fetched manifest's): `flush` waits for it too. */
    behind(write: Promise<unknown>): void {
      pendingWrites.add(write);
      void settled(write).then(() => pendingWrites.delete(write));
    },
    async flush() {
      while (pendingWrites.size) await Promise.allSettled([...pendingWrites]);
    },
  };
}

export type BlobSource = ReturnType<typeof createBlobSource>;

const settled = (p: Promise<unknown> | undefined) => Promise.resolve(p).then(
  () => {},
  () => {},
);

export function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name === 'Error' ? '' : `${e.name}: `}${e.message}` : String(e);
}
