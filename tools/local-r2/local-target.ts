/**
 * The `--local` publish target: the R2 state that `wrangler dev` serves for this repo's
 * wrangler.toml, written through miniflare (the same engine wrangler 4.86 runs), so the edge
 * worker serves a fresh build with no cloud account.
 *
 * Where wrangler 4.86 keeps it (wrangler-dist/cli.js: getLocalPersistencePath,
 * getDefaultPersistRoot, r2BucketEntry):
 *   state  = --persist-to <dir> (relative to cwd) or <dir of wrangler.toml>/.wrangler/state
 *   root   = <state>/v3                     (miniflare's defaultPersistRoot)
 *   R2     = <root>/r2, bucket id = the binding's bucket_name (`fuseload-artifacts`)
 * Pass the same --persist-to to both commands, or neither.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import type { Miniflare } from 'miniflare';
import { FuseloadError } from '../../common/errors.ts';
import type { ObjectHead, ObjectHeaders, PublishTarget } from '../publish/target.ts';

export const DEFAULT_BUCKET = 'fuseload-artifacts';
export const ARTIFACTS_BINDING = 'ARTIFACTS';
const CONFIG_NAMES = ['wrangler.json', 'wrangler.jsonc', 'wrangler.toml'];

export interface LocalR2Options {
  /** As `wrangler dev --persist-to`: the state directory, resolved against `cwd`. */
  persistTo?: string;
  /** Where to look for wrangler.toml (and upward from). Default process.cwd(). */
  cwd?: string;
  /** Bucket name; default the ARTIFACTS binding's bucket_name in wrangler.toml, else `fuseload-artifacts`. */
  bucket?: string;
}

export interface LocalR2Location {
  /** The wrangler state directory (`.../.wrangler/state`). */
  stateDir: string;
  /** miniflare's defaultPersistRoot (`<stateDir>/v3`). */
  persistRoot: string;
  bucket: string;
  configPath: string | null;
}

/** Wrangler finds its config by walking up from cwd; so do we. */
export function findWranglerConfig(cwd: string): string | null {
  let dir = resolve(cwd);
  for (;;) {
    for (const name of CONFIG_NAMES) {
      const path = join(dir, name);
      if (existsSync(path)) return path;
    }
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

/** The ARTIFACTS binding's bucket_name from a wrangler.toml (a tiny reader for one known field). */
export function artifactsBucketName(configPath: string | null): string {
  if (!configPath?.endsWith('.toml')) return DEFAULT_BUCKET;
  const text = readFileSync(configPath, 'utf8');
  for (const block of text.split(/^\s*\[\[r2_buckets\]\]\s*$/m).slice(1)) {
    const body = block.split(/^\s*\[/m)[0];
    const binding = /^\s*binding\s*=\s*"([^"]+)"/m.exec(body)?.[1];
    const name = /^\s*bucket_name\s*=\s*"([^"]+)"/m.exec(body)?.[1];
    if (binding === ARTIFACTS_BINDING && name) return name;
  }
  return DEFAULT_BUCKET;
}

export function localR2Location(options: LocalR2Options = {}): LocalR2Location {
  const cwd = options.cwd ?? process.cwd();
  const configPath = findWranglerConfig(cwd);
  const stateDir = options.persistTo
    ? resolve(cwd, options.persistTo)
    : resolve(configPath ? dirname(configPath) : cwd, '.wrangler', 'state');
  return { stateDir, persistRoot: join(stateDir, 'v3'), bucket: options.bucket ?? artifactsBucketName(configPath), configPath };
}

/** Opens the local bucket; the caller must `close()` (it runs a workerd process). */
export async function openLocalR2(options: LocalR2Options = {}): Promise<{ mf: Miniflare; bucket: R2BucketLike; location: LocalR2Location }> {
  const location = localR2Location(options);
  // Loaded on demand: publishing to S3 never starts workerd.
  const { Miniflare: MiniflareCtor } = await import('miniflare');
  const mf = new MiniflareCtor({
    modules: true,
    script: 'export default { fetch() { return new Response(null, { status: 404 }); } }',
    defaultPersistRoot: location.persistRoot,
    r2Buckets: { [ARTIFACTS_BINDING]: location.bucket },
  });
  try {
    const bucket = (await mf.getR2Bucket(ARTIFACTS_BINDING)) as unknown as R2BucketLike;
    return { mf, bucket, location };
  } catch (e) {
    await mf.dispose().catch(() => {});
    throw new FuseloadError('engine', `local R2 at ${location.stateDir}: cannot start miniflare (${(e as Error).message})`);
  }
}

/** The slice of R2Bucket used here (miniflare's proxy of workerd's binding). */
export interface R2BucketLike {
  head(key: string): Promise<{ size: number; customMetadata?: Record<string, string> } | null>;
  get(key: string): Promise<{ arrayBuffer(): Promise<ArrayBuffer>; size: number; httpMetadata?: { contentType?: string; cacheControl?: string } } | null>;
  put(
    key: string,
    value: Uint8Array | ArrayBuffer,
    options?: { httpMetadata?: { contentType?: string; cacheControl?: string }; customMetadata?: Record<string, string>; sha256?: string },
  ): Promise<unknown>;
}

export class LocalR2Target implements PublishTarget {
  readonly description: string;
  #open: ReturnType<typeof openLocalR2> | null = null;

  constructor(readonly options: LocalR2Options = {}) {
    const loc = localR2Location(options);
    this.description = `local R2 bucket "${loc.bucket}" in ${loc.stateDir}`;
  }

  get location(): LocalR2Location {
    return localR2Location(this.options);
  }

  async #bucket(): Promise<R2BucketLike> {
    this.#open ??= openLocalR2(this.options);
    return (await this.#open).bucket;
  }

  async check(): Promise<void> {
    await this.#bucket();
  }

  async head(key: string): Promise<ObjectHead | null> {
    const obj = await (await this.#bucket()).head(key);
    return obj && { size: obj.size, sha256: obj.customMetadata?.sha256 };
  }

  async get(key: string): Promise<Uint8Array | null> {
    const obj = await (await this.#bucket()).get(key);
    return obj && new Uint8Array(await obj.arrayBuffer());
  }

  async put(key: string, bytes: Uint8Array, headers: ObjectHeaders): Promise<void> {
    await (await this.#bucket()).put(key, bytes, {
      httpMetadata: { contentType: headers.contentType, cacheControl: headers.cacheControl },
      customMetadata: headers.sha256 ? { sha256: headers.sha256 } : undefined,
      // R2 checks the body against it and refuses a mismatch: one more guard on the way in.
      sha256: headers.sha256,
    });
  }

  async putStream(key: string, body: Readable, _size: number, headers: ObjectHeaders, onBytes: (n: number) => void): Promise<void> {
    // Local disk to local disk: collecting is simpler than a stream through miniflare's
    // proxy, and a 64 MiB shard fits in memory. A body that fails (digest) fails here.
    const bytes = new Uint8Array(Buffer.concat(await body.toArray()));
    await this.put(key, bytes, headers);
    onBytes(bytes.byteLength);
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    const opened = await this.#open.catch(() => null);
    this.#open = null;
    await opened?.mf.dispose();
  }
}
