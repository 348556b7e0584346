/**
 * Edge worker throughput under a real `wrangler dev`, against a plain Node static server
 * (node:http + fs, honouring Range) serving the same bytes in the same run.
 *
 *   npx tsx test/bench/edge.ts [--mib 64] [--ranges 64] [--rounds 3]
 *
 * Prints a table and `BENCH edge range_ratio=… full_ratio=…` (edge ÷ static throughput).
 * Two blobs: one only ever read by ranges (so every edge range is an R2 read), one read
 * whole first (R2 + cache put) and then from the edge cache. Edge and static requests
 * alternate within each round and the median round is reported, because the machine is
 * shared and one round alone swings by ±30 %.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';
import { REPO_ROOT, WRANGLER_ENV, startWranglerDev } from '../edge-dev/wrangler-dev.ts';
import { median } from '../support/bench.ts';

const MiB = 1024 * 1024;
const run = promisify(execFile);

const { values } = parseArgs({
  options: { mib: { type: 'string', default: '64' }, ranges: { type: 'string', default: '64' }, rounds: { type: 'string', default: '3' } },
});
const totalMiB = Number(values.mib);
const rangeCount = Number(values.ranges);
const rounds = Number(values.rounds);

/** Incompressible, reproducible bytes: SHA-256 in counter mode. */
function benchBytes(size: number, seed: string): Uint8Array {
  const out = new Uint8Array(size);
  for (let off = 0, i = 0; off < size; off += 32, i++) {
    out.set(createHash('sha256').update(`fuseload-bench-${seed}-${i}`).digest().subarray(0, Math.min(32, size - off)), off);
  }
  return out;
}

interface BenchBlob {
  bytes: Uint8Array;
  key: string;
  file: string;
}

/** Writes one blob to disk (for the static server) and into wrangler's local R2 state. */
async function writeBlob(work: string, persistTo: string, size: number, seed: string): Promise<BenchBlob> {
  const bytes = benchBytes(size, seed);
  const hex = createHash('sha256').update(bytes).digest('hex');
  const key = `blobs/sha256/${hex}`;
  const file = join(work, hex);
  await writeFile(file, bytes);
  if ((await stat(file)).size !== size) throw new Error('bench file has the wrong size');
  await run('npx', ['wrangler', 'r2', 'object', 'put', `fuseload-artifacts/${key}`, '--local', '--persist-to', persistTo, '--file', file], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...WRANGLER_ENV },
  });
  return { bytes, key, file };
}

/**
 * The comparison: a node:http + fs server in its own process (as wrangler dev is), files by
 * key, single ranges via range-parser, nothing else. Same process as the client would make
 * the two share one event loop and flatter the edge.
 */
const STATIC_SERVER = `
const http = require('node:http');
const fs = require('node:fs');
const rangeParser = require('range-parser');
const files = new Map(JSON.parse(process.env.BENCH_FILES));
const server = http.createServer((req, res) => {
  const file = files.get((req.url || '').slice(1));
  if (!file) return res.writeHead(404).end();
  const size = fs.statSync(file).size;
  const parsed = req.headers.range ? rangeParser(size, req.headers.range) : -2;
  const opts = { highWaterMark: 1 << 20 };
  if (Array.isArray(parsed) && parsed.length === 1) {
    const { start, end } = parsed[0];
    res.writeHead(206, { 'Content-Length': end - start + 1, 'Content-Range': 'bytes ' + start + '-' + end + '/' + size });
    fs.createReadStream(file, { ...opts, start, end }).pipe(res);
  } else {
    res.writeHead(200, { 'Content-Length': size, 'Accept-Ranges': 'bytes' });
    fs.createReadStream(file, opts).pipe(res);
  }
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

async function staticServer(files: Map<string, string>): Promise<{ origin: string; stop(): void }> {
  const child = spawn(process.execPath, ['-e', STATIC_SERVER], {
    cwd: REPO_ROOT,
    env: { ...process.env, BENCH_FILES: JSON.stringify([...files]) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  return { origin: `http://127.0.0.1:${Number(line.toString().trim())}`, stop: () => child.kill() };
}

interface Timing {
  bytes: number;
  seconds: number;
}

/** Fetches and fully reads a body; checks status and length so errors cannot pass as speed. */
async function timedGet(url: string, expectStatus: number, expectBytes: number, range?: string): Promise<{ body: Uint8Array; t: Timing }> {
  const started = performance.now();
  const headers: Record<string, string> = { 'Accept-Encoding': 'identity' };
  if (range) headers.Range = range;
  const res = await fetch(url, { headers });
  const body = new Uint8Array(await res.arrayBuffer());
  const seconds = (performance.now() - started) / 1000;
  if (res.status !== expectStatus || body.length !== expectBytes) {
    throw new Error(`${url} ${range ?? ''}: got ${res.status} with ${body.length} bytes, want ${expectStatus} with ${expectBytes}`);
  }
  return { body, t: { bytes: body.length, seconds } };
}

async function rangeRun(url: string, size: number, bytes: Uint8Array): Promise<Timing> {
  let total: Timing = { bytes: 0, seconds: 0 };
  for (let i = 0; i < rangeCount; i++) {
    // Spread over the object, not aligned to MiB boundaries.
    const start = Math.floor(((i * 7919) % rangeCount) * ((size - MiB) / rangeCount)) + (i % 4096);
    const end = start + MiB - 1;
    const { body, t } = await timedGet(url, 206, MiB, `bytes=${start}-${end}`);
    if (i === 0 && Buffer.compare(body, bytes.subarray(start, end + 1)) !== 0) throw new Error(`${url}: wrong bytes for range ${start}-${end}`);
    total = { bytes: total.bytes + t.bytes, seconds: total.seconds + t.seconds };
  }
  return total;
}

const mibPerSecond = (t: Timing) => t.bytes / MiB / t.seconds;

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-edge-'));
  const size = totalMiB * MiB;
  let dev: Awaited<ReturnType<typeof startWranglerDev>> | undefined;
  let plain: { origin: string; stop(): void } | undefined;
  try {
    const persistTo = join(work, 'state');
    const rangedOnly = await writeBlob(work, persistTo, size, 'ranged');
    const cached = await writeBlob(work, persistTo, size, 'cached');
    dev = await startWranglerDev({ persistTo });
    plain = await staticServer(new Map([[rangedOnly.key, rangedOnly.file], [cached.key, cached.file]]));
    const edgeUrl = (b: BenchBlob) => `${dev!.origin}/${b.key}`;
    const staticUrl = (b: BenchBlob) => `${plain!.origin}/${b.key}`;

    // Warm both (connections, JIT, page cache) with one small range each.
    await timedGet(edgeUrl(rangedOnly), 206, 1024, 'bytes=0-1023');
    await timedGet(staticUrl(rangedOnly), 206, 1024, 'bytes=0-1023');

    // The one cold full GET: R2 read plus the waitUntil cache put.
    const staticFullFirst = (await timedGet(staticUrl(cached), 200, size)).t;
    const edgeFullFirst = await timedGet(edgeUrl(cached), 200, size);
    if (Buffer.compare(edgeFullFirst.body, cached.bytes) !== 0) throw new Error('edge full GET returned wrong bytes');
    await new Promise((r) => setTimeout(r, 500)); // let the cache put finish

    const samples = { edgeRange: [] as number[], staticRange: [] as number[], edgeRangeCached: [] as number[], edgeFull: [] as number[], staticFull: [] as number[] };
    for (let round = 0; round < rounds; round++) {
      samples.staticRange.push(mibPerSecond(await rangeRun(staticUrl(rangedOnly), size, rangedOnly.bytes)));
      samples.edgeRange.push(mibPerSecond(await rangeRun(edgeUrl(rangedOnly), size, rangedOnly.bytes)));
      samples.edgeRangeCached.push(mibPerSecond(await rangeRun(edgeUrl(cached), size, cached.bytes)));
      samples.staticFull.push(mibPerSecond((await timedGet(staticUrl(cached), 200, size)).t));
      samples.edgeFull.push(mibPerSecond((await timedGet(edgeUrl(cached), 200, size)).t));
    }
    const m = {
      edgeRange: median(samples.edgeRange),
      staticRange: median(samples.staticRange),
      edgeRangeCached: median(samples.edgeRangeCached),
      edgeFullCold: mibPerSecond(edgeFullFirst.t),
      staticFullCold: mibPerSecond(staticFullFirst),
      edgeFull: median(samples.edgeFull),
      staticFull: median(samples.staticFull),
    };
    const rows: [string, number, number][] = [
      [`${rangeCount} × 1 MiB ranges (R2 reads)`, m.edgeRange, m.staticRange],
      [`${rangeCount} × 1 MiB ranges (edge cache)`, m.edgeRangeCached, m.staticRange],
      [`full ${totalMiB} MiB GET, first (R2 + put)`, m.edgeFullCold, m.staticFullCold],
      [`full ${totalMiB} MiB GET (edge cache)`, m.edgeFull, m.staticFull],
    ];
    console.log(`edge bench: ${totalMiB} MiB blobs, wrangler dev vs node:http static (own process), MiB/s, median of ${rounds} rounds`);
    for (const [name, edge, other] of rows) {
      console.log(`  ${name.padEnd(38)} edge ${edge.toFixed(1).padStart(8)}  static ${other.toFixed(1).padStart(8)}  ratio ${(edge / other).toFixed(3)}`);
    }
    const r = (a: number, b: number) => (a / b).toFixed(3);
    console.log(
      `BENCH edge range_ratio=${r(m.edgeRange, m.staticRange)} range_cached_ratio=${r(m.edgeRangeCached, m.staticRange)} ` +
        `full_ratio=${r(m.edgeFullCold, m.staticFullCold)} full_cached_ratio=${r(m.edgeFull, m.staticFull)} ` +
        `edge_range_mibps=${m.edgeRange.toFixed(1)} static_range_mibps=${m.staticRange.toFixed(1)} ` +
        `edge_full_mibps=${m.edgeFullCold.toFixed(1)} static_full_mibps=${m.staticFullCold.toFixed(1)}`,
    );
  } finally {
    await dev?.stop();
    plain?.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
