/**
 * Real parts for the publish tests: an S3-protocol server (s3rver) on a free loopback port
 * over a fresh temp dir, artifact directories with valid manifests, a TCP proxy that cuts
 * connections part-way, and the CLI run as a child process.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { type Manifest, MANIFEST_SCHEMA, encodeManifest } from '../../common/manifest.ts';

export const REPO_ROOT = new URL('../..', import.meta.url).pathname;
export const BUCKET = 'artifacts';
/** s3rver's only credentials. */
export const KEY = 'S3RVER';

/** Folders `tempDir` made in this test file: removed after it (test/publish/setup.ts). */
const tempDirs: string[] = [];

export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `fuseload-${prefix}-`));
  tempDirs.push(dir);
  return dir;
}

export async function removeTempDirs(): Promise<void> {
  for (const dir of tempDirs.splice(0)) await rm(dir, { recursive: true, force: true });
}

export interface S3Server {
  endpoint: string;
  port: number;
  close(): Promise<void>;
  client: S3Client;
  env: NodeJS.ProcessEnv;
}

export async function startS3Server(buckets = [BUCKET]): Promise<S3Server> {
  const directory = await tempDir('s3rver');
  const server = new S3rver({
    port: 0,
    address: '127.0.0.1',
    silent: true,
    directory,
    configureBuckets: buckets.map((name) => ({ name, configs: [] })),
  } as ConstructorParameters<typeof S3rver>[0]);
  const info = (await server.run()) as unknown as { port: number };
  const endpoint = `http://127.0.0.1:${info.port}`;
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: KEY, secretAccessKey: KEY },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return {
    endpoint,
    port: info.port,
    client,
    env: s3Env(endpoint),
    async close() {
      client.destroy();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** The environment an existing B2 user would have, pointed at `endpoint`. */
export function s3Env(endpoint: string, overrides: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { B2_BUCKET: BUCKET, B2_KEY_ID: KEY, B2_SECRET_KEY: KEY, B2_REGION: 'us-east-1', S3_ENDPOINT: endpoint, ...overrides };
}

export async function headObject(client: S3Client, key: string, bucket = BUCKET) {
  try {
    return await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  } catch (e) {
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return null;
    throw e;
  }
}

export interface BuiltArtifact {
  dir: string;
  fingerprint: Digest;
  graph: Digest;
  shards: Digest[];
  bytes: number;
}

/**
 * Writes an artifact the way `fuseload build` lays it out: a graph blob, shard blobs and a
 * manifest named by its digest. `shards` are the shard contents (share them to make variants).
 */
export async function writeArtifact(dir: string, shards: Uint8Array[], opts: { name?: string; graph?: Uint8Array } = {}): Promise<BuiltArtifact> {
  const blobDir = join(dir, 'blobs', 'sha256');
  const manifestDir = join(dir, 'manifests', 'sha256');
  await mkdir(blobDir, { recursive: true });
  await mkdir(manifestDir, { recursive: true });
  const graphBytes = opts.graph ?? randomBytes(2048);
  const put = async (bytes: Uint8Array) => {
    const digest = await sha256(bytes);
    await writeFile(join(blobDir, digestHex(digest)), bytes);
    return { digest, size: bytes.byteLength };
  };
  const graph = await put(graphBytes);
  const shardRefs = [];
  for (const s of shards) shardRefs.push(await put(s));
  const manifest: Manifest = {
    schema: MANIFEST_SCHEMA,
    name: opts.name ?? 'tiny-sd',
    graph,
    shards: shardRefs,
    base: { digest: graph.digest, source: 'tiny-sd.onnx' },
    loras: [],
    tensors: shardRefs.map((s, i) => ({ name: `w${i}`, shard: i, offset: 0, length: s.size, dtype: 'uint8' as const, shape: [s.size], layout: 'none' as const })),
    build: { tool: 'fuseload', version: '0.1.0', shardSize: 64 * 1024 * 1024, alignment: 64, strict: false },
  };
  const encoded = await encodeManifest(manifest);
  await writeFile(join(manifestDir, `${digestHex(encoded.fingerprint)}.json`), encoded.bytes);
  return {
    dir,
    fingerprint: encoded.fingerprint,
    graph: graph.digest,
    shards: shardRefs.map((s) => s.digest),
    bytes: graph.size + shardRefs.reduce((n, s) => n + s.size, 0) + encoded.bytes.byteLength,
  };
}

/**
 * A loopback TCP proxy in front of `port` that drops the connection carrying the byte at
 * which `budget` bytes have gone upstream (a server dying mid-request), once; every other
 * connection, before and after, passes through.
 */
export async function startCuttingProxy(
  port: number,
  budget: number,
): Promise<{ port: number; cut: Promise<void>; requests: string[]; close(): Promise<void> }> {
  let sent = 0;
  let cutDone = false;
  let signalCut: () => void = () => {};
  const cut = new Promise<void>((r) => (signalCut = r));
  // Request lines seen going upstream ("PUT /bucket/key?partNumber=1&uploadId=…"), to tell what the client did.
  const requests: string[] = [];
  const open = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    open.add(client);
    open.add(upstream);
    const drop = () => {
      open.delete(client);
      open.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk: Buffer) => {
      if (!cutDone && sent + chunk.length >= budget) {
        cutDone = true;
        drop();
        signalCut();
        return;
      }
      sent += chunk.length;
      for (const m of chunk.toString('latin1').matchAll(/(GET|PUT|POST|DELETE|HEAD) (\/\S*) HTTP\/1\.1\r\n/g)) requests.push(`${m[1]} ${m[2]}`);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    cut,
    requests,
    close: () =>
      new Promise<void>((r) => {
        for (const s of open) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A loopback port nothing listens on. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `bin/fuseload.js` as a user would, with exactly `env` (plus PATH and HOME). */
export function runCli(args: string[], env: NodeJS.ProcessEnv, cwd = REPO_ROOT): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'fuseload.js'), ...args], {
      cwd,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: process.env.TMPDIR, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
