/**
 * The Workers edge cache for immutable objects. Keyed by the key's URL alone (no
 * query), so signed URLs with different expiries share one entry — access is checked
 * before the cache is consulted.
 */
export function cacheUrl(requestUrl: string, key: string): string {
  return new URL(`/${key}`, requestUrl).href;
}

/** The cached full 200 for `url`, or undefined. */
export function matchFull(url: string): Promise<Response | undefined> {
  return caches.default.match(new Request(url));
}

/** Bytes start..end of the cached full response; the cache slices it (206) itself. */
export async function matchRange(url: string, start: number, end: number): Promise<Response | undefined> {
  const res = await caches.default.match(new Request(url, { headers: { Range: `bytes=${start}-${end}` } }));
  if (res?.status === 206) return res;
  await res?.body?.cancel();
  return undefined;
}

/** Stores a full 200; the caller hands the promise to waitUntil. */
export function putFull(url: string, response: Response): Promise<void> {
  return caches.default.put(new Request(url), response);
}
