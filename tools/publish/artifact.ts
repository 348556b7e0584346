/**
 * Reads an artifact directory as `fuseload build` writes it (DESIGN.md):
 * `<dir>/blobs/sha256/<hex>` and `<dir>/manifests/sha256/<fingerprint-hex>.json`.
 * Every manifest is checked against its own digest, and every blob it names must be
 * present with the size the manifest says. Blob bytes are hashed later, only for the
 * blobs that are actually uploaded.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, isHex } from '../../common/digest.ts';
import { FuseloadError, badInput } from '../../common/errors.ts';
import { type AnyManifest, decodeManifest, manifestBlobs } from '../../common/manifest.ts';

export interface LocalManifest {
  fingerprint: Digest;
  bytes: Uint8Array;
  manifest: AnyManifest;
}

export interface LocalBlob {
  digest: Digest;
  size: number;
  path: string;
}

export interface ArtifactDir {
  dir: string;
  /** Sorted by fingerprint, so output and upload order are stable. */
  manifests: LocalManifest[];
}

export async function readArtifactDir(dir: string): Promise<ArtifactDir> {
  const st = await stat(dir).catch(() => null);
  if (!st) throw badInput(dir, 'no such directory');
  if (!st.isDirectory()) throw badInput(dir, 'not a directory (want an artifact directory written by `fuseload build`)');
  const manifestDir = join(dir, 'manifests', 'sha256');
  const names = await readdir(manifestDir).catch(() => [] as string[]);
  const hexes = names.filter((n) => n.endsWith('.json') && isHex(n.slice(0, -5))).map((n) => n.slice(0, -5)).sort();
  if (hexes.length === 0) {
    throw badInput(dir, 'not an artifact directory (no manifests/sha256/<hex>.json; build one with `fuseload build`)');
  }
  const manifests: LocalManifest[] = [];
  for (const hex of hexes) {
    const path = join(manifestDir, `${hex}.json`);
    const fingerprint: Digest = `sha256:${hex}`;
    const bytes = new Uint8Array(await readFile(path));
    manifests.push({ fingerprint, bytes, manifest: await decodeManifest(bytes, path, fingerprint) });
  }
  return { dir, manifests };
}

/** Picks the manifests to publish: one by fingerprint, or all. */
export function selectManifests(artifact: ArtifactDir, fingerprint: Digest | undefined, tag: string | undefined): LocalManifest[] {
  if (fingerprint) {
    const found = artifact.manifests.find((m) => m.fingerprint === fingerprint);
    if (!found) {
      throw badInput(artifact.dir, `no manifest ${fingerprint} (it has ${artifact.manifests.map((m) => m.fingerprint).join(', ')})`);
    }
    return [found];
  }
  if (tag && artifact.manifests.length > 1) {
    throw badInput(
      artifact.dir,
      `holds ${artifact.manifests.length} manifests; --tag needs --fingerprint to pick one (${artifact.manifests.map((m) => m.fingerprint).join(', ')})`,
    );
  }
  return artifact.manifests;
}

/**
 * Every blob the manifests name, once: graph and shards (each must be present with the size
 * the manifest says), then the LoRA files that are present.
 */
export async function localBlobs(dir: string, manifests: LocalManifest[]): Promise<LocalBlob[]> {
  const byDigest = new Map<Digest, LocalBlob>();
  for (const m of manifests) {
    for (const ref of manifestBlobs(m.manifest)) {
      if (byDigest.has(ref.digest)) continue;
      const path = join(dir, 'blobs', 'sha256', digestHex(ref.digest));
      const st = await stat(path).catch(() => null);
      if (!st?.isFile()) throw new FuseloadError('not-found', `${path}: missing; manifest ${m.fingerprint} names it`);
      if (st.size !== ref.size) {
        throw new FuseloadError('digest-mismatch', `${path}: has ${st.size} bytes, manifest ${m.fingerprint} says ${ref.size}`);
      }
      byDigest.set(ref.digest, { digest: ref.digest, size: ref.size, path });
    }
    // LoRA files, when the build kept them (it does), go too: runtimes overlay them at load
    // time by digest. They are not needed to load the artifact itself, so absence is fine.
    for (const lora of m.manifest.loras) {
      if (byDigest.has(lora.digest)) continue;
      const path = join(dir, 'blobs', 'sha256', digestHex(lora.digest));
      const st = await stat(path).catch(() => null);
      if (st?.isFile()) byDigest.set(lora.digest, { digest: lora.digest, size: st.size, path });
    }
  }
  return [...byDigest.values()];
}
