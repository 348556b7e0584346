/**
 * A content-addressed blob store, idb-keyval-small: the same surface whatever the backing
 * (memory, IndexedDB in the browser, disk under PIPELINE_STORE in Node).
 *
 * Contract every implementation keeps:
 * - `put` is given bytes whose digest the caller has already verified; it writes atomically
 *   (a reader sees the whole blob or nothing).
 * - `get` returns null for a missing blob; it may verify and return null for a corrupt one.
 */
import type { Digest } from './digest.ts';

export interface BlobStore {
  readonly kind: string;
  has(digest: Digest): Promise<boolean>;
  get(digest: Digest): Promise<Uint8Array | null>;
  put(digest: Digest, bytes: Uint8Array): Promise<void>;
  delete(digest: Digest): Promise<void>;
  entries(): AsyncIterable<{ digest: Digest; size: number; lastUsed?: number }>;
}

/** The memory tier: a plain Map, shared by every artifact that names a blob. */
export class MemoryStore implements BlobStore {
  readonly kind = 'memory';
  readonly #blobs = new Map<Digest, Uint8Array>();

  async has(digest: Digest) {
    return this.#blobs.has(digest);
  }
  async get(digest: Digest) {
    return this.#blobs.get(digest) ?? null;
  }
  async put(digest: Digest, bytes: Uint8Array) {
    this.#blobs.set(digest, bytes);
  }
  async delete(digest: Digest) {
    this.#blobs.delete(digest);
  }
  async *entries() {
    for (const [digest, bytes] of this.#blobs) yield { digest, size: bytes.byteLength };
  }
  get size(): number {
    return this.#blobs.size;
  }
  clear(): void {
    this.#blobs.clear();
  }
}
