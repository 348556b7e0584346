import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { type IncomingHttpHeaders, createServer } from 'node:http';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../common/digest.ts';
import { blobKey } from '../../common/keys.ts';
import { isHuggingFaceHost, resolveInput } from '../../tools/fetch-input/index.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { BUCKET, type S3Server, s3Env, startCuttingProxy, startS3Server, tempDir } from './helpers.ts';

const digestOf = (bytes: Uint8Array): Digest => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const storeFiles = async (store: DiskStore) => (await readdir(join(store.root, 'blobs', 'sha256')).catch(() => [])).sort();

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3Server();
});
afterAll(async () => {
  await s3?.close();
});

describe('s3:// build inputs', () => {
  it('downloads into the content-addressed store, hashed on the way, with the same configuration as publish', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'loras/style.safetensors', Body: bytes }));
    const store = new DiskStore(await tempDir('store'));
    const got = await resolveInput(`s3://${BUCKET}/loras/style.safetensors`, { store, env: s3.env });
    expect(got).toEqual({ path: store.path(digestOf(bytes)), digest: digestOf(bytes), source: `s3://${BUCKET}/loras/style.safetensors` });
    expect((await readFile(got.path)).equals(bytes)).toBe(true);
    expect(await storeFiles(store)).toEqual([got.digest.slice(7)]); // no temp file left behind
  });

  it('refuses bytes that do not hash to the expected digest, and stores nothing', async () => {
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'base/model.onnx', Body: randomBytes(1000) }));
    const store = new DiskStore(await tempDir('store'));
    const expected = digestOf(randomBytes(10));
    await expect(resolveInput(`s3://${BUCKET}/base/model.onnx`, { store, env: s3.env, expected })).rejects.toThrow(
      new RegExp(`^s3://${BUCKET}/base/model.onnx: downloaded bytes hash to sha256:[0-9a-f]{64}, expected ${expected}$`),
    );
    expect(await storeFiles(store)).toEqual([]);
  });

  it('a published blob already in the store costs one HEAD, no download', async () => {
    const bytes = randomBytes(50_000);
    const digest = digestOf(bytes);
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: blobKey(digest), Body: bytes }));
    const store = new DiskStore(await tempDir('store'));
    const proxy = await startCuttingProxy(s3.port, Number.MAX_SAFE_INTEGER); // only watches
    try {
      const env = s3Env(`http://127.0.0.1:${proxy.port}`);
      const first = await resolveInput(`s3://${BUCKET}/${blobKey(digest)}`, { store, env });
      const second = await resolveInput(`s3://${BUCKET}/${blobKey(digest)}`, { store, env });
      expect(second).toEqual(first);
      expect(first.digest).toBe(digest);
      expect(proxy.requests.map((r) => r.split(' ')[0])).toEqual(['HEAD', 'GET', 'HEAD']);
    } finally {
      await proxy.close();
    }
  });

  it('a missing object or bucket is one clear line', async () => {
    const store = new DiskStore(await tempDir('store'));
    await expect(resolveInput(`s3://${BUCKET}/nope.onnx`, { store, env: s3.env })).rejects.toThrow(
      `s3://${BUCKET}/nope.onnx: no such object in bucket "${BUCKET}" (or no such bucket)`,
    );
    await expect(resolveInput('s3://just-a-bucket', { store, env: s3.env })).rejects.toThrow('s3://just-a-bucket: want s3://<bucket>/<key>');
  });
});

describe('https:// build inputs', () => {
  let origin: string;
  const seen: IncomingHttpHeaders[] = [];
  const body = randomBytes(200_000);
  const server = createServer((req, res) => {
    seen.push(req.headers);
    if (req.url === '/redirect') return res.writeHead(302, { location: '/files/model.onnx?sig=abc' }).end();
    if (req.url?.startsWith('/files/model.onnx')) return res.writeHead(200, { 'content-length': body.length }).end(body);
    res.writeHead(404).end();
  });
  beforeAll(async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('follows redirects, verifies and stores; HF_TOKEN goes to no host but Hugging Face', async () => {
    const store = new DiskStore(await tempDir('store'));
    const token = `hf_${randomBytes(8).toString('hex')}`;
    const got = await resolveInput(`${origin}/redirect`, { store, env: { HF_TOKEN: token }, expected: digestOf(body) });
    expect(got).toEqual({ path: store.path(digestOf(body)), digest: digestOf(body), source: `${origin}/redirect` });
    expect(seen).toHaveLength(2);
    for (const h of seen) expect(h.authorization).toBeUndefined();
    // Cached by digest: no request at all the second time.
    await resolveInput(`${origin}/redirect`, { store, env: { HF_TOKEN: token }, expected: digestOf(body) });
    expect(seen).toHaveLength(2);
  });

  it('records the URL without its query, and reports HTTP errors by status', async () => {
    const store = new DiskStore(await tempDir('store'));
    const got = await resolveInput(`${origin}/files/model.onnx?sig=secret-signature`, { store });
    expect(got.source).toBe(`${origin}/files/model.onnx`);
    await expect(resolveInput(`${origin}/missing.onnx?sig=secret-signature`, { store })).rejects.toThrow(
      new RegExp(`^${origin}/missing.onnx: HTTP 404$`),
    );
  });

  it('sends HF_TOKEN only to Hugging Face hosts', () => {
    for (const host of ['huggingface.co', 'cdn-lfs.huggingface.co', 'hf.co', 'cas-bridge.xethub.hf.co']) expect(isHuggingFaceHost(host)).toBe(true);
    for (const host of ['evil-huggingface.co', 'huggingface.co.evil.com', 'hf.com', '127.0.0.1', 'example.com']) expect(isHuggingFaceHost(host)).toBe(false);
  });

  it('local paths resolve to themselves with their digest and file name', async () => {
    const dir = await tempDir('local');
    await writeFile(join(dir, 'base.onnx'), body);
    expect(await resolveInput(join(dir, 'base.onnx'))).toEqual({ path: join(dir, 'base.onnx'), digest: digestOf(body), source: 'base.onnx' });
    await expect(resolveInput(join(dir, 'nope.onnx'))).rejects.toThrow(`${join(dir, 'nope.onnx')}: no such file`);
    await expect(resolveInput('ftp://host/x.onnx')).rejects.toThrow('ftp://host/x.onnx: unsupported scheme (want a path, s3:// or https://)');
  });
});
