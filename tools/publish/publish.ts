/**
 * Publishes an artifact directory: blobs first, then manifests, then the tag — so a reader
 * never finds a manifest naming a missing blob, or a tag naming a missing manifest.
 * What is already there (same key, same size, and same SHA-256 where the object carries
 * it) is skipped, so re-publishing moves 0 bytes and a new LoRA variant moves only the
 * shards it changed. A local blob whose bytes do not match its name is refused: a small one
 * is hashed before it is sent, a large one as it streams, failing before the object is
 * complete. Either way no object appears under its name and no manifest or tag is written.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pLimit from 'p-limit';
import { canonicalJsonBytes } from '../../common/canonical-json.ts';
import { type Digest, digestHex } from '../../common/digest.ts';
import { FuseloadError, badInput } from '../../common/errors.ts';
import { blobKey, isName, manifestKey, tagKey } from '../../common/keys.ts';
import { type LocalBlob, localBlobs, readArtifactDir, selectManifests } from './artifact.ts';
import { IMMUTABLE, type ObjectHead, type PublishTarget, TAG_CACHE } from './target.ts';

export interface PublishOptions {
  /** Points `tags/<manifest name>/<tag>.json` at the published manifest. Needs one manifest. */
  tag?: string;
  /** Publish only this manifest of the directory (required with --tag when it holds several). */
  fingerprint?: Digest;
  /** Decide what would be uploaded, upload nothing. */
  dryRun?: boolean;
  /** Blobs in flight at once. Default 4. */
  concurrency?: number;
  /** Blobs above this many bytes are streamed from disk (multipart on S3), smaller ones sent from memory. Default 16 MiB. */
  streamThreshold?: number;
  /** `{ phase, file, loaded, total }` as everywhere in fuseload; `loaded`/`total` count all bytes of this publish. */
  onProgress?: (event: { phase: 'upload'; file: string; loaded: number; total: number }) => void;
}

export interface PublishReport {
  target: string;
  dryRun: boolean;
  fingerprints: Digest[];
  /** Keys written (or, with dryRun, that would be), in write order. */
  uploaded: string[];
  /** Keys already there. */
  skipped: string[];
  bytesUploaded: number;
  tag: { key: string; manifest: Digest } | null;
}

export const DEFAULT_STREAM_THRESHOLD = 16 * 1024 * 1024;

export async function publishArtifact(dir: string, target: PublishTarget, options: PublishOptions = {}): Promise<PublishReport> {
  const { tag, dryRun = false } = options;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const threshold = options.streamThreshold ?? DEFAULT_STREAM_THRESHOLD;
  if (tag !== undefined && !isName(tag)) throw badInput('--tag', `"${tag}" is not a tag name ([A-Za-z0-9][A-Za-z0-9._-]*)`);

  const artifact = await readArtifactDir(dir);
  const manifests = selectManifests(artifact, options.fingerprint, tag);
  const blobs = await localBlobs(dir, manifests);
  await target.check();

  const limit = pLimit(concurrency * 4); // HEADs are tiny: more of them in flight
  const isThere = (head: ObjectHead | null, size: number, hex: string) =>
    head !== null && head.size === size && (head.sha256 === undefined || head.sha256 === hex);
  const blobHeads = await Promise.all(blobs.map((b) => limit(() => target.head(blobKey(b.digest)))));
  const missingBlobs = blobs.filter((b, i) => !isThere(blobHeads[i], b.size, digestHex(b.digest)));
  const manifestHeads = await Promise.all(manifests.map((m) => limit(() => target.head(manifestKey(m.fingerprint)))));
  const missingManifests = manifests.filter((m, i) => !isThere(manifestHeads[i], m.bytes.byteLength, digestHex(m.fingerprint)));

  let tagWrite: { key: string; bytes: Uint8Array; manifest: Digest } | null = null;
  let tagSkipped = false;
  if (tag !== undefined) {
    const m = manifests[0];
    const key = tagKey(m.manifest.name, tag);
    const bytes = canonicalJsonBytes({ manifest: m.fingerprint });
    const current = await target.get(key);
    tagSkipped = current !== null && Buffer.from(current).equals(bytes);
    tagWrite = { key, bytes, manifest: m.fingerprint };
  }

  const report: PublishReport = {
    target: target.description,
    dryRun,
    fingerprints: manifests.map((m) => m.fingerprint),
    uploaded: [],
    skipped: [
      ...blobs.filter((b) => !missingBlobs.includes(b)).map((b) => blobKey(b.digest)),
      ...manifests.filter((m) => !missingManifests.includes(m)).map((m) => manifestKey(m.fingerprint)),
      ...(tagWrite && tagSkipped ? [tagWrite.key] : []),
    ],
    bytesUploaded: 0,
    tag: tagWrite && { key: tagWrite.key, manifest: tagWrite.manifest },
  };
  const total =
    missingBlobs.reduce((n, b) => n + b.size, 0) +
    missingManifests.reduce((n, m) => n + m.bytes.byteLength, 0) +
    (tagWrite && !tagSkipped ? tagWrite.bytes.byteLength : 0);

  if (dryRun) {
    report.uploaded = [
      ...missingBlobs.map((b) => blobKey(b.digest)),
      ...missingManifests.map((m) => manifestKey(m.fingerprint)),
      ...(tagWrite && !tagSkipped ? [tagWrite.key] : []),
    ];
    report.bytesUploaded = total;
    return report;
  }

  let loaded = 0;
  const progress = (file: string, n: number) => {
    loaded += n;
    options.onProgress?.({ phase: 'upload', file, loaded, total });
  };

  // 1. Blobs. The first failure stops new uploads from starting and nothing below runs.
  //    Uploads already in flight finish or fail on their own (each aborts its multipart
  //    upload on failure); a whole blob landing is harmless, its key is its digest.
  let failed = false;
  const uploadLimit = pLimit(concurrency);
  const uploadBlob = async (blob: LocalBlob) => {
    if (failed) return;
    const key = blobKey(blob.digest);
    const headers = { contentType: 'application/octet-stream', cacheControl: IMMUTABLE, sha256: digestHex(blob.digest) };
    if (blob.size <= threshold) {
      // Hash the very bytes that are sent, so a file changing underneath cannot slip through.
      const bytes = new Uint8Array(await readFile(blob.path));
      refuseMismatch(blob, `sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      if (failed) return;
      await target.put(key, bytes, headers);
      progress(key, bytes.byteLength);
    } else {
      // Hashed as it streams, in one read: the check fails the body at its end, before the
      // last part is sent, so the object is never completed (see PublishTarget.putStream).
      await target.putStream(key, verifiedStream(blob), blob.size, headers, (n) => progress(key, n));
    }
    report.uploaded.push(key);
    report.bytesUploaded += blob.size;
  };
  const results = await Promise.allSettled(
    missingBlobs.map((b) =>
      uploadLimit(() =>
        uploadBlob(b).catch((e) => {
          failed = true;
          throw e;
        }),
      ),
    ),
  );
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;

  // 2. Manifests: every blob they name is in place now.
  for (const m of missingManifests) {
    const key = manifestKey(m.fingerprint);
    await target.put(key, m.bytes, { contentType: 'application/json', cacheControl: IMMUTABLE, sha256: digestHex(m.fingerprint) });
    progress(key, m.bytes.byteLength);
    report.uploaded.push(key);
    report.bytesUploaded += m.bytes.byteLength;
  }

  // 3. The tag, last: its manifest is in place now.
  if (tagWrite && !tagSkipped) {
    await target.put(tagWrite.key, tagWrite.bytes, { contentType: 'application/json', cacheControl: TAG_CACHE });
    progress(tagWrite.key, tagWrite.bytes.byteLength);
    report.uploaded.push(tagWrite.key);
    report.bytesUploaded += tagWrite.bytes.byteLength;
  }
  return report;
}

function verifiedStream(blob: LocalBlob): Readable {
  const hash = createHash('sha256');
  const check = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      try {
        refuseMismatch(blob, `sha256:${hash.digest('hex')}`);
        done();
      } catch (e) {
        done(e as Error);
      }
    },
  });
  pipeline(createReadStream(blob.path, { highWaterMark: 1024 * 1024 }), check).catch(() => {}); // errors surface on `check`
  return check;
}

function refuseMismatch(blob: LocalBlob, actual: Digest): void {
  if (actual !== blob.digest) {
    throw new FuseloadError('digest-mismatch', `${blob.path}: bytes hash to ${actual}, not its name; refusing to upload (rebuild the artifact)`);
  }
}
