import type { Command } from 'commander';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, isHex } from '../../common/digest.ts';
import { FuseloadError } from '../../common/errors.ts';
import { decodeManifest } from '../../common/manifest.ts';
import { sha256File } from '../store/disk-store.ts';

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
    const manifest = await decodeManifest(new Uint8Array(await readFile(join(dir, rel))), rel, `sha256:${hex}`);
    const blobs: { digest: Digest; size?: number }[] = [manifest.graph, ...manifest.shards, ...manifest.loras.map((l) => ({ digest: l.digest }))];
    for (const blob of blobs) {
      if (checked.has(blob.digest)) continue;
      const blobRel = `blobs/sha256/${digestHex(blob.digest)}`;
      const path = join(dir, blobRel);
      const s = await stat(path).catch(() => null);
      if (!s) throw new FuseloadError('not-found', `${dir}: ${blobRel} (named by ${rel}) is missing`);
      if (blob.size !== undefined && s.size !== blob.size) throw new FuseloadError('digest-mismatch', `${dir}: ${blobRel} has ${s.size} bytes, the manifest says ${blob.size}`);
      const actual = await sha256File(path);
      if (actual !== blob.digest) throw new FuseloadError('digest-mismatch', `${dir}: ${blobRel} hashes to ${actual}`);
      checked.add(blob.digest);
      bytes += s.size;
    }
  }
  return { manifests: names.length, blobs: checked.size, bytes };
}

export function register(program: Command): void {
  program
    .command('verify')
    .description('re-hash every manifest and blob of an artifact directory')
    .argument('<dir>', 'artifact directory')
    .option('--json', 'print JSON', false)
    .action(async (dir: string, opts: { json: boolean }) => {
      const r = await verifyDir(dir);
      process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `ok: ${r.manifests} manifest(s), ${r.blobs} blob(s), ${r.bytes} bytes verified\n`);
    });
}
