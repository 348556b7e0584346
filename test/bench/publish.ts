/**
 * Publish benchmark (`npx tsx test/bench/publish.ts`): a 256 MiB+ artifact (four 64 MiB
 * shards and a graph) to a loopback S3 server (s3rver). Compares our publish with a bare
 * lib-storage `Upload` of the same files, same part size and concurrency, in the same run
 * (target ratio <= 1.2): `BENCH_RUNS` rounds (default 3) of bare, ours (to a fresh bucket),
 * bare; each round's ratio is ours over its two bare uploads' mean, and the median of the
 * rounds is the figure (one upload slowed by the server's disk writes does not decide it).
 * Then re-publishes (target 0 bytes uploaded).
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
import { median, neighbourRatios, spread } from '../support/bench.ts';

const MiB = 1024 * 1024;
const SHARDS = Number(process.env.BENCH_SHARDS ?? 4);
const PART = 16 * MiB;
const CONCURRENCY = 4;
const RUNS = Number(process.env.BENCH_RUNS ?? 3) || 3;
/** Round r > 0 publishes to a bucket of its own, so none finds the blobs already there. */
const bucketOf = (r: number) => (r === 0 ? BUCKET : `${BUCKET}-${r}`);

const s3 = await startS3Server(['bare', ...Array.from({ length: RUNS }, (_, r) => bucketOf(r))]);
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
  const bares: number[] = [await bare('r0')];
  const ours: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    const report = await publishToBucket(dir, { env: { ...s3.env, B2_BUCKET: bucketOf(r) }, concurrency: CONCURRENCY, partSize: PART, tag: 'latest' });
    ours.push((performance.now() - t0) / 1000);
    if (report.bytesUploaded < total) throw new Error(`publish uploaded ${report.bytesUploaded} of ${total} bytes`);
    bares.push(await bare(`r${r + 1}`));
  }
  const republish = await publishToBucket(dir, { env: s3.env, concurrency: CONCURRENCY, partSize: PART, tag: 'latest' });

  const ratios = neighbourRatios(ours, bares);
  const ratio = median(ratios);
  const mib = total / MiB;
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' / ');
  console.log(`artifact ${mib.toFixed(0)} MiB in ${files.length} blobs`);
  console.log(`bare Upload: ${fmt(bares)} s (median ${(mib / median(bares)).toFixed(0)} MiB/s)`);
  console.log(`fuseload publish: ${fmt(ours)} s (median ${(mib / median(ours)).toFixed(0)} MiB/s, verifying every digest as it streams)`);
  console.log(`ratio ${spread(ratios)} (median [min–max] of ${RUNS} rounds; target ≤ 1.2)`);
  console.log(`re-publish: ${republish.bytesUploaded} bytes uploaded, ${republish.skipped.length} skipped`);
  console.log(`BENCH publish ratio=${ratio.toFixed(2)} republish_bytes=${republish.bytesUploaded} size_mib=${mib.toFixed(0)} rounds=${RUNS}`);
} finally {
  await s3.close();
  await rm(dir, { recursive: true, force: true });
}
