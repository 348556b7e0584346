/**
 * The graph-sample artifact for tests (tools/sample/graph-sample.ts, written in process, then
 * built with the real CLI, `fuseload build`) once per set of sources and reused by every suite
 * and worker: it lands in `<tmpdir>/fuseload-test-artifacts/<key>`, keyed by the tool sources and the
 * options, and is moved there whole (rename), so concurrent builders never see half of one.
 *
 *   const a = await sampleArtifact();          // { dir, fingerprint, manifest, blobs, ... }
 *   await startOrigin({ root: a.dir });        // serves blobs/, manifests/, tags/sample/latest.json
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { type Digest, digestHex } from '../../common/digest.ts';
import { type BlobRef, type Manifest, decodeManifest, manifestBlobs, schema1 } from '../../common/manifest.ts';
import { writeGraphSample } from '../../tools/sample/graph-sample.ts';
import { REPO_ROOT } from './paths.ts';
import { writeTag } from './tag.ts';

const run = promisify(execFile);

export interface SampleArtifactOptions {
  /** Largest weight shard in bytes (default 16 KiB, so the small sample model has several shards). */
  shardSize?: number;
  /** Model name (default `sample`). */
  name?: string;
  /** Tag written to `tags/<name>/<tag>.json` (default `latest`). */
  tag?: string;
}

export interface SampleArtifact {
  /** The artifact directory: serve it as an origin's root. */
  dir: string;
  /** The graph sample's sources (`model.onnx`, LoRAs) it was built from. */
  sourceDir: string;
  name: string;
  tag: string;
  fingerprint: Digest;
  manifest: Manifest;
  /** Graph first, then shards. */
  blobs: BlobRef[];
  /** Total bytes of all blobs. */
  bytes: number;
  /** URL path of a blob at the origin: `/blobs/sha256/<hex>`. */
  blobPath(digest: Digest): string;
  /** File path of a blob on disk. */
  blobFile(digest: Digest): string;
}

const memo = new Map<string, Promise<SampleArtifact>>();

export function sampleArtifact(options: SampleArtifactOptions = {}): Promise<SampleArtifact> {
  const resolved = { shardSize: options.shardSize ?? 16 * 1024, name: options.name ?? 'sample', tag: options.tag ?? 'latest' };
  const id = JSON.stringify(resolved);
  let pending = memo.get(id);
  if (!pending) {
    pending = buildOnce(resolved);
    memo.set(id, pending);
  }
  return pending;
}

/** Runs the CLI the way a user would (tsx's loader through bin/fuseload.js). */
export async function fuseload(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const { stdout } = await run(process.execPath, [join(REPO_ROOT, 'bin/fuseload.js'), ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

async function buildOnce(options: { shardSize: number; name: string; tag: string }): Promise<SampleArtifact> {
  const key = await sourcesKey(JSON.stringify(options));
  const parent = join(tmpdir(), 'fuseload-test-artifacts');
  const home = join(parent, key);
  if (!(await exists(join(home, 'done')))) {
    await mkdir(parent, { recursive: true });
    const work = await mkdtemp(join(parent, '.build-'));
    const sourceDir = join(work, 'source');
    // The build cache goes in the scratch dir, not the user's ~/.cache.
    const env = { PIPELINE_STORE: join(work, 'store') };
    await writeGraphSample(sourceDir);
    const out = join(work, 'artifact');
    const fingerprint = (
      await fuseload(['build', '--base', join(sourceDir, 'model.onnx'), '--name', options.name, '--out', out, '--shard-size', String(options.shardSize)], env)
    ).trim();
    await writeTag(out, options.name, fingerprint, options.tag);
    await rm(join(work, 'store'), { recursive: true, force: true });
    await writeFile(join(work, 'done'), fingerprint);
    try {
      await rename(work, home);
    } catch {
      // Another worker got there first; theirs is as good as ours.
      await rm(work, { recursive: true, force: true });
    }
  }
  return describe(home, options.name, options.tag);
}

async function describe(home: string, name: string, tag: string): Promise<SampleArtifact> {
  const dir = join(home, 'artifact');
  const fingerprint = (await readFile(join(home, 'done'), 'utf8')).trim() as Digest;
  const manifestBytes = await readFile(join(dir, 'manifests', 'sha256', `${digestHex(fingerprint)}.json`));
  const manifest = schema1(await decodeManifest(new Uint8Array(manifestBytes), 'test artifact', fingerprint));
  const blobs = manifestBlobs(manifest);
  return {
    dir,
    sourceDir: join(home, 'source'),
    name,
    tag,
    fingerprint,
    manifest,
    blobs,
    bytes: blobs.reduce((n, b) => n + b.size, 0),
    blobPath: (digest) => `/blobs/sha256/${digestHex(digest)}`,
    blobFile: (digest) => join(dir, 'blobs', 'sha256', digestHex(digest)),
  };
}

/** A hash over the sources that shape an artifact, so a change to the tool rebuilds it. */
async function sourcesKey(extra: string): Promise<string> {
  const hash = createHash('sha256').update(extra);
  for (const dir of ['tools', 'common']) {
    for (const file of (await listFiles(join(REPO_ROOT, dir))).sort()) {
      if (!file.endsWith('.ts') && !file.endsWith('.proto')) continue;
      hash.update(relative(REPO_ROOT, file)).update(await readFile(file));
    }
  }
  return hash.digest('hex').slice(0, 16);
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(path)));
    else out.push(path);
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
