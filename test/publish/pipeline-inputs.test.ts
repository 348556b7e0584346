/**
 * `fuseload build --base s3://…/ | https://…/`: a diffusers ONNX directory in a bucket (a real
 * S3-protocol server on loopback) or behind any HTTP origin builds into the same artifact as
 * the same directory on disk.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { build } from '../../tools/build/build.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { BUCKET, type S3Server, runCli, startS3Server, tempDir } from './helpers.ts';

const SD_TINY = new URL('../fixtures/pipeline/sd-tiny/', import.meta.url).pathname;
let s3: S3Server;
let http: Origin;
let localFingerprint: string;
let work: string;

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(relative(dir, join(e.parentPath, e.name)));
  return out.sort();
}

beforeAll(async () => {
  work = await tempDir('pipeline-inputs');
  s3 = await startS3Server();
  for (const rel of await files(SD_TINY)) {
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: `pipes/sd-tiny/${rel}`, Body: await readFile(join(SD_TINY, rel)) }));
  }
  http = await startOrigin({ root: join(SD_TINY, '..') });
  localFingerprint = (await build({ base: SD_TINY, name: 'sd-tiny', out: join(work, 'local'), store: null })).fingerprint;
});
afterAll(async () => {
  await s3?.close();
  await http?.close();
});

describe('a remote diffusers ONNX directory', () => {
  it('s3://bucket/prefix/ builds the artifact the local directory builds', async () => {
    const r = await runCli(['build', '--base', `s3://${BUCKET}/pipes/sd-tiny/`, '--name', 'sd-tiny', '--out', join(work, 's3'), '--json'], { ...s3.env, PIPELINE_STORE: join(work, 'store-s3') });
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.schema).toBe('fuseload.pipeline/2');
    expect(report.fingerprint).toBe(localFingerprint);
  });

  it('http(s)://…/model_index.json builds it too, fetching files by their diffusers names', async () => {
    http.reset();
    const r = await runCli(['build', '--base', `${http.url}/sd-tiny/model_index.json`, '--name', 'sd-tiny', '--out', join(work, 'http'), '--json'], { PIPELINE_STORE: join(work, 'store-http') });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).fingerprint).toBe(localFingerprint);
    const paths = http.requests.map((q) => q.path);
    expect(paths).toEqual(expect.arrayContaining(['/sd-tiny/unet/model.onnx', '/sd-tiny/unet/weights.pb', '/sd-tiny/unet/weights_1.pb', '/sd-tiny/scheduler/scheduler_config.json']));
  });

  it('a component model_index.json names but the bucket lacks is one line naming the object', async () => {
    const r = await runCli(['build', '--base', `s3://${BUCKET}/nothing-here/`, '--name', 'x', '--out', join(work, 'none')], { ...s3.env, PIPELINE_STORE: join(work, 'store-none') });
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/nothing-here\/model_index\.json/);
  });
});
