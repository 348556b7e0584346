/**
 * A content-addressed blob store, idb-keyval-small: the same surface whatever the backing
 * (memory, IndexedDB in the browser, disk under PIPELINE_STORE in Node).
 *
 * Contract every implementation keeps:
 * - `put` is given bytes whose digest the caller has already verified; it writes atomically
 *   (a reader sees the whole blob or nothing).
 * - `get` returns null for a missing blob; it may verify and return null for a corrupt one.
 *
 * What the loader may skip depends on what a store vouches for (both optional):
 * - `verifiesReads`: `get` never returns bytes other than those `put` was given for that
 *   digest (the store checks them itself), so the loader does not re-hash them. A store
 *   without it (memory, IndexedDB) is re-hashed on every read.
 * - `locate`: the path of a local file that holds the blob, checked the same way as `get`
 *   checks it, without reading it: an engine that maps files (onnxruntime-node) takes paths.
 */
import type { Digest } from './digest.ts';

/** What the caller stores: the store is told, never guesses from the bytes. */
export type BlobKind = 'blob' | 'manifest';

export interface BlobStore {
  readonly kind: string;
  has(digest: Digest): Promise<boolean>;
  get(digest: Digest): Promise<Uint8Array | null>;
  /** `kind` 'manifest' for a manifest by its fingerprint (the disk store keeps those apart, outside the byte budget). */
  put(digest: Digest, bytes: Uint8Array, kind?: BlobKind): Promise<void>;
  delete(digest: Digest): Promise<void>;
  entries(): AsyncIterable<{ digest: Digest; size: number; lastUsed?: number }>;
  /** True when `get` itself guarantees the bytes are the digest's (see above). */
  readonly verifiesReads?: boolean;
  /** The file holding the blob, `size` bytes, vouched for as `get` would; null when there is none. */
  locate?(digest: Digest, size: number): Promise<string | null>;
  /**
   * The fingerprint a tag (by its URL) named at the last load here, and its update: a hint, never an
   * answer. Tags are always revalidated; the loader only starts reading what the hint names while the
   * tag's request is out (docs/architecture.md, "Browser loading"). Null when there is none.
   */
  tagHint?(url: string): Promise<TagHint | null>;
  setTagHint?(url: string, hint: TagHint): Promise<void>;
}

/** What a store keeps for a tag's URL (BlobStore.tagHint). */
export interface TagHint {
  fingerprint: Digest;
  /**
   * The manifest's bytes, kept with the hint so the reads ahead begin after one store read, not
   * two. Unverified, like every store read: the loader hashes them against `fingerprint`.
   */
  manifest?: Uint8Array;
}

/**
 * The memory tier: a Map in least-recently-used order, shared by every artifact that names a
 * blob. With a byte budget, the least recently used blobs go first; a blob larger than the
 * whole budget is not kept. Sessions hold their own copies of weights, so dropping a blob here
 * only means the next load that needs it reads it from the store again.
 */
export class MemoryStore implements BlobStore {
  readonly kind = 'memory';
  readonly #blobs = new Map<Digest, Uint8Array>();
  #bytes = 0;

  constructor(readonly budgetBytes: number = Number.POSITIVE_INFINITY) {}

  async has(digest: Digest) {
    return this.#blobs.has(digest);
  }
  async get(digest: Digest) {
    const bytes = this.#blobs.get(digest);
    if (!bytes) return null;
    this.#blobs.delete(digest); // re-insert: most recently used last
    this.#blobs.set(digest, bytes);
    return bytes;
  }
  async put(digest: Digest, bytes: Uint8Array) {
    await this.delete(digest);
    if (bytes.byteLength > this.budgetBytes) return;
    for (const [oldest, old] of this.#blobs) {
      if (this.#bytes + bytes.byteLength <= this.budgetBytes) break;
      this.#blobs.delete(oldest);
      this.#bytes -= old.byteLength;
    }
    this.#blobs.set(digest, bytes);
    this.#bytes += bytes.byteLength;
  }
  async delete(digest: Digest) {
    const old = this.#blobs.get(digest);
    if (!old) return;
    this.#blobs.delete(digest);
    this.#bytes -= old.byteLength;
  }
  async *entries() {
    for (const [digest, bytes] of this.#blobs) yield { digest, size: bytes.byteLength };
  }
  get size(): number {
    return this.#blobs.size;
  }
  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }
  clear(): void {
    this.#blobs.clear();
    this.#bytes = 0;
  }
}
