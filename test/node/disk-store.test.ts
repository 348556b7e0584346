import { mkdtemp, open, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Digest, sha256 } from '../../common/digest.ts';
import { canonicalJsonBytes } from '../../common/canonical-json.ts';
import { DiskStore, VERIFIED_MTIME } from '../../tools/store/disk-store.ts';

const bytesOf = (n: number, fill: number) => new Uint8Array(n).fill(fill);

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'fuseload-store-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function putBlob(store: DiskStore, bytes: Uint8Array): Promise<Digest> {
  const digest = await sha256(bytes);
  await store.put(digest, bytes);
  return digest;
}

describe('DiskStore', () => {
  it('keeps blobs at blobs/sha256/<hex>, stamped as verified, with no temp files left', async () => {
    const store = new DiskStore(root, {});
    const digest = await putBlob(store, bytesOf(1000, 7));
    const names = await readdir(join(root, 'blobs', 'sha256'));
    expect(names).toEqual([digest.slice(7)]);
    expect(Math.floor((await stat(store.path(digest))).mtimeMs / 1000)).toBe(VERIFIED_MTIME);
    expect(await store.get(digest)).toEqual(bytesOf(1000, 7));
    expect(await store.has(digest)).toBe(true);
  });

  it('detects a blob changed in place on the next get, and drops it', async () => {
    const store = new DiskStore(root, {});
    const digest = await putBlob(store, bytesOf(1000, 7));
    await writeFile(store.path(digest), bytesOf(1000, 8)); // same size, new bytes, fresh mtime
    expect(await store.get(digest)).toBeNull();
    expect(await store.has(digest)).toBe(false);
  });

  it('vouches for its reads: the loader may skip re-hashing what get returns', () => {
    expect(new DiskStore(root, {}).verifiesReads).toBe(true);
  });

  it('locate gives the path of an intact blob without reading it, and marks it used', async () => {
    const store = new DiskStore(root, {});
    const digest = await putBlob(store, bytesOf(1000, 7));
    await utimes(store.path(digest), new Date(0), VERIFIED_MTIME);
    expect(await store.locate(digest, 1000)).toBe(store.path(digest));
    expect((await stat(store.path(digest))).atimeMs).toBeGreaterThan(Date.now() - 60_000);
    expect(await store.locate(await sha256(bytesOf(1, 1)), 1)).toBeNull(); // never stored
  });

  it('locate detects a blob written into in place, removes it and reports it corrupt', async () => {
    const corrupt: Digest[] = [];
    const store = new DiskStore(root, { onCorrupt: (d) => corrupt.push(d) });
    const digest = await putBlob(store, bytesOf(1000, 7));
    const handle = await open(store.path(digest), 'r+');
    await handle.write(new Uint8Array([9]), 0, 1, 500); // one byte, in place: mtime moves
    await handle.close();
    expect(await store.locate(digest, 1000)).toBeNull();
    expect(corrupt).toEqual([digest]);
    expect(await store.has(digest)).toBe(false);
  });

  it('locate re-hashes a touched but intact blob and still serves it; a stamped file of the wrong size is dropped', async () => {
    const corrupt: Digest[] = [];
    const store = new DiskStore(root, { onCorrupt: (d) => corrupt.push(d) });
    const intact = await putBlob(store, bytesOf(64, 1));
    await utimes(store.path(intact), new Date(), new Date());
    expect(await store.locate(intact, 64)).toBe(store.path(intact));
    expect(Math.floor((await stat(store.path(intact))).mtimeMs / 1000)).toBe(VERIFIED_MTIME);

    const restamped = await putBlob(store, bytesOf(64, 2));
    await writeFile(store.path(restamped), bytesOf(32, 2));
    await utimes(store.path(restamped), new Date(), VERIFIED_MTIME); // the stamp put back by hand
    expect(await store.locate(restamped, 64)).toBeNull();
    expect(corrupt).toEqual([restamped]);
  });

  it('bit rot under an untouched stamp is not seen by get; verifyAll (fuseload cache verify) finds and removes it', async () => {
    const store = new DiskStore(root, {});
    const digest = await putBlob(store, bytesOf(1000, 7));
    await writeFile(store.path(digest), bytesOf(1000, 8));
    await utimes(store.path(digest), new Date(), VERIFIED_MTIME); // as if the disk flipped bits
    expect(await store.get(digest)).toEqual(bytesOf(1000, 8)); // the documented limit of the stamp check
    expect((await store.verifyAll()).removed).toEqual([digest]);
    expect(await store.get(digest)).toBeNull();
  });

  it('re-stamps an intact blob whose mtime was touched, and serves it', async () => {
    const store = new DiskStore(root, {});
    const digest = await putBlob(store, bytesOf(64, 1));
    await utimes(store.path(digest), new Date(), new Date());
    expect(await store.get(digest)).toEqual(bytesOf(64, 1));
    expect(Math.floor((await stat(store.path(digest))).mtimeMs / 1000)).toBe(VERIFIED_MTIME);
  });

  it('keeps manifests at manifests/sha256/<hex>.json, outside the blob listing', async () => {
    const store = new DiskStore(root, {});
    const bytes = canonicalJsonBytes({ schema: 'fuseload.artifact/1', name: 'x' });
    const fingerprint = await sha256(bytes);
    await store.put(fingerprint, bytes, 'manifest');
    expect(await readdir(join(root, 'manifests', 'sha256'))).toEqual([`${fingerprint.slice(7)}.json`]);
    expect(await store.get(fingerprint)).toEqual(bytes);
    const listed = [];
    for await (const e of store.entries()) listed.push(e);
    expect(listed).toEqual([]);
    await store.delete(fingerprint);
    expect(await store.has(fingerprint)).toBe(false);
  });

  it('evicts least recently used blobs to fit the byte budget after a put', async () => {
    const store = new DiskStore(root, { maxBytes: 2500 });
    const a = await putBlob(new DiskStore(root, {}), bytesOf(1000, 1));
    const b = await putBlob(new DiskStore(root, {}), bytesOf(1000, 2));
    // a used after b: b is the least recently used.
    await utimes(store.path(b), new Date(Date.now() - 60_000), VERIFIED_MTIME);
    await utimes(store.path(a), new Date(Date.now() - 30_000), VERIFIED_MTIME);
    const c = await putBlob(store, bytesOf(1000, 3));
    expect(await store.has(a)).toBe(true);
    expect(await store.has(b)).toBe(false);
    expect(await store.has(c)).toBe(true);
    expect((await store.usage()).bytes).toBe(2000);
  });

  it('prune reports what it freed and never evicts the blob just written', async () => {
    const store = new DiskStore(root, { maxBytes: 500 });
    const big = await putBlob(store, bytesOf(1000, 9));
    expect(await store.has(big)).toBe(true); // over budget on its own, but kept
    await putBlob(new DiskStore(root, {}), bytesOf(300, 4));
    const result = await new DiskStore(root, {}).prune(0);
    expect(result.removed).toHaveLength(2);
    expect(result.freedBytes).toBe(1300);
    expect(result.keptBytes).toBe(0);
  });

  it('verifyAll re-hashes every blob and removes the corrupt ones', async () => {
    const store = new DiskStore(root, {});
    const good = await putBlob(store, bytesOf(100, 1));
    const bad = await putBlob(store, bytesOf(100, 2));
    // Bit rot: the bytes change but the stamp stays, so only a full re-hash sees it.
    await writeFile(store.path(bad), bytesOf(100, 3));
    await utimes(store.path(bad), new Date(), VERIFIED_MTIME);
    const result = await store.verifyAll();
    expect(result).toEqual({ checked: 2, ok: 1, removed: [bad] });
    expect(await store.has(good)).toBe(true);
  });

  it('clears temp files left by a crashed writer, but not one being written', async () => {
    const store = new DiskStore(root, {});
    await putBlob(store, bytesOf(10, 1));
    const stale = join(store.blobsDir, '.tmp-dead');
    const live = join(store.blobsDir, '.tmp-live');
    await writeFile(stale, 'x');
    await writeFile(live, 'x');
    expect(await store.removeStaleTemps(Date.now() + 2 * 60 * 60 * 1000 - 1000)).toBe(2);
    await writeFile(live, 'x');
    expect(await store.removeStaleTemps()).toBe(0);
  });
});
