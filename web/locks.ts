/**
 * One download per blob across tabs: a Web Lock per blob name. A second tab waits for the
 * first, then finds the blob in IndexedDB. Where Web Locks are missing (old browsers,
 * some workers) a per-page queue keeps at least this page to one download.
 */
const local = new Map<string, Promise<unknown>>();

export function withWebLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  if (typeof navigator !== 'undefined' && navigator.locks) {
    return navigator.locks.request(name, { mode: 'exclusive' }, fn) as Promise<T>;
  }
  const previous = local.get(name) ?? Promise.resolve();
  const next = previous.catch(() => {}).then(fn);
  local.set(name, next);
  void next.catch(() => {}).finally(() => {
    if (local.get(name) === next) local.delete(name);
  });
  return next;
}
