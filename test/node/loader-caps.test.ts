/**
 * The loader reads tags, manifests and LoRA files with caps enforced while they stream, and a
 * dead origin reads one way ("could not reach"), from a real loopback HTTP server.
 */
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeRuntime } from '../../tools/runtime/index.ts';

let server: Server;
let url: string;
let root: string;
/** Bytes the server wrote before the client went away, per path. */
const written = new Map<string, number>();

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'fuseload-caps-'));
  server = createServer((req, res) => {
    // Endless bodies: a tag or manifest that never ends, 64 KiB at a time, until the client stops reading.
    const path = req.url ?? '/';
    res.writeHead(200, { 'Content-Type': 'application/json' });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let n = 0;
    const pump = () => {
      while (n < 1024 ** 3 && res.write(chunk)) n += chunk.length;
      written.set(path, n);
      if (n >= 1024 ** 3) res.end();
    };
    res.on('drain', pump);
    res.on('close', () => written.set(path, n));
    res.write('{"manifest":"');
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await rm(root, { recursive: true, force: true });
});

describe('bounded reads in the loader', () => {
  it('a tag that never ends is refused at its cap, with bounded memory', async () => {
    const rt = createNodeRuntime({ storeRoot: join(root, 'a'), warn: () => {} });
    const before = process.memoryUsage().rss;
    const err = await rt.loadPipeline({ origin: url, model: 'm', tag: 'latest' }).catch((e) => e);
    expect(err.message).toMatch(/tags\/m\/latest\.json: .*(larger than|more than|exceeds).*4 KiB/);
    expect(err.message.split('\n')).toHaveLength(1);
    expect(process.memoryUsage().rss - before).toBeLessThan(64 * 1024 * 1024);
    expect(written.get('/tags/m/latest.json')!).toBeLessThan(256 * 1024 * 1024);
  });

  it('a manifest that never ends is refused at its cap', async () => {
    const rt = createNodeRuntime({ storeRoot: join(root, 'b'), warn: () => {} });
    const err = await rt.loadPipeline({ origin: url, model: 'm', fingerprint: 'a'.repeat(64) }).catch((e) => e);
    expect(err.message).toMatch(/manifests\/sha256\/a{64}\.json: .*16 MiB/);
  });

  it('an origin that is not there reads "could not reach", naming it and what to check', async () => {
    const rt = createNodeRuntime({ storeRoot: join(root, 'c'), warn: () => {} });
    const err = await rt.loadPipeline({ origin: 'http://127.0.0.1:9', model: 'm', tag: 'latest' }).catch((e) => e);
    expect(err.message).toMatch(/^http:\/\/127\.0\.0\.1:9\/tags\/m\/latest\.json: could not reach the origin .* — /);
  });
});
