/**
 * An S3 bucket (B2, R2, MinIO, AWS) as a publish target. Small bodies go in one PutObject
 * from memory (the SDK can retry them); large ones through lib-storage's Upload, which
 * splits them into parts, retries each part, and aborts the multipart upload on failure.
 */
import type { Readable } from 'node:stream';
import { AbortMultipartUploadCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { FuseloadError } from '../../common/errors.ts';
import type { ObjectHead, ObjectHeaders, PublishTarget } from '../publish/target.ts';
import { type S3ClientOptions, type S3Target, createS3Client, describeTarget } from './config.ts';
import { s3Failure } from './errors.ts';

export interface BucketTargetOptions extends S3ClientOptions {
  /** Multipart part size in bytes. Default 16 MiB (S3's minimum is 5 MiB). */
  partSize?: number;
  /** Parts in flight per large blob. Default 4. */
  partConcurrency?: number;
}

const status = (e: unknown) => (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;

export class BucketTarget implements PublishTarget {
  readonly description: string;
  readonly client: S3Client;
  readonly #partSize: number;
  readonly #queueSize: number;

  constructor(
    readonly s3: S3Target,
    options: BucketTargetOptions = {},
  ) {
    this.description = describeTarget(s3);
    this.client = createS3Client(s3, options);
    this.#partSize = options.partSize ?? 16 * 1024 * 1024;
    this.#queueSize = options.partConcurrency ?? 4;
  }

  async check(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.s3.bucket }));
    } catch (e) {
      // HEAD has no body, so a missing bucket is a bare 404.
      if (status(e) === 404) throw new FuseloadError('not-found', `publish: ${this.description} does not exist`);
      throw s3Failure(e, this.s3, 'publish');
    }
  }

  async head(key: string): Promise<ObjectHead | null> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.s3.bucket, Key: key }));
      return { size: r.ContentLength ?? -1, sha256: r.Metadata?.sha256 };
    } catch (e) {
      if (status(e) === 404) return null;
      throw s3Failure(e, this.s3, `head ${key}`);
    }
  }

  async get(key: string): Promise<Uint8Array | null> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.s3.bucket, Key: key }));
      return r.Body ? await r.Body.transformToByteArray() : new Uint8Array();
    } catch (e) {
      if (status(e) === 404) return null;
      throw s3Failure(e, this.s3, `get ${key}`);
    }
  }

  async put(key: string, bytes: Uint8Array, headers: ObjectHeaders): Promise<void> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.s3.bucket,
          Key: key,
          Body: bytes,
          ContentLength: bytes.byteLength,
          ContentType: headers.contentType,
          CacheControl: headers.cacheControl,
          Metadata: headers.sha256 ? { sha256: headers.sha256 } : undefined,
        }),
      );
    } catch (e) {
      throw s3Failure(e, this.s3, `upload ${key}`);
    }
  }

  async putStream(key: string, body: Readable, size: number, headers: ObjectHeaders, onBytes: (n: number) => void): Promise<void> {
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.s3.bucket,
        Key: key,
        Body: body,
        ContentLength: size,
        ContentType: headers.contentType,
        CacheControl: headers.cacheControl,
        Metadata: headers.sha256 ? { sha256: headers.sha256 } : undefined,
      },
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      // We abort ourselves (below): lib-storage's own abort, when it fails, throws its error in
      // place of the real one, so "connection reset" would surface as the abort's 405 or 403.
      leavePartsOnError: true,
    });
    let sent = 0;
    upload.on('httpUploadProgress', (p) => {
      if (typeof p.loaded === 'number' && p.loaded > sent) {
        onBytes(p.loaded - sent);
        sent = p.loaded;
      }
    });
    try {
      await upload.done();
      if (sent < size) onBytes(size - sent);
    } catch (e) {
      // Abort the multipart upload, if one was started, so no orphaned parts stay billed.
      const uploadId = upload.uploadId;
      if (uploadId) {
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.s3.bucket, Key: key, UploadId: uploadId })).catch(() => {});
      }
      throw s3Failure(e, this.s3, `upload ${key}`);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
