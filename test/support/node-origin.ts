/**
 * A real HTTP origin over a directory laid out like the bucket, counting requests per path,
 * for the Node runtime's tests (node:http, no framework: the thing under test is the client).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';

export interface CountingOrigin {
  url: string;
  /** Requests seen, by path (`/blobs/sha256/<hex>` …). */
  requests: Map<string, number>;
  total(): number;
  reset(): void;
  close(): Promise<void>;
}

/** `delayMs` holds each blob response back, so concurrent loaders overlap. */
export async function startCountingOrigin(dir: string, options: { delayMs?: number } = {}): Promise<CountingOrigin> {
  const requests = new Map<string, number>();
  const server: Server = createServer(async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.set(path, (requests.get(path) ?? 0) + 1);
    const file = join(dir, normalize(path).replace(/^([/\\])+/, ''));
    const s = await stat(file).catch(() => null);
    if (!s?.isFile() || !file.startsWith(dir)) {
      res.writeHead(404).end();
      return;
    }
    if (options.delayMs && path.startsWith('/blobs/')) await new Promise((r) => setTimeout(r, options.delayMs));
    res.writeHead(200, { 'Content-Length': String(s.size), 'Content-Type': 'application/octet-stream' });
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    total: () => [...requests.values()].reduce((a, b) => a + b, 0),
    reset: () => requests.clear(),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
