/**
 * Downloads written to disk as they arrive (docs/architecture.md, "Large pipelines and
 * onnxruntime-web"). For an engine that reads external data from Blobs (onnxruntime-web's JSPI
 * build), each weight shard of a cold load goes into a file of the Origin Private File System, and
 * that file's `File` — bytes on disk, in no process's memory — is hashed, handed to the engine, and
 * stored as the blob's IndexedDB record. Chromium's IndexedDB keeps a file-backed Blob by reference,
 * so the file *is* the record's bytes from then on: IdbStore removes it with the record (delete,
 * eviction, clear). A Blob gathered in memory instead would sit in the browser process's blob
 * storage until the load ended: about the whole pipeline, 2 GiB for an SD-sized one.
 *
 * One folder per IndexedDB database (`<dbName>.files/`), one file per blob, named by its digest's hex.
 * A file appears whole or not at all (a writable's bytes reach the file only on `close`), and only
 * under the blob's download lock (`fuseload:blob:<hex>`, held until the record is written): a file
 * with no record whose lock nobody holds was left by a load that died, and `sweep` removes it.
 */
import type { DownloadSink } from '../common/loader/download.ts';
import { StagedWrites } from '../common/loader/download.ts';
import { type Digest, digestHex } from '../common/digest.ts';

/** The folder surface we use (lib.dom's FileSystemDirectoryHandle, with the iterator some lib versions lack). */
interface Folder extends FileSystemDirectoryHandle {
  keys(): AsyncIterableIterator<string>;
}

/** A download's file: `release` says the loader is done reading it (it stays if it is a record's bytes). */
export type FileSink = DownloadSink<Blob> & { release(): Promise<void> };

/** A file the loader is reading (`readers`), whether a record owns it, and whether it was deleted meanwhile. */
interface FileState {
  readers: number;
  recorded: boolean;
  deleted: boolean;
}

export class BlobFiles {
  #folder: Promise<Folder | null> | null = null;
  /** Files of downloads the loader still reads: a record's delete (an eviction) waits for them. */
  readonly #open = new Map<string, FileState>();

  constructor(readonly name: string) {}

  /** Whether this browser context can write them (OPFS with writable files, and Web Locks). */
  static available(): boolean {
    return typeof globalThis.navigator?.storage?.getDirectory === 'function' && !!globalThis.navigator.locks && typeof FileSystemFileHandle !== 'undefined' && 'createWritable' in FileSystemFileHandle.prototype;
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

  /** A sink that writes the download of `digest` into its file; null when there is no OPFS here. */
  async sink(digest: Digest, size: number): Promise<FileSink | null> {
    const folder = await this.#folderHandle();
    if (!folder) return null;
    const name = digestHex(digest);
    const handle = await folder.getFileHandle(name, { create: true });
    const writable = await handle.createWritable();
    const done = this.hold(digest, false);
    let open = true;
    const staged = new StagedWrites(
      size,
      (bytes, at) => writable.write({ type: 'write', position: at, data: bytes as Uint8Array<ArrayBuffer> }),
      () => writable.truncate(0),
    );
    return {
      write: (chunk, at) => staged.write(chunk, at),
      async finish() {
        await staged.end();
        open = false;
        await writable.close();
        return handle.getFile();
      },
      release: async () => {
        if (open) {
          open = false;
          await writable.abort().catch(() => {});
        }
        await done();
      },
    };
  }

  /**
   * The loader reads `digest`'s file (a download's, or a stored record's handle) until the returned
   * function is called: a delete of its record meanwhile (an eviction by a later write of the same
   * load) removes the file only then. A download's file (`recorded` false) goes then unless
   * `recorded()` was said of it.
   */
  hold(digest: Digest, recorded = true): () => Promise<void> {
    const name = digestHex(digest);
    const state = this.#open.get(name) ?? { readers: 0, recorded, deleted: false };
    state.readers++;
    this.#open.set(name, state);
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      if (--state.readers > 0) return;
      this.#open.delete(name);
      if (!state.recorded || state.deleted) await (await this.#folderHandle())?.removeEntry(name).catch(() => {});
    };
  }

  /** `digest`'s file is now its record's bytes (IdbStore.putBlob of the sink's File). */
  recorded(digest: Digest): void {
    const state = this.#open.get(digestHex(digest));
    if (state) state.recorded = true;
  }

  /** Removes `digest`'s file (its record is deleted), or, while a load still reads it, once that load is done. */
  async remove(digest: Digest): Promise<void> {
    const name = digestHex(digest);
    const state = this.#open.get(name);
    if (state) {
      state.deleted = true;
      return;
    }
    const folder = await this.#folderHandle();
    await folder?.removeEntry(name).catch(() => {});
  }

  async clear(): Promise<void> {
    const folder = await this.#folderHandle();
    if (!folder) return;
    const names: string[] = [];
    for await (const name of folder.keys()) names.push(name);
    await Promise.all(names.map((name) => folder.removeEntry(name, { recursive: true }).catch(() => {})));
  }

  /** Removes the files of blobs with no record (`recorded`) whose download lock nobody holds: what a load that died left. */
  async sweep(recorded: (digest: Digest) => Promise<boolean>): Promise<number> {
    const folder = await this.#folderHandle();
    if (!folder) return 0;
    const held = new Set(((await navigator.locks.query()).held ?? []).map((l) => l.name));
    let removed = 0;
    for await (const name of folder.keys()) {
      // A writable's swap file (`<hex>.crswap`) goes with its blob's.
      const hex = name.replace(/\.crswap$/, '');
      if (!/^[0-9a-f]{64}$/.test(hex) || held.has(`fuseload:blob:${hex}`)) continue;
      if (name === hex && (await recorded(`sha256:${hex}`))) continue;
      await folder.removeEntry(name).catch(() => {});
      removed++;
    }
    return removed;
  }
}
