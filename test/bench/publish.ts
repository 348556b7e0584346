/**
 * Publish benchmark (`npx tsx test/bench/publish.ts`): a 256 MiB+ artifact (four 64 MiB
 * shards and a graph) to a loopback S3 server (s3rver). Compares our publish with a bare
 * lib-storage `Upload` of the same files, same part size and concurrency, in the same run
 * (target ratio <= 1.2), then re-publishes (target 0 bytes uploaded).
 * Prints `BENCH publish ratio=<ours/bare> republish_bytes=<n> …` on the last line.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Upload } from '@aws-sdk/lib-storage';
import pLimit from 'p-limit';
import { digestHex } from '../../common/digest.ts';
import { publishToBucket } from '../../tools/publish/index.ts';
import { BUCKET, startS3Server, tempDir, writeArtifact } from '../publish/helpers.ts';

const MiB = 1024 * 1024;
const SHARDS = Number(process.env.BENCH_SHARDS ?? 4);
const PART = 16 * MiB;
const CONCURRENCY = 4;

const s3 = await startS3Server([BUCKET, 'bare']);
const dir = await tempDir('bench');
try {
  const shards = Array.from({ length: SHARDS }, () => randomBytes(64 * MiB));
  const art = await writeArtifact(dir, shards, { name: 'bench', graph: randomBytes(2 * MiB) });
  const files = [art.graph, ...art.shards].map((d) => join(dir, 'blobs', 'sha256', digestHex(d)));
  const total = art.bytes;

  const bare = async (prefix: string) => {
    const t0 = performance.now();
    const limit = pLimit(CONCURRENCY);
    await Promise.all(
      files.map((path, i) =>
        limit(() =>
          new Upload({
            client: s3.client,
            params: { Bucket: 'bare', Key: `${prefix}/${i}`, Body: createReadStream(path) },
            partSize: PART,
            queueSize: 4,
          }).done(),
        ),
      ),
    );
    return (performance.now() - t0) / 1000;
  };

  await bare('warmup'); // page cache and server warm for both sides
  const bareA = await bare('a');
  const t0 = performance.now();
  const report = await publishToBucket(dir, { env: s3.env, concurrency: CONCURRENCY, partSize: PART, tag: 'latest' });
  const ours = (performance.now() - t0) / 1000;
  const bareB = await bare('b');
  const republish = await publishToBucket(dir, { env: s3.env, concurrency: CONCURRENCY, partSize: PART, tag: 'latest' });
  if (report.bytesUploaded < total) throw new Error(`publish uploaded ${report.bytesUploaded} of ${total} bytes`);

  const bareMean = (bareA + bareB) / 2;
  const mib = total / MiB;
  console.log(`artifact ${mib.toFixed(0)} MiB in ${files.length} blobs`);
  console.log(`bare Upload: ${bareA.toFixed(2)} s, ${bareB.toFixed(2)} s (mean ${(mib / bareMean).toFixed(0)} MiB/s)`);
  console.log(`fuseload publish: ${ours.toFixed(2)} s (${(mib / ours).toFixed(0)} MiB/s, verifying every digest as it streams)`);
  console.log(`re-publish: ${republish.bytesUploaded} bytes uploaded, ${republish.skipped.length} skipped`);
  console.log(`BENCH publish ratio=${(ours / bareMean).toFixed(2)} republish_bytes=${republish.bytesUploaded} size_mib=${mib.toFixed(0)}`);
} finally {
  await s3.close();
  await rm(dir, { recursive: true, force: true });
}
