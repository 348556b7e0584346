/**
 * What `publishArtifact` needs from a place to publish to. Two implementations: an S3
 * bucket (tools/s3/bucket-target.ts) and the local R2 state of `wrangler dev`
 * (tools/local-r2/local-target.ts). Keys are the artifact layout's keys (common/keys.ts).
 */
import type { Readable } from 'node:stream';

export interface ObjectHeaders {
  contentType: string;
  cacheControl: string;
  /** Bare hex SHA-256 of the body, kept as object metadata so a later HEAD can check it. */
  sha256?: string;
}

export interface ObjectHead {
  size: number;
  /** From metadata when the object was written by us; absent otherwise. */
  sha256?: string;
}

export interface PublishTarget {
  /** For messages: `bucket "x" at https://host`, never a credential. */
  readonly description: string;
  /** Fails with one clear line when the target cannot be written at all (auth, no bucket, unreachable). */
  check(): Promise<void>;
  head(key: string): Promise<ObjectHead | null>;
  get(key: string): Promise<Uint8Array | null>;
  put(key: string, bytes: Uint8Array, headers: ObjectHeaders): Promise<void>;
  /**
   * Large bodies, streamed. `body` may fail at its end (publish verifies the digest as the
   * bytes pass); then nothing may appear under `key` (S3: the multipart upload is never
   * completed, and is aborted). `onBytes` gets each increment of bytes sent.
   */
  putStream(key: string, body: Readable, size: number, headers: ObjectHeaders, onBytes: (n: number) => void): Promise<void>;
  close(): Promise<void>;
}

export const IMMUTABLE = 'public, max-age=31536000, immutable';
export const TAG_CACHE = 'public, max-age=60, stale-while-revalidate=600';
