import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import { publishToBucket } from '../../tools/publish/index.ts';
import { BUCKET, type S3Server, closedPort, headObject, runCli, s3Env, startCuttingProxy, startS3Server, tempDir, writeArtifact } from './helpers.ts';

const MiB = 1024 * 1024;
let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3Server();
});
afterAll(async () => {
  await s3?.close();
});

describe('fuseload publish to an S3 bucket', () => {
  it('uploads blobs, manifest and tag with the right headers, then re-publishes 0 bytes', async () => {
    const art = await writeArtifact(await tempDir('art'), [randomBytes(300_000), randomBytes(200_000)], { name: 'first' });
    const report = await publishToBucket(art.dir, { tag: 'latest', env: s3.env });
    expect(report.fingerprints).toEqual([art.fingerprint]);
    // Blobs first (in parallel, any order), then the manifest, then the tag.
    expect(report.uploaded.slice(0, 3).sort()).toEqual([art.graph, ...art.shards].map(blobKey).sort());
    expect(report.uploaded.slice(3)).toEqual([manifestKey(art.fingerprint), tagKey('first', 'latest')]);
    expect(report.bytesUploaded).toBe(art.bytes + `{"manifest":"${art.fingerprint}"}`.length);

    const blob = await headObject(s3.client, blobKey(art.shards[0]));
    expect(blob?.ContentLength).toBe(300_000);
    expect(blob?.CacheControl).toBe('public, max-age=31536000, immutable');
    expect(blob?.ContentType).toBe('application/octet-stream');
    const manifest = await headObject(s3.client, manifestKey(art.fingerprint));
    expect(manifest?.CacheControl).toBe('public, max-age=31536000, immutable');
    expect(manifest?.ContentType).toBe('application/json');
    const local = await readFile(join(art.dir, 'manifests', 'sha256', `${digestHex(art.fingerprint)}.json`));
    const remote = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: manifestKey(art.fingerprint) }));
    expect(Buffer.from(await remote.Body!.transformToByteArray()).equals(local)).toBe(true);
    const tag = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: tagKey('first', 'latest') }));
    expect(tag.CacheControl).toBe('public, max-age=60, stale-while-revalidate=600');
    expect(tag.ContentType).toBe('application/json');
    expect(await tag.Body!.transformToString()).toBe(`{"manifest":"${art.fingerprint}"}`);

    const again = await publishToBucket(art.dir, { tag: 'latest', env: s3.env });
    expect(again.bytesUploaded).toBe(0);
    expect(again.uploaded).toEqual([]);
    expect(again.skipped).toHaveLength(5);
  });

  it('a second LoRA variant of the same base uploads only the shards that changed', async () => {
    const shared = [randomBytes(150_000), randomBytes(150_000), randomBytes(150_000)];
    const base = await writeArtifact(await tempDir('base'), shared, { name: 'variant' });
    await publishToBucket(base.dir, { env: s3.env });
    const changed = randomBytes(150_000);
    const graph = randomBytes(4096);
    const variant = await writeArtifact(await tempDir('lora'), [shared[0], changed, shared[2]], { name: 'variant', graph });
    const events: { loaded: number; total: number }[] = [];
    const report = await publishToBucket(variant.dir, { env: s3.env, onProgress: (e) => events.push(e) });
    expect(report.uploaded.slice(0, 2).sort()).toEqual([blobKey(variant.graph), blobKey(variant.shards[1])].sort());
    expect(report.uploaded[2]).toBe(manifestKey(variant.fingerprint));
    expect(report.uploaded).toHaveLength(3);
    expect(report.skipped.sort()).toEqual([blobKey(variant.shards[0]), blobKey(variant.shards[2])].sort());
    expect(report.bytesUploaded).toBe(variant.bytes - 2 * 150_000);
    // Progress counts exactly the bytes sent, ending at the total.
    expect(events.at(-1)).toEqual({ phase: 'upload', file: manifestKey(variant.fingerprint), loaded: report.bytesUploaded, total: report.bytesUploaded });
    expect(events.every((e, i) => i === 0 || e.loaded >= events[i - 1].loaded)).toBe(true);
  });

  it('a publish cut off mid-upload leaves no manifest; re-running completes and skips what landed', async () => {
    // Four 6 MiB blobs, one at a time, in 5 MiB parts (so each is a multipart upload), no
    // retries. The graph (2 KiB) and two shards go through (~12 MiB); the connection carrying
    // the third shard's first part is dropped at 14 MiB.
    const art = await writeArtifact(await tempDir('cut'), [randomBytes(6 * MiB), randomBytes(6 * MiB), randomBytes(6 * MiB), randomBytes(6 * MiB)], { name: 'cut' });
    const proxy = await startCuttingProxy(s3.port, 14 * MiB);
    const options = { partSize: 5 * MiB, streamThreshold: 5 * MiB, concurrency: 1, partConcurrency: 1, maxAttempts: 1 };
    const failed = publishToBucket(art.dir, { ...options, tag: 'latest', env: s3Env(`http://127.0.0.1:${proxy.port}`) });
    await expect(failed).rejects.toThrow(
      /^upload blobs\/sha256\/[0-9a-f]{64}: cannot reach bucket "artifacts" at http:\/\/127\.0\.0\.1:\d+ \((ECONNRESET|EPIPE)\)$/,
    );
    await proxy.cut;
    await proxy.close();
    expect(await headObject(s3.client, manifestKey(art.fingerprint))).toBeNull();
    expect(await headObject(s3.client, tagKey('cut', 'latest'))).toBeNull();
    const landed = await Promise.all(art.shards.map(async (d) => (await headObject(s3.client, blobKey(d))) !== null));
    expect(landed.filter(Boolean)).toHaveLength(2);
    // They went in parts, and the multipart upload that was cut off was aborted (the DELETE
    // was sent; s3rver itself answers it 405, as it does not implement AbortMultipartUpload).
    const blobPath = /^\/artifacts\/blobs\/sha256\/([0-9a-f]{64})\?/;
    const started = proxy.requests.filter((r) => r.startsWith('POST ') && r.includes('?uploads')).map((r) => blobPath.exec(r.slice(5))?.[1]);
    const aborted = proxy.requests.filter((r) => r.startsWith('DELETE ') && r.includes('uploadId=')).map((r) => blobPath.exec(r.slice(7))?.[1]);
    expect(started).toHaveLength(3);
    expect(aborted).toEqual([started[2]]);
    expect(landed[art.shards.findIndex((d) => digestHex(d) === started[2])]).toBe(false);

    const rerun = await publishToBucket(art.dir, { ...options, tag: 'latest', env: s3.env });
    expect(rerun.skipped).toHaveLength(3); // the graph and the two shards that landed
    expect(rerun.uploaded.slice(2)).toEqual([manifestKey(art.fingerprint), tagKey('cut', 'latest')]);
    expect(rerun.bytesUploaded).toBe(art.bytes - 2048 - 2 * 6 * MiB + `{"manifest":"${art.fingerprint}"}`.length);
    for (const d of art.shards) expect((await headObject(s3.client, blobKey(d)))?.ContentLength).toBe(6 * MiB);
  });

  it('retries a request whose connection dropped, and completes', async () => {
    const art = await writeArtifact(await tempDir('retry'), [randomBytes(6 * MiB), randomBytes(6 * MiB)], { name: 'retry' });
    const proxy = await startCuttingProxy(s3.port, 8 * MiB);
    try {
      const report = await publishToBucket(art.dir, {
        partSize: 5 * MiB,
        streamThreshold: 5 * MiB,
        concurrency: 1,
        partConcurrency: 1,
        maxAttempts: 3,
        env: s3Env(`http://127.0.0.1:${proxy.port}`),
      });
      await proxy.cut; // the drop really happened
      expect(report.bytesUploaded).toBe(art.bytes);
      const parts = proxy.requests.filter((r) => r.startsWith('PUT ') && r.includes('partNumber='));
      expect(parts.length).toBe(5); // 2 + 2 parts, one of them sent twice
      // On the wire, the manifest is the last thing written, after every blob request.
      const lastBlob = proxy.requests.findLastIndex((r) => r.includes('/artifacts/blobs/'));
      const manifestPut = proxy.requests.findIndex((r) => r.startsWith(`PUT /artifacts/${manifestKey(art.fingerprint)}`));
      expect(manifestPut).toBe(proxy.requests.length - 1);
      expect(manifestPut).toBeGreaterThan(lastBlob);
    } finally {
      await proxy.close();
    }
    for (const d of art.shards) expect((await headObject(s3.client, blobKey(d)))?.ContentLength).toBe(6 * MiB);
    expect((await headObject(s3.client, manifestKey(art.fingerprint)))?.ContentType).toBe('application/json');
  });

  it('refuses a local blob whose bytes do not match its name, and writes no manifest', async () => {
    const art = await writeArtifact(await tempDir('tamper'), [randomBytes(100_000), randomBytes(100_000)], { name: 'tamper' });
    const victim = join(art.dir, 'blobs', 'sha256', digestHex(art.shards[1]));
    const bytes = await readFile(victim);
    bytes[500] ^= 0xff; // same size, different bytes
    await writeFile(victim, bytes);
    await expect(publishToBucket(art.dir, { tag: 'latest', env: s3.env })).rejects.toThrow(
      new RegExp(`^${victim}: bytes hash to sha256:[0-9a-f]{64}, not its name; refusing to upload`),
    );
    expect(await headObject(s3.client, blobKey(art.shards[1]))).toBeNull();
    expect(await headObject(s3.client, manifestKey(art.fingerprint))).toBeNull();
    expect(await headObject(s3.client, tagKey('tamper', 'latest'))).toBeNull();
  });

  it('a large tampered blob is checked as it streams: its multipart upload is never completed', async () => {
    const art = await writeArtifact(await tempDir('tamper-big'), [randomBytes(11 * MiB)], { name: 'tamper-big' });
    const victim = join(art.dir, 'blobs', 'sha256', digestHex(art.shards[0]));
    const bytes = await readFile(victim);
    bytes[bytes.length - 1] ^= 0xff; // the very last byte: every part but the last is sent first
    await writeFile(victim, bytes);
    const proxy = await startCuttingProxy(s3.port, Number.MAX_SAFE_INTEGER); // only watches
    try {
      const options = { partSize: 5 * MiB, streamThreshold: 5 * MiB, partConcurrency: 1, env: s3Env(`http://127.0.0.1:${proxy.port}`) };
      await expect(publishToBucket(art.dir, { ...options, tag: 'latest' })).rejects.toThrow(
        new RegExp(`^${victim}: bytes hash to sha256:[0-9a-f]{64}, not its name; refusing to upload`),
      );
    } finally {
      await proxy.close();
    }
    const key = blobKey(art.shards[0]);
    expect(proxy.requests.filter((r) => r.startsWith(`PUT /artifacts/${key}?partNumber=`)).length).toBeGreaterThan(0);
    expect(proxy.requests.filter((r) => r.startsWith(`POST /artifacts/${key}?uploadId=`))).toEqual([]); // never completed
    expect(proxy.requests.filter((r) => r.startsWith(`DELETE /artifacts/${key}?uploadId=`))).toHaveLength(1); // aborted
    expect(await headObject(s3.client, key)).toBeNull();
    expect(await headObject(s3.client, manifestKey(art.fingerprint))).toBeNull();
  });

  it('--dry-run lists what would go and writes nothing', async () => {
    const art = await writeArtifact(await tempDir('dry'), [randomBytes(10_000)], { name: 'dry' });
    const report = await publishToBucket(art.dir, { dryRun: true, tag: 'v1', env: s3.env });
    expect(report.dryRun).toBe(true);
    expect(report.uploaded.slice(0, 2).sort()).toEqual([art.graph, art.shards[0]].map(blobKey).sort());
    expect(report.uploaded.slice(2)).toEqual([manifestKey(art.fingerprint), tagKey('dry', 'v1')]);
    expect(report.bytesUploaded).toBe(art.bytes + `{"manifest":"${art.fingerprint}"}`.length);
    for (const key of report.uploaded) expect(await headObject(s3.client, key)).toBeNull();
  });

  it('a directory with several manifests: --tag needs --fingerprint; with it, tags that one', async () => {
    const dir = await tempDir('multi');
    const shared = randomBytes(50_000);
    const a = await writeArtifact(dir, [shared, randomBytes(1000)], { name: 'multi' });
    const b = await writeArtifact(dir, [shared, randomBytes(1000)], { name: 'multi' });
    await expect(publishToBucket(dir, { tag: 'latest', env: s3.env })).rejects.toThrow(
      `${dir}: holds 2 manifests; --tag needs --fingerprint to pick one`,
    );
    expect(await headObject(s3.client, blobKey(a.shards[0]))).toBeNull(); // refused before any upload
    const report = await publishToBucket(dir, { tag: 'latest', fingerprint: b.fingerprint, env: s3.env });
    expect(report.fingerprints).toEqual([b.fingerprint]);
    expect(await headObject(s3.client, manifestKey(a.fingerprint))).toBeNull();
    const tag = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: tagKey('multi', 'latest') }));
    expect(await tag.Body!.transformToString()).toBe(`{"manifest":"${b.fingerprint}"}`);
    const all = await publishToBucket(dir, { env: s3.env });
    expect(all.fingerprints.sort()).toEqual([a.fingerprint, b.fingerprint].sort());
    // b's manifest and the shared shard are there; a's own graph and shard go, then its manifest.
    expect(all.uploaded.slice(0, 2).sort()).toEqual([blobKey(a.graph), blobKey(a.shards[1])].sort());
    expect(all.uploaded.slice(2)).toEqual([manifestKey(a.fingerprint)]);
    expect(all.tag).toBeNull();
  });
});

describe('fuseload publish: bad input and faults, as the CLI reports them', () => {
  const secret = `TopSecret-${randomBytes(8).toString('hex')}`;
  let art: Awaited<ReturnType<typeof writeArtifact>>;
  beforeAll(async () => {
    art = await writeArtifact(await tempDir('cli'), [randomBytes(20_000)], { name: 'cli' });
  });

  it('publishes with --json and prints the report', async () => {
    const r = await runCli(['publish', art.dir, '--tag', 'latest', '--json'], s3.env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ fingerprints: [art.fingerprint], bytesUploaded: art.bytes + `{"manifest":"${art.fingerprint}"}`.length, tag: { key: 'tags/cli/latest.json', manifest: art.fingerprint } });
    expect(report.uploaded).toHaveLength(4);
    expect(report.skipped).toEqual([]);
  });

  it('wrong credentials: one line naming bucket and endpoint, no key id or secret anywhere', async () => {
    // s3rver checks the access key id (and answers 403 InvalidAccessKeyId like S3) but does
    // not verify signatures, so the wrong key here is the key id; the secret is wrong too.
    const keyId = `AKIA${randomBytes(6).toString('hex').toUpperCase()}`;
    const r = await runCli(['publish', art.dir, '--tag', 'latest'], s3Env(s3.endpoint, { B2_KEY_ID: keyId, B2_SECRET_KEY: secret }));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`fuseload: publish: credentials rejected by bucket "artifacts" at ${s3.endpoint} (403); check B2_KEY_ID and B2_SECRET_KEY\n`);
    expect(r.stdout + r.stderr).not.toContain(secret);
    expect(r.stdout + r.stderr).not.toContain(keyId);
  });

  // The rest through the library (no process start each): the CLI prints exactly `fuseload: <message>`.
  const failure = async (run: Promise<unknown>): Promise<string> => {
    const e = await run.then(() => null, (err: Error) => err);
    expect(e).toBeInstanceOf(Error);
    expect(e!.message).not.toContain(secret);
    return e!.message;
  };

  it('missing bucket', async () => {
    const env = s3Env(s3.endpoint, { B2_BUCKET: 'no-such-bucket', B2_SECRET_KEY: secret });
    expect(await failure(publishToBucket(art.dir, { env }))).toBe(`publish: bucket "no-such-bucket" at ${s3.endpoint} does not exist`);
  });

  it('connection refused', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const env = s3Env(endpoint, { B2_SECRET_KEY: secret });
    expect(await failure(publishToBucket(art.dir, { env, maxAttempts: 2 }))).toBe(`publish: cannot reach bucket "artifacts" at ${endpoint} (ECONNREFUSED)`);
  });

  it('a directory that is not an artifact', async () => {
    const dir = await tempDir('empty');
    expect(await failure(publishToBucket(dir, { env: s3.env }))).toBe(
      `${dir}: not an artifact directory (no manifests/sha256/<hex>.json; build one with \`fuseload build\`)`,
    );
    await rm(dir, { recursive: true });
    expect(await failure(publishToBucket(dir, { env: s3.env }))).toBe(`${dir}: no such directory`);
  });

  it('no bucket configured, and a manifest whose bytes do not match its name', async () => {
    const env = { B2_KEY_ID: 'k', B2_SECRET_KEY: secret, S3_ENDPOINT: s3.endpoint };
    expect(await failure(publishToBucket(art.dir, { env }))).toBe('publish: no bucket: pass --bucket or set B2_BUCKET');
    const dir = await tempDir('badmanifest');
    const bad = await writeArtifact(dir, [randomBytes(100)]);
    const path = join(dir, 'manifests', 'sha256', `${digestHex(bad.fingerprint)}.json`);
    await writeFile(path, (await readFile(path, 'utf8')).replace('tiny-sd', 'tiny-sx'));
    expect(await failure(publishToBucket(dir, { env: s3.env }))).toMatch(
      new RegExp(`^${path}: manifest bytes hash to sha256:[0-9a-f]{64}, expected ${bad.fingerprint}$`),
    );
    expect(await headObject(s3.client, blobKey(bad.shards[0]))).toBeNull();
  });
});
