import type { Command } from 'commander';
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { digestHex, isHex } from '../../common/digest.ts';
import { FuseloadError } from '../../common/errors.ts';
import { blobKey, manifestKey, parseObjectKey } from '../../common/keys.ts';
import { fetchWithDeadline, READ_LIMITS, readBounded, streamChunks } from '../../common/loader/bounded-read.ts';
import { artifactBlobs, decodeManifest, parseTag } from '../../common/manifest.ts';
import { sha256File } from '../store/disk-store.ts';

/** For a URL given on the command line, not an --origin. */
const URL_HINT = 'is the URL right and its origin up?';

export interface VerifyResult {
  manifests: number;
  blobs: number;
  bytes: number;
}

/** Re-hashes every manifest and every blob each one names; throws on the first fault. */
export async function verifyDir(dir: string): Promise<VerifyResult> {
  let names: string[];
  try {
    names = (await readdir(join(dir, 'manifests', 'sha256'))).filter((n) => n.endsWith('.json'));
  } catch {
    throw new FuseloadError('bad-input', `${dir}: not an artifact directory (no manifests/sha256/)`);
  }
  if (!names.length) throw new FuseloadError('bad-input', `${dir}: no manifests in manifests/sha256/`);
  const checked = new Set<string>();
  let bytes = 0;
  for (const name of names.sort()) {
    const hex = name.slice(0, -'.json'.length);
    if (!isHex(hex)) throw new FuseloadError('bad-input', `${dir}: manifests/sha256/${name} is not named by a digest`);
    const rel = `manifests/sha256/${name}`;
    const m = await lstat(join(dir, rel));
    if (!m.isFile()) throw new FuseloadError('bad-input', `${dir}: ${rel} is not a regular file`);
    if (m.size > READ_LIMITS.manifestBytes) throw new FuseloadError('too-large', `${dir}: ${rel} has ${m.size} bytes, over the 16 MiB cap for a manifest`);
    const manifest = await decodeManifest(new Uint8Array(await readFile(join(dir, rel))), rel, `sha256:${hex}`);
    for (const blob of artifactBlobs(manifest)) {
      if (checked.has(blob.digest)) continue;
      const blobRel = `blobs/sha256/${digestHex(blob.digest)}`;
      const path = join(dir, blobRel);
      const s = await lstat(path).catch(() => null);
      if (!s) throw new FuseloadError('not-found', `${dir}: ${blobRel} (named by ${rel}) is missing`);
      if (!s.isFile()) throw new FuseloadError('bad-input', `${dir}: ${blobRel} is not a regular file`);
      if (blob.size !== undefined && s.size !== blob.size) throw new FuseloadError('digest-mismatch', `${dir}: ${blobRel} has ${s.size} bytes, the manifest says ${blob.size}`);
      const actual = await sha256File(path);
      if (actual !== blob.digest) throw new FuseloadError('digest-mismatch', `${dir}: ${blobRel} hashes to ${actual}`);
      checked.add(blob.digest);
      bytes += s.size;
    }
  }
  return { manifests: names.length, blobs: checked.size, bytes };
}

/**
 * Verifies a published artifact over HTTP, as a reader sees it: `<origin>/tags/<model>/<tag>.json`
 * or `<origin>/manifests/sha256/<hex>.json`. Every blob is streamed and hashed, never stored.
 */
export async function verifyUrl(url: string): Promise<VerifyResult> {
  const u = new URL(url);
  const shown = `${u.origin}${u.pathname}`; // no query: a signed URL's signature stays out of messages
  const m = /^(.*?)\/((?:tags|manifests)\/.+)$/.exec(u.pathname);
  const key = m ? parseObjectKey(m[2]) : null;
  if (!m || !key || key.kind === 'blob') throw new FuseloadError('bad-input', `${shown}: want <origin>/tags/<model>/<tag>.json or <origin>/manifests/sha256/<hex>.json`);
  const origin = `${u.origin}${m[1]}`;
  const get = async (path: string): Promise<Response> => {
    // A deadline on the headers; bodies below are capped and may not go silent.
    const res = await fetchWithDeadline(fetch, `${origin}/${path}${u.search}`, {}, { hint: URL_HINT });
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      throw new FuseloadError(res.status === 404 ? 'not-found' : 'network', `${origin}/${path}: HTTP ${res.status}`);
    }
    return res;
  };
  const small = async (path: string, cap: number) => readBounded(await get(path), cap, `${origin}/${path}`, { hint: URL_HINT });
  const fingerprint = key.kind === 'tag' ? parseTag(await small(m[2], READ_LIMITS.tagBytes), m[2]).manifest : key.digest;
  const mKey = manifestKey(fingerprint);
  const manifest = await decodeManifest(await small(mKey, READ_LIMITS.manifestBytes), `${origin}/${mKey}`, fingerprint);
  const blobs = artifactBlobs(manifest);
  const checked = new Set<string>();
  let bytes = 0;
  for (const blob of blobs) {
    if (checked.has(blob.digest)) continue;
    const bKey = blobKey(blob.digest);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of streamChunks((await get(bKey)).body!, `${origin}/${bKey}`, { hint: URL_HINT })) {
      size += chunk.byteLength;
      // Stop at once when a blob runs past the manifest's size (an endless body ends here).
      if (blob.size !== undefined && size > blob.size) break;
      hash.update(chunk);
    }
    if (blob.size !== undefined && size !== blob.size) throw new FuseloadError('digest-mismatch', `${origin}/${bKey}: ${size} bytes, the manifest says ${blob.size}`);
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== blob.digest) throw new FuseloadError('digest-mismatch', `${origin}/${bKey}: hashes to ${actual}`);
    checked.add(blob.digest);
    bytes += size;
  }
  return { manifests: 1, blobs: checked.size, bytes };
}

export function register(program: Command): void {
  program
    .command('verify')
    .description('re-hash every manifest and blob of an artifact directory, or of a published artifact by URL')
    .argument('<dir|url>', 'artifact directory, or <origin>/tags/<model>/<tag>.json, or <origin>/manifests/sha256/<hex>.json')
    .option('--json', 'print JSON', false)
    .action(async (target: string, opts: { json: boolean }) => {
      const r = /^https?:\/\//i.test(target) ? await verifyUrl(target) : await verifyDir(target);
      process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `ok: ${r.manifests} manifest(s), ${r.blobs} blob(s), ${r.bytes} bytes verified\n`);
    });
}
