/**
 * IdbStore (web/idb-store.ts) over fake-indexeddb: records, LRU budget, quota recovery.
 * Real IndexedDB quota errors are exercised in Chromium (test/browser); here the
 * QuotaExceededError is simulated, since fake-indexeddb has no quota.
 */
import 'fake-indexeddb/auto';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { type Digest, sha256 } from '../../common/digest.ts';
import { IdbStore } from '../../web/idb-store.ts';

let n = 0;
const fresh = (budgetBytes?: number) => new IdbStore({ dbName: `idb-test-${++n}`, budgetBytes });

async function blob(size: number, fill: number): Promise<[Digest, Uint8Array]> {
  const bytes = new Uint8Array(size).fill(fill);
  return [await sha256(bytes), bytes];
}

const tick = () => new Promise((r) => setTimeout(r, 5));

afterEach(() => vi.restoreAllMocks());

describe('IdbStore', () => {
  test('put, has, get, delete, entries: one record per blob', async () => {
    const store = fresh();
    const [d, bytes] = await blob(1000, 1);
    expect(await store.has(d)).toBe(false);
    expect(await store.get(d)).toBeNull();
    await store.put(d, bytes);
    expect(await store.has(d)).toBe(true);
    expect(Array.from((await store.get(d))!)).toEqual(Array.from(bytes));
    const info = await store.info();
    expect(info).toMatchObject({ count: 1, bytes: 1000 });
    expect(info.blobs[0].digest).toBe(d);
    await store.delete(d);
    expect(await store.has(d)).toBe(false);
    expect((await store.info()).count).toBe(0);
  });

  test('a view into a larger buffer stores only its own bytes', async () => {
    const store = fresh();
    const big = new Uint8Array(4096).fill(9);
    const view = big.subarray(100, 200);
    const d = await sha256(view);
    await store.put(d, view);
    const back = (await store.get(d))!;
    expect(back.byteLength).toBe(100);
    expect(back.buffer.byteLength).toBe(100);
  });

  test('over the budget, the least recently used blobs are evicted first', async () => {
    const store = fresh(3000);
    const [a, ba] = await blob(1000, 1);
    const [b, bb] = await blob(1000, 2);
    const [c, bc] = await blob(1000, 3);
    const [d, bd] = await blob(1000, 4);
    await store.put(a, ba);
    await tick();
    await store.put(b, bb);
    await tick();
    await store.put(c, bc);
    await tick();
    await store.get(a); // a is now more recent than b
    await tick();
    await store.put(d, bd);
    expect(await store.has(b)).toBe(false);
    expect(await store.has(a)).toBe(true);
    expect(await store.has(c)).toBe(true);
    expect(await store.has(d)).toBe(true);
    expect((await store.info()).bytes).toBeLessThanOrEqual(3000);
  });

  test("reads' LRU times land together (seen by info) and never bring back a deleted blob's record", async () => {
    const store = fresh();
    const [a, ba] = await blob(100, 1);
    const [b, bb] = await blob(100, 2);
    await store.put(a, ba);
    await store.put(b, bb);
    const before = (await store.info()).blobs.find((x) => x.digest === a)!.lastUsed;
    await tick();
    await store.get(a);
    await store.get(b);
    await store.delete(b);
    const info = await store.info();
    expect(info.blobs.map((x) => x.digest)).toEqual([a]);
    expect(info.blobs[0].lastUsed).toBeGreaterThan(before);
    expect(await store.has(b)).toBe(false);
  });

  test('parallel puts do not overshoot the budget together', async () => {
    const store = fresh(2500);
    const blobs = await Promise.all([1, 2, 3, 4, 5].map((i) => blob(1000, i)));
    await Promise.all(blobs.map(([d, b]) => store.put(d, b)));
    expect((await store.info()).bytes).toBeLessThanOrEqual(2500);
  });

  test('a blob larger than the whole budget is refused with a quota error', async () => {
    const store = fresh(500);
    const [d, bytes] = await blob(1000, 1);
    await expect(store.put(d, bytes)).rejects.toMatchObject({ code: 'quota' });
  });

  test('QuotaExceededError (simulated): evicts and retries; if still full, a quota error', async () => {
    const store = fresh();
    const [a, ba] = await blob(1000, 1);
    const [b, bb] = await blob(1000, 2);
    await store.put(a, ba);
    // The next write fails once for want of space, as a full origin would.
    const put = IDBObjectStore.prototype.put;
    let failures = 1;
    vi.spyOn(IDBObjectStore.prototype, 'put').mockImplementation(function (this: IDBObjectStore, ...args) {
      if (failures-- > 0) throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
      return put.apply(this, args as Parameters<typeof put>);
    });
    await store.put(b, bb);
    expect(await store.has(b)).toBe(true);
    expect(await store.has(a)).toBe(false); // evicted to make room

    failures = 2;
    const [c, bc] = await blob(1000, 3);
    await expect(store.put(c, bc)).rejects.toMatchObject({ code: 'quota' });
    expect(await store.has(c)).toBe(false);
  });

  test('clear empties the store', async () => {
    const store = fresh();
    const [d, bytes] = await blob(10, 1);
    await store.put(d, bytes);
    await store.clear();
    expect(await store.info()).toEqual({ count: 0, bytes: 0, blobs: [] });
  });
});
