/**
 * Downloads written to disk as they arrive (docs/architecture.md, "Large pipelines and
 * onnxruntime-web"). For an engine that reads external data from Blobs (onnxruntime-web's JSPI
 * build), each weight shard of a load too large for the memory tier goes into a file of the Origin
 * Private File System, and that file's `File` — bytes on disk, in no process's memory — is hashed,
 * handed to the engine, and stored as the blob's IndexedDB record. Chromium's IndexedDB keeps a
 * file-backed Blob by reference, so the file *is* the record's bytes from then on: IdbStore notes the
 * file's name in the record's `meta:` entry and removes it with the record (delete, eviction, clear).
 * A Blob gathered in memory instead would sit in the browser process's blob storage until the load
 * ended: about the whole pipeline, 2 GiB for an SD-sized one.
 *
 * One folder per IndexedDB database (`<dbName>.files/`), one file per download, named
 * `<digest hex>.<random>` (a download of the same blob again never touches a file still being read).
 * A file is read until its loader lets go of it (`hold`); a record deleted meanwhile (an eviction by
 * a later write of the same load, a corrupt record) has its file removed only then. A file that no
 * record names and whose blob's download lock (`fuseload:blob:<hex>`) nobody holds was left by a
 * load that died: `sweep` removes it.
 */
import { type DownloadSink, StagedWrites } from '../common/loader/download.ts';
import { type Digest, digestHex } from '../common/digest.ts';
import { blobLockName } from '../common/keys.ts';

/** The folder surface we use (lib.dom's FileSystemDirectoryHandle, with the iterator some lib versions lack). */
interface Folder extends FileSystemDirectoryHandle {
  keys(): AsyncIterableIterator<string>;
}

/** A download's file: `finish` gives its File (named as the file is); `release` once the loader no longer reads it. */
export type FileSink = DownloadSink<Blob> & { release(): Promise<void> };

/** A file the loader reads (`readers`), whether a record names it, and whether that record was deleted meanwhile. */
interface FileState {
  readers: number;
  recorded: boolean;
  deleted: boolean;
}

/** Writes into one file: a sync access handle in a worker (synchronous, no swap file), else a writable stream. */
interface FileWriter {
  write(bytes: Uint8Array, at: number): void | Promise<unknown>;
  truncate(): void | Promise<unknown>;
  close(): Promise<void>;
  abort(): Promise<void>;
}

/** The surface of a sync access handle we use (lib.dom has it only for workers). */
interface SyncAccessHandle {
  write(buffer: Uint8Array, options: { at: number }): number;
  truncate(size: number): void;
  flush(): void;
  close(): void;
}

async function openWriter(handle: FileSystemFileHandle): Promise<FileWriter> {
  const sync = (handle as FileSystemFileHandle & { createSyncAccessHandle?: () => Promise<SyncAccessHandle> }).createSyncAccessHandle;
  if (typeof sync === 'function' && typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== 'undefined') {
    const h = await sync.call(handle);
    return {
      write: (bytes, at) => {
        for (let done = 0; done < bytes.byteLength; ) done += h.write(bytes.subarray(done), { at: at + done });
      },
      truncate: () => h.truncate(0),
      close: async () => {
        h.flush();
        h.close();
      },
      abort: async () => h.close(),
    };
  }
  const writable = await handle.createWritable();
  return {
    write: (bytes, at) => writable.write({ type: 'write', position: at, data: bytes as Uint8Array<ArrayBuffer> }),
    truncate: () => writable.truncate(0),
    close: () => writable.close(),
    abort: () => writable.abort().catch(() => {}),
  };
}

export class BlobFiles {
  #folder: Promise<Folder | null> | null = null;
  /** Files the loader still reads, by name. */
  readonly #open = new Map<string, FileState>();

  constructor(readonly name: string) {}

  /** Whether this browser context can write them (OPFS with writable files, and Web Locks). */
  static available(): boolean {
    return (
      typeof globalThis.navigator?.storage?.getDirectory === 'function' &&
      !!globalThis.navigator.locks &&
      typeof FileSystemFileHandle !== 'undefined' &&
      'createWritable' in FileSystemFileHandle.prototype
    );
  }

  #folderHandle(): Promise<Folder | null> {
    this.#folder ??= (async () => {
      try {
        return (await (await navigator.storage.getDirectory()).getDirectoryHandle(this.name, { create: true })) as Folder;
      } catch {
        return null; // an OPFS that refuses us (a storage policy, a sandboxed frame): Blobs in memory instead
      }
    })();
    return this.#folder;
  }

  /** Whether `name` is a file of ours that a download wrote and the loader still reads (so a record may name it). */
  isOpen(name: string): boolean {
    return this.#open.has(name);
  }

  /** A sink that writes a download of `digest` into a new file; null when there is no OPFS here. */
  async sink(digest: Digest, size: number): Promise<FileSink | null> {
    const folder = await this.#folderHandle();
    if (!folder) return null;
    const name = `${digestHex(digest)}.${crypto.randomUUID().slice(0, 8)}`;
    const done = this.#hold(name, false);
    let handle: FileSystemFileHandle;
    let file: FileWriter;
    try {
      handle = await folder.getFileHandle(name, { create: true });
      file = await openWriter(handle);
    } catch (e) {
      await done();
      throw e;
    }
    let open = true;
    const staged = new StagedWrites(size, file.write, file.truncate);
    return {
      write: (chunk, at) => staged.write(chunk, at),
      async finish() {
        await staged.end();
        open = false;
        await file.close();
        return handle.getFile();
      },
      release: async () => {
        if (open) {
          open = false;
          await file.abort();
        }
        await done();
      },
    };
  }

  /** A record names the file `name` now (IdbStore wrote it): it stays when its loader lets go. */
  recorded(name: string): void {
    const state = this.#open.get(name);
    if (state) state.recorded = true;
  }

  /** Keeps a record's file `name` readable until the returned function is called, even if the record is deleted meanwhile. */
  hold(name: string): () => Promise<void> {
    return this.#hold(name, true);
  }

  #hold(name: string, recorded: boolean): () => Promise<void> {
    const state = this.#open.get(name) ?? { readers: 0, recorded, deleted: false };
    state.readers++;
    this.#open.set(name, state);
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      if (--state.readers > 0) return;
      this.#open.delete(name);
      if (!state.recorded || state.deleted) await this.#removeFile(name);
    };
  }

  /** The record naming file `name` is deleted: the file goes now, or once its readers let go. */
  async remove(name: string): Promise<void> {
    const state = this.#open.get(name);
    if (state) {
      state.deleted = true;
      return;
    }
    await this.#removeFile(name);
  }

  /**
   * Removes `name`, tried again a few times while the browser still holds it locked (a writable
   * aborted a moment ago); what still cannot go is left to the next `sweep`.
   */
  async #removeFile(name: string): Promise<void> {
    const folder = await this.#folderHandle();
    if (!folder) return;
    for (const waitMs of [0, 20, 100, 500]) {
      if (waitMs) await new Promise((resolve) => setTimeout(resolve, waitMs));
      const error = await folder.removeEntry(name).then(() => null, (e: unknown) => e);
      if (!error || (error as DOMException).name === 'NotFoundError') return;
    }
  }

  async clear(): Promise<void> {
    const folder = await this.#folderHandle();
    if (!folder) return;
    const names: string[] = [];
    for await (const name of folder.keys()) if (!this.#open.has(name)) names.push(name);
    await Promise.all(names.map((name) => folder.removeEntry(name, { recursive: true }).catch(() => {})));
  }

  /** Removes files no record names (`named`), that no loader here reads and whose blob's download lock nobody holds. */
  async sweep(named: () => Promise<Set<string>>): Promise<number> {
    const folder = await this.#folderHandle();
    if (!folder) return 0;
    const held = new Set(((await navigator.locks.query()).held ?? []).map((l) => l.name));
    const keep = await named();
    let removed = 0;
    for await (const name of folder.keys()) {
      // A writable's swap file (`<name>.crswap`) goes with its file.
      const file = name.replace(/\.crswap$/, '');
      const hex = file.slice(0, 64);
      if (keep.has(file) || this.#open.has(file) || held.has(blobLockName(`sha256:${hex}`))) continue;
      await folder.removeEntry(name).catch(() => {});
      removed++;
    }
    return removed;
  }
}
