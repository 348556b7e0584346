/**
 * The real thing end to end: the sample model, `fuseload build` (two LoRA variants of one
 * base, small shards), then `fuseload publish` of each to the loopback S3 server; and the
 * sample LoRA fetched back as an `s3://` build input.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../common/digest.ts';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import { type Manifest, decodeManifest, schema1 } from '../../common/manifest.ts';
import { resolveInput } from '../../tools/fetch-input/index.ts';
import { writeGraphSample } from '../../tools/sample/graph-sample.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { BUCKET, type S3Server, headObject, runCli, startS3Server, tempDir } from './helpers.ts';

let s3: S3Server;
let work: string;
let warm: Built;
let detail: Built;
beforeAll(async () => {
  s3 = await startS3Server();
  work = await tempDir('built');
  await writeGraphSample(join(work, 'sample'));
  [warm, detail] = await Promise.all([build('warm.safetensors', 'warm'), build('detail.safetensors', 'detail')]);
});
afterAll(async () => {
  await s3?.close();
});

interface Built {
  fingerprint: Digest;
  manifest: Manifest;
}

async function build(lora: string, out: string): Promise<Built> {
  const r = await runCli(
    ['build', '--base', join(work, 'sample', 'model.onnx'), '--lora', `${join(work, 'sample', lora)}:0.8`, '--name', 'sample', '--out', join(work, out), '--shard-size', '8KiB', '--json'],
    { PIPELINE_STORE: join(work, 'store') }, // the build cache, not the user's
  );
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const [name] = await readdir(join(work, out, 'manifests', 'sha256'));
  const fingerprint: Digest = `sha256:${name.slice(0, -5)}`;
  expect(JSON.parse(r.stdout).fingerprint).toBe(fingerprint);
  const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(join(work, out, 'manifests', 'sha256', name))), name, fingerprint));
  return { fingerprint, manifest };
}

describe('publishing what `fuseload build` wrote', () => {
  it('publishes a built artifact, then a second LoRA variant moves only the shards it changed', async () => {
    expect(warm.manifest.shards.length).toBeGreaterThan(2);
    const first = await runCli(['publish', join(work, 'warm'), '--tag', 'latest', '--json'], s3.env);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const r1 = JSON.parse(first.stdout);
    const warmBlobs = [warm.manifest.graph.digest, ...warm.manifest.shards.map((s) => s.digest), warm.manifest.loras[0].digest];
    expect(r1.uploaded.slice(0, -2).sort()).toEqual([...new Set(warmBlobs)].map(blobKey).sort());
    expect(r1.uploaded.slice(-2)).toEqual([manifestKey(warm.fingerprint), tagKey('sample', 'latest')]);
    for (const d of warmBlobs) expect(await headObject(s3.client, blobKey(d))).not.toBeNull();

    const second = await runCli(['publish', join(work, 'detail'), '--json'], s3.env);
    expect(second.code).toBe(0);
    const r2 = JSON.parse(second.stdout);
    const published = new Set(warmBlobs);
    const detailBlobs = [...new Set([detail.manifest.graph.digest, ...detail.manifest.shards.map((s) => s.digest), detail.manifest.loras[0].digest])];
    const shared = detailBlobs.filter((d) => published.has(d));
    expect(shared.length).toBeGreaterThan(0); // shards no LoRA touched are common to both variants
    expect(r2.skipped.sort()).toEqual(shared.map(blobKey).sort());
    expect(r2.uploaded.slice(0, -1).sort()).toEqual(detailBlobs.filter((d) => !published.has(d)).map(blobKey).sort());
    expect(r2.uploaded.at(-1)).toBe(manifestKey(detail.fingerprint));
  });

  it('an s3:// LoRA comes back byte for byte: the digest the build records', async () => {
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'loras/warm.safetensors', Body: await readFile(join(work, 'sample', 'warm.safetensors')) }));
    const store = new DiskStore(await tempDir('store'));
    const got = await resolveInput(`s3://${BUCKET}/loras/warm.safetensors`, { store, env: s3.env });
    expect(got.digest).toBe(warm.manifest.loras[0].digest);
    expect(got.path).toBe(store.path(got.digest));
  });

  it('`fuseload build --base s3://… --lora s3://…:0.8` gives the same weights as the local build', async () => {
    const put = async (key: string, file: string) =>
      s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: await readFile(join(work, 'sample', file)) }));
    await put('models/model.onnx', 'model.onnx');
    await put('models/warm.safetensors', 'warm.safetensors');
    const r = await runCli(
      ['build', '--base', `s3://${BUCKET}/models/model.onnx`, '--lora', `s3://${BUCKET}/models/warm.safetensors:0.8`, '--name', 'sample', '--out', join(work, 's3-warm'), '--shard-size', '8KiB', '--json'],
      { ...s3.env, PIPELINE_STORE: join(work, 's3-store') },
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    const [name] = await readdir(join(work, 's3-warm', 'manifests', 'sha256'));
    const m = schema1(await decodeManifest(new Uint8Array(await readFile(join(work, 's3-warm', 'manifests', 'sha256', name))), name, report.fingerprint));
    // Same bytes, other source: identical weights and digests, only the recorded sources differ.
    expect(m.base).toEqual({ digest: warm.manifest.base.digest, source: `s3://${BUCKET}/models/model.onnx` });
    expect(m.shards).toEqual(warm.manifest.shards);
    expect(m.loras[0]).toMatchObject({ digest: warm.manifest.loras[0].digest, scale: 0.8, source: `s3://${BUCKET}/models/warm.safetensors` });
    // The downloads went through the content-addressed store, verified.
    expect(await new DiskStore(join(work, 's3-store')).has(warm.manifest.loras[0].digest)).toBe(true);
  });
});
