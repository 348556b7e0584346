/**
 * A local artifact origin over node:http for tests: serves a directory (an artifact's
 * `blobs/`, `manifests/`, `tags/`, and any page files) with strong ETags, single Range
 * requests, If-Range and CORS, and records every request so tests can count what crossed
 * the network. Faults can be injected per path (cut a body after N bytes, flip a byte, fail with a status).
 *
 *   const origin = await startOrigin({ root: artifactDir });
 *   await fetch(`${origin.url}/blobs/sha256/<hex>`);
 *   origin.gets('/blobs/sha256/<hex>'); // 1
 *   await origin.close();
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, sep } from 'node:path';

export interface OriginRequest {
  method: string;
  /** URL path without the query. */
  path: string;
  range: string | null;
  ifRange: string | null;
  status: number;
  /** Body bytes written (less than the body when cut). */
  bytes: number;
}

export interface OriginOptions {
  /** Directory served at `/`. */
  root: string;
  /** Extra directories served under a path prefix, e.g. `{ '/ort/': ortDist }`. */
  mounts?: Record<string, string>;
  /** Extra response headers on every response (e.g. COOP/COEP). */
  headers?: Record<string, string>;
  /** Host to bind (default 127.0.0.1); `url` always says `localhost`, a secure context for browsers. */
  host?: string;
  /** Holds each `/blobs/` response back this long, so concurrent loaders overlap. */
  delayMs?: number;
  /** Sends bodies no faster than this, all responses together: a network link instead of loopback (benches). */
  bytesPerSecond?: number;
}

export interface Origin {
  /** `http://localhost:<port>` */
  readonly url: string;
  readonly port: number;
  /** Every request so far, oldest first. */
  readonly requests: OriginRequest[];
  /** GET requests for a path (exact) or all GETs with no argument. */
  gets(path?: string): number;
  /** Body bytes served for a path (exact) or in all. */
  bytesServed(path?: string): number;
  /** Forget recorded requests. */
  reset(): void;
  /** The next `times` GETs of `path` send full headers, then only `afterBytes` of the body, then drop the connection. */
  cutAfter(path: string, afterBytes: number, times?: number): void;
  /** The next `times` GETs of `path` send `afterBytes` of the body, then hold the connection open until the client gives up. */
  stallAfter(path: string, afterBytes: number, times?: number): void;
  /** The next `times` GETs of `path` send the whole body with its first byte flipped: bytes corrupted in transit. */
  corrupt(path: string, times?: number): void;
  /** The next `times` GETs of `path` answer `status` with an empty body. */
  failWith(path: string, status: number, times?: number): void;
  close(): Promise<void>;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.map': 'application/json',
};

const HEX_NAME = /^[0-9a-f]{64}$/;

export async function startOrigin(options: OriginOptions): Promise<Origin> {
  const requests: OriginRequest[] = [];
  const cuts = new Map<string, { afterBytes: number; times: number; stall: boolean }>();
  const corruptions = new Map<string, number>();
  const failures = new Map<string, { status: number; times: number }>();
  const mounts = Object.entries(options.mounts ?? {}).sort((a, b) => b[0].length - a[0].length);
  const etags = new Map<string, string>();
  // The link (bytesPerSecond): when it is free again, all bodies sharing it.
  let linkFreeAt = 0;

  function resolveFile(path: string): string | null {
    for (const [prefix, dir] of mounts) if (path.startsWith(prefix)) return safeJoin(dir, path.slice(prefix.length));
    return safeJoin(options.root, path.slice(1));
  }

  async function etagFor(file: string, size: number, mtimeMs: number): Promise<string> {
    const name = file.split(sep).pop()!;
    // Blobs are named by their digest: that is their strong ETag, as on the edge.
    if (HEX_NAME.test(name)) return `"${name}"`;
    const key = `${file}:${size}:${mtimeMs}`;
    let tag = etags.get(key);
    if (!tag) {
      tag = `"${createHash('sha256').update(key).digest('hex').slice(0, 32)}"`;
      etags.set(key, tag);
    }
    return tag;
  }

  async function handle(req: IncomingMessage, res: ServerResponse, record: OriginRequest) {
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Expose-Headers', 'Content-Range, Content-Length, ETag, Accept-Ranges');
    for (const [k, v] of Object.entries(options.headers ?? {})) res.setHeader(k, v);
    if (req.method === 'OPTIONS') {
      res.setHeader('Access-Control-Allow-Methods', 'GET, HEAD');
      res.setHeader('Access-Control-Allow-Headers', 'Range, If-Range, If-None-Match, If-Match, Cache-Control');
      return end(res, record, 204);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return end(res, record, 405);
    const failure = failures.get(record.path);
    if (failure && failure.times > 0) {
      failure.times--;
      return end(res, record, failure.status);
    }
    const file = resolveFile(record.path.endsWith('/') ? `${record.path}index.html` : record.path);
    const info = file ? await stat(file).catch(() => null) : null;
    if (!file || !info?.isFile()) return end(res, record, 404);
    if (options.delayMs && record.path.startsWith('/blobs/')) await new Promise((r) => setTimeout(r, options.delayMs));

    const size = info.size;
    const etag = await etagFor(file, size, info.mtimeMs);
    res.setHeader('ETag', etag);
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', TYPES[extname(file)] ?? 'application/octet-stream');
    res.setHeader('Cache-Control', record.path.startsWith('/tags/') ? 'no-cache' : 'public, max-age=31536000, immutable');
    if (req.headers['if-none-match'] === etag) return end(res, record, 304);

    let start = 0;
    let endByte = size - 1;
    let status = 200;
    const range = record.range;
    const ifRangeOk = !record.ifRange || record.ifRange === etag;
    if (range && ifRangeOk) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (!m || (m[1] === '' && m[2] === '')) return end(res, record, 416, { 'Content-Range': `bytes */${size}` });
      if (m[1] === '') {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        if (m[2] !== '') endByte = Math.min(endByte, Number(m[2]));
      }
      if (start >= size || start > endByte) return end(res, record, 416, { 'Content-Range': `bytes */${size}` });
      status = 206;
      res.setHeader('Content-Range', `bytes ${start}-${endByte}/${size}`);
    }
    const length = endByte - start + 1;
    res.setHeader('Content-Length', String(length));
    res.statusCode = status;
    record.status = status;
    if (req.method === 'HEAD' || length === 0) return void res.end();

    const cut = req.method === 'GET' ? cuts.get(record.path) : undefined;
    const active = cut && cut.times > 0 ? (cut.times--, cut) : undefined;
    const limit = active ? active.afterBytes : Number.POSITIVE_INFINITY;
    const flips = req.method === 'GET' ? (corruptions.get(record.path) ?? 0) : 0;
    if (flips > 0) corruptions.set(record.path, flips - 1);
    let first = flips > 0;
    await new Promise<void>((resolve) => {
      const stream = createReadStream(file, { start, end: endByte });
      stream.on('data', (chunk) => {
        let buf = chunk as Buffer;
        if (first && buf.byteLength > 0) {
          buf = Buffer.from(buf);
          buf[0] ^= 0xff;
          first = false;
        }
        const room = limit - record.bytes;
        if (room <= 0) return;
        const part = buf.byteLength > room ? buf.subarray(0, room) : buf;
        record.bytes += part.byteLength;
        if (record.bytes >= limit) {
          stream.destroy();
          // A stalled body: the connection stays open until the client aborts.
          if (active?.stall) return void res.write(part);
          // Drop the connection mid-body once the client has had time to take the bytes it got.
          res.write(part, () => setTimeout(() => res.destroy(), 150));
          return resolve();
        }
        const ok = res.write(part);
        const rate = options.bytesPerSecond;
        const wait = rate ? (linkFreeAt = Math.max(performance.now(), linkFreeAt) + (part.byteLength / rate) * 1000) - performance.now() : 0;
        if (!ok || wait > 1) {
          stream.pause();
          let pending = (ok ? 0 : 1) + (wait > 1 ? 1 : 0);
          const go = () => void (--pending === 0 && stream.resume());
          if (!ok) res.once('drain', go);
          if (wait > 1) setTimeout(go, wait);
        }
      });
      stream.on('end', () => {
        res.end();
        resolve();
      });
      stream.on('error', () => {
        res.destroy();
        resolve();
      });
      res.on('close', () => {
        stream.destroy();
        resolve();
      });
    });
  }

  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]);
    const record: OriginRequest = {
      method: req.method ?? 'GET',
      path,
      range: (req.headers.range as string | undefined) ?? null,
      ifRange: (req.headers['if-range'] as string | undefined) ?? null,
      status: 0,
      bytes: 0,
    };
    requests.push(record);
    handle(req, res, record).catch(() => {
      if (!res.headersSent) end(res, record, 500);
      else res.destroy();
    });
  });
  // Browsers keep connections alive; close() must not wait for them.
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, options.host ?? '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  const match = (path?: string) => (r: OriginRequest) => path === undefined || r.path === path;
  return {
    url: `http://localhost:${port}`,
    port,
    requests,
    gets: (path) => requests.filter((r) => r.method === 'GET' && match(path)(r)).length,
    bytesServed: (path) => requests.filter(match(path)).reduce((n, r) => n + r.bytes, 0),
    reset: () => void requests.splice(0),
    cutAfter: (path, afterBytes, times = 1) => void cuts.set(path, { afterBytes, times, stall: false }),
    corrupt: (path, times = 1) => void corruptions.set(path, times),
    stallAfter: (path, afterBytes, times = 1) => void cuts.set(path, { afterBytes, times, stall: true }),
    failWith: (path, status, times = 1) => void failures.set(path, { status, times }),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function end(res: ServerResponse, record: OriginRequest, status: number, headers: Record<string, string> = {}) {
  record.status = status;
  res.writeHead(status, headers);
  res.end();
}

/** Joins a URL path under `dir`, refusing anything that climbs out of it. */
function safeJoin(dir: string, rel: string): string | null {
  const path = normalize(join(dir, rel));
  const base = normalize(dir.endsWith(sep) ? dir : dir + sep);
  return path.startsWith(base) ? path : null;
}
