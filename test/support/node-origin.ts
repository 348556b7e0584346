/**
 * The Node runtime tests' view of the shared test origin (origin.ts): requests counted per
 * path, and a URL on 127.0.0.1 (Node needs no secure context, and `localhost` may resolve
 * to ::1 first).
 */
import { startOrigin } from './origin.ts';

export interface CountingOrigin {
  url: string;
  /** Requests seen, by path (`/blobs/sha256/<hex>` …). */
  readonly requests: Map<string, number>;
  total(): number;
  reset(): void;
  close(): Promise<void>;
}

/** `delayMs` holds each blob response back, so concurrent loaders overlap. */
export async function startCountingOrigin(dir: string, options: { delayMs?: number } = {}): Promise<CountingOrigin> {
  const origin = await startOrigin({ root: dir, delayMs: options.delayMs });
  return {
    url: `http://127.0.0.1:${origin.port}`,
    get requests() {
      const counts = new Map<string, number>();
      for (const r of origin.requests) counts.set(r.path, (counts.get(r.path) ?? 0) + 1);
      return counts;
    },
    total: () => origin.requests.length,
    reset: () => origin.reset(),
    close: () => origin.close(),
  };
}
