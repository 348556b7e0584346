/**
 * Build inputs from storage: `s3://bucket/key`, `https://…` (and `http://` for local
 * servers), or a local path. Remote bytes are hashed while they stream to a temp file in
 * the content-addressed store, then renamed to `blobs/sha256/<hex>`: nothing lands under
 * a digest name unverified, and a crash leaves only a temp file.
 *
 * For the build tool: call `resolveInput(source)` for `--base` and each `--lora` source,
 * then read the returned `path` (a file in the store, or the local file itself) and record
 * `digest` and `source` in the manifest; `source` never carries credentials, a query
 * string or a host path.
 *
 * One source is one file. A base model whose graph keeps weights in external-data files
 * needs those files beside it under their `location` names: resolve each sibling source
 * too and link them into one directory (not done here yet).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type Digest, isHex } from '../../common/digest.ts';
import { FuseloadError, badInput } from '../../common/errors.ts';
import { DiskStore, sha256File } from '../store/disk-store.ts';
import type { S3ClientOptions, S3Flags } from '../s3/config.ts';

export interface ResolveInputOptions {
  /** Where downloads go. Default: the store under PIPELINE_STORE (or ~/.cache/fuseload). */
  store?: DiskStore;
  /** S3 endpoint and credentials for `s3://` (bucket comes from the URL). Default: from env. */
  s3?: Omit<S3Flags, 'bucket'> & S3ClientOptions;
  /** When known, the bytes must hash to it, and a stored copy is used without downloading. */
  expected?: Digest;
  env?: NodeJS.ProcessEnv;
  /** `{ phase: 'download', file, loaded, total }`; total is 0 when the server does not say. */
  onProgress?: (event: { phase: 'download'; file: string; loaded: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface ResolvedInput {
  /** A local file holding the bytes. */
  path: string;
  digest: Digest;
  /** What to record in the manifest: the URL without credentials or query, or a local file's name. */
  source: string;
}

/** Hugging Face hosts: the only ones HF_TOKEN is sent to. */
export function isHuggingFaceHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return h === 'huggingface.co' || h.endsWith('.huggingface.co') || h === 'hf.co' || h.endsWith('.hf.co');
}

/** A URL fit for a manifest or a message: no userinfo, no query, no fragment. */
export function publicSource(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

export async function resolveInput(source: string, options: ResolveInputOptions = {}): Promise<ResolvedInput> {
  const store = options.store ?? new DiskStore();
  if (source.startsWith('s3://')) return resolveS3(source, store, options);
  if (/^https?:\/\//i.test(source)) return resolveHttp(source, store, options);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) throw badInput(source.split('?')[0], 'unsupported scheme (want a path, s3:// or https://)');
  const path = resolve(source);
  const st = await stat(path).catch(() => null);
  if (!st?.isFile()) throw badInput(source, 'no such file');
  const digest = await sha256File(path);
  if (options.expected && digest !== options.expected) {
    throw new FuseloadError('digest-mismatch', `${source}: bytes hash to ${digest}, expected ${options.expected}`);
  }
  return { path, digest, source: basename(path) };
}

async function resolveS3(source: string, store: DiskStore, options: ResolveInputOptions): Promise<ResolvedInput> {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(source);
  if (!m) throw badInput(source, 'want s3://<bucket>/<key>');
  const [, bucket, key] = m;
  // The S3 SDK loads only for s3:// inputs: it is most of the CLI's start-up time otherwise.
  const [{ GetObjectCommand, HeadObjectCommand }, { createS3Client, resolveS3Target }, { s3Failure }] = await Promise.all([
    import('@aws-sdk/client-s3'),
    import('../s3/config.ts'),
    import('../s3/errors.ts'),
  ]);
  const s3 = resolveS3Target({ ...options.s3, bucket }, options.env, true);
  const client = createS3Client(s3, options.s3);
  const where = { bucket, endpoint: s3.endpoint };
  try {
    // A digest we can trust before downloading: the caller's, our own blob key, or the
    // sha256 metadata `fuseload publish` writes. A hit in the store then costs one HEAD.
    let known = options.expected;
    const keyHex = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(key)?.[1];
    let size: number | undefined;
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal });
      size = head.ContentLength;
      const meta = head.Metadata?.sha256;
      known ??= keyHex ? `sha256:${keyHex}` : meta && isHex(meta) ? `sha256:${meta}` : undefined;
    } catch (e) {
      const status = (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) throw new FuseloadError('not-found', `${source}: no such object in bucket "${bucket}" (or no such bucket)`);
      throw s3Failure(e, where, source);
    }
    if (known && (await store.has(known))) return { path: store.path(known), digest: known, source };
    let body: Readable;
    try {
      const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal });
      body = r.Body as Readable;
    } catch (e) {
      throw s3Failure(e, where, source);
    }
    return await storeStream(body, source, store, known, size ?? 0, options).catch((e) => {
      throw s3Failure(e, where, source);
    });
  } finally {
    client.destroy();
  }
}

async function resolveHttp(source: string, store: DiskStore, options: ResolveInputOptions): Promise<ResolvedInput> {
  let url: URL;
  try {
    url = new URL(source);
  } catch {
    throw badInput(source.split('?')[0], 'not a URL');
  }
  const shown = publicSource(url);
  if (url.username || url.password) throw badInput(shown, 'credentials in the URL are not accepted; use HF_TOKEN for Hugging Face');
  if (options.expected && (await store.has(options.expected))) {
    return { path: store.path(options.expected), digest: options.expected, source: shown };
  }
  const token = (options.env ?? process.env).HF_TOKEN;
  // Redirects are followed by hand so the token goes only to Hugging Face hosts, never to
  // the CDN or any other host a redirect names.
  let response: Response | undefined;
  for (let hops = 0; hops <= 10; hops++) {
    const headers: Record<string, string> = {};
    if (token && url.protocol === 'https:' && isHuggingFaceHost(url.hostname)) headers.authorization = `Bearer ${token}`;
    try {
      response = await fetch(url, { headers, redirect: 'manual', signal: options.signal });
    } catch (e) {
      const code = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).name;
      throw new FuseloadError('network', `${shown}: cannot download (${code})`);
    }
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location) {
      await response.body?.cancel();
      url = new URL(location, url);
      continue;
    }
    break;
  }
  if (!response || (response.status >= 300 && response.status < 400)) throw new FuseloadError('network', `${shown}: too many redirects`);
  if (!response.ok || !response.body) {
    await response.body?.cancel();
    const hint = response.status === 401 || response.status === 403 ? (token ? ' (HF_TOKEN was sent; does it grant access?)' : ' (set HF_TOKEN for gated Hugging Face models)') : '';
    throw new FuseloadError(response.status === 404 ? 'not-found' : 'network', `${shown}: HTTP ${response.status}${hint}`);
  }
  const total = Number(response.headers.get('content-length') ?? 0);
  const body = Readable.fromWeb(response.body as import('node:stream/web').ReadableStream);
  return storeStream(body, shown, store, options.expected, total, options);
}

/** Streams into a temp file in the store while hashing; renames to its digest only if it checks. */
async function storeStream(
  body: Readable,
  source: string,
  store: DiskStore,
  expected: Digest | undefined,
  total: number,
  options: ResolveInputOptions,
): Promise<ResolvedInput> {
  const dir = join(store.root, 'blobs', 'sha256');
  await mkdir(dir, { recursive: true });
  const temp = join(dir, `.tmp-${randomBytes(6).toString('hex')}`);
  const hash = createHash('sha256');
  let loaded = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      loaded += chunk.length;
      options.onProgress?.({ phase: 'download', file: source, loaded, total });
      done(null, chunk);
    },
  });
  try {
    await pipeline(body, meter, createWriteStream(temp));
    if (total && loaded !== total) throw new FuseloadError('network', `${source}: download ended at ${loaded} of ${total} bytes`);
    const digest: Digest = `sha256:${hash.digest('hex')}`;
    if (expected && digest !== expected) {
      throw new FuseloadError('digest-mismatch', `${source}: downloaded bytes hash to ${digest}, expected ${expected}`);
    }
    const fh = await open(temp, 'r+');
    await fh.sync();
    await fh.close();
    await rename(temp, store.path(digest));
    return { path: store.path(digest), digest, source };
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

