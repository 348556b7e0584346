/**
 * `fuseload serve` under load on loopback: `npx tsx test/bench/serve.ts [--seconds 5] [--runs 3]
 * [--clients 8] [--side 64] [--concurrency 2] [--flood 64] [--floods 5]`
 *
 * The real CLI server (a child process, so its RSS is its own) over a local origin serving the
 * test model; `--clients` loops POST /v1/generate back to back (a bounded, hand-written load:
 * fetch, no extra dependency) for `--seconds`, `--runs` times in a row. Per run: requests/s,
 * p50/p99 latency and the server's RSS after it.
 *
 * - rss_ratio: the server's RSS after the last run over after the first. A server that keeps
 *   nothing per request stays near 1.0 (target ≤ 1.25).
 * - tail_ratio: p99 over p50 at `--clients`, the median run.
 * - overhead_ratio: one client's p50 over the same generation in-process (load once, then
 *   render a PNG), i.e. what HTTP, validation, the queue and the pipeline cache add.
 * - The flood: `--flood` (64) connections at once, each one request at the default `--max-side`
 *   (512 × 512), under the server's default pixel budget (max-side² × concurrency). The server's
 *   RSS is sampled every 25 ms during each of `--floods` (at least 5) floods in a row, and its
 *   lowest over the 2 s after each is the flood's settled RSS: flood_peak_ratio is the highest
 *   peak over the RSS before the first flood; flood_growth_ratio the highest settled RSS of the
 *   last two floods over the highest of the floods before them (target ≤ 1.1: a server that keeps
 *   something per request grows flood after flood). Not the last flood over the first: the
 *   settled RSS of a server that keeps nothing swings by a fifth between floods (288, 266, 232,
 *   253, 231 MiB in one run; one sample 2 s after each: 207, 254, 249 in another), with whether
 *   the heap has been collected and the allocator has let go by then, and with how many of the
 *   64 requests the flood got in (18–39).
 *
 * - The trained sample (tools/sample/pipeline, 20 Euler steps at 64²) through the same server at
 *   `--clients`: sample_rps, sample_p50_ms, sample_p99_ms.
 *
 * Prints a table, then `BENCH serve rps=… p50_ms=… p99_ms=… rss_mib=a/b/c rss_ratio=… tail_ratio=… overhead_ratio=…`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from '../../tools/build/build.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { renderPng } from '../../tools/server/render.ts';
import { writeTinyArtifact } from '../support/node-onnx.ts';
import { startCountingOrigin } from '../support/node-origin.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { writeTag } from '../support/tag.ts';
import { median } from '../support/bench.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    runs: { type: 'string', default: '3' },
    clients: { type: 'string', default: '8' },
    side: { type: 'string', default: '64' },
    concurrency: { type: 'string', default: '2' },
    flood: { type: 'string', default: '64' },
    floods: { type: 'string', default: '5' },
  },
});
const seconds = Number(values.seconds);
const runs = Number(values.runs);
const clients = Number(values.clients);
const side = Number(values.side);
const serverConcurrency = Number(values.concurrency);
const floodClients = Number(values.flood);
const floodCount = Math.max(5, Number(values.floods));
/** serve's default --max-side (tools/server/limits.ts). */
const FLOOD_SIDE = 512;

const quantile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

/** The child's resident set in MiB (Linux /proc; `ps` elsewhere). */
async function rssMiB(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
  } catch {
    const { execFileSync } = await import('node:child_process');
    return Number(execFileSync('ps', ['-o', 'rss=', '-p', String(pid)]).toString().trim()) / 1024;
  }
}

function startServer(origin: string, store: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [join(REPO_ROOT, 'bin/fuseload.js'), 'serve', '--origin', origin, '--port', '0', '--device', 'cpu', '--concurrency', String(serverConcurrency), '--queue', String(clients * 2)],
    { env: { ...process.env, PIPELINE_STORE: store }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stderr!.resume(); // per-request log lines
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1] });
    });
    child.once('exit', (code) => reject(new Error(`fuseload serve exited (${code}) before listening: ${out}`)));
  });
}

interface RunResult {
  requests: number;
  failures: number;
  rps: number;
  p50: number;
  p99: number;
}

type Body = (client: number, i: number) => Record<string, unknown>;
/** The graph sample (the tiny seeded test model): the cheap request that loads the server itself. */
const graphBody: Body = (client, i) => ({ model: 'bench', seed: client * 100_000 + i, width: side, height: side });
/** The trained text-to-image sample (tools/sample/pipeline): 20 Euler steps at its native 64². */
const sampleBody: Body = (client, i) => ({ model: 'sample', prompt: 'a red circle on a blue background', seed: client * 100_000 + i, steps: 20, width: 64, height: 64 });

/** One POST /v1/generate, its body read to the end; the status. */
async function generate(url: string, body: Record<string, unknown>): Promise<number> {
  const res = await fetch(`${url}/v1/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  await res.arrayBuffer();
  return res.status;
}

/** `n` clients, each posting as soon as its last answer is in, for `ms`. */
async function load(url: string, n: number, ms: number, body: Body = graphBody): Promise<RunResult> {
  const latencies: number[] = [];
  let failures = 0;
  const until = performance.now() + ms;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: n }, async (_, client) => {
      for (let i = 0; performance.now() < until; i++) {
        const t = performance.now();
        const status = await generate(url, body(client, i));
        if (status === 200) latencies.push(performance.now() - t);
        else failures++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { requests: latencies.length, failures, rps: latencies.length / elapsed, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) };
}

/** `n` connections at once, one `side`² request each, while the server's RSS is sampled. */
async function flood(url: string, pid: number, n: number, side: number) {
  const before = await rssMiB(pid);
  let peak = before;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await rssMiB(pid));
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  const statuses = new Map<number, number>();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const status = await generate(url, { model: 'bench', seed: 900_000 + i, width: side, height: side });
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  sampling = false;
  await sampler;
  let after = await rssMiB(pid);
  for (const end = performance.now() + 2000; performance.now() < end; ) {
    await new Promise((r) => setTimeout(r, 100));
    after = Math.min(after, await rssMiB(pid));
  }
  return { before, peak, after, seconds, statuses };
}

const SAMPLE = join(REPO_ROOT, 'tools/sample/pipeline');

const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-serve-'));
const origin = await startCountingOrigin(join(work, 'origin'));
let server: { child: ChildProcess; url: string } | null = null;
try {
  await writeTinyArtifact(join(work, 'origin'), { name: 'bench' });
  const sample = await build({ base: SAMPLE, name: 'sample', out: join(work, 'origin'), store: null });
  await writeTag(join(work, 'origin'), 'sample', sample.fingerprint);

  // In-process: the same generation with no server around it.
  const runtime = createNodeRuntime({ storeRoot: join(work, 'store-direct'), warn: () => {} });
  const pipeline = await runtime.loadPipeline({ origin: origin.url, model: 'bench', tag: 'latest', device: 'cpu' });
  const direct: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    await renderPng(pipeline, { seed: i, width: side, height: side });
    direct.push(performance.now() - t);
  }
  await pipeline.dispose();
  await runtime.flush();

  server = await startServer(origin.url, join(work, 'store'));
  // Warm: the pipeline loaded and cached, the JIT and the heap at their working size, so the
  // runs below measure the steady state.
  await load(server.url, clients, 2000);
  const single = await load(server.url, 1, Math.min(3000, seconds * 1000));

  const results: (RunResult & { rss: number })[] = [];
  for (let r = 0; r < runs; r++) {
    const result = await load(server.url, clients, seconds * 1000);
    results.push({ ...result, rss: await rssMiB(server.child.pid!) });
  }

  process.stdout.write(`serve bench: ${clients} clients, ${side}x${side} PNGs, server --concurrency ${serverConcurrency}, ${seconds} s per run\n`);
  process.stdout.write('run  requests  failed   req/s    p50 ms   p99 ms   server RSS MiB\n');
  results.forEach((r, i) =>
    process.stdout.write(
      `${String(i + 1).padEnd(4)} ${String(r.requests).padStart(8)}  ${String(r.failures).padStart(6)}  ${r.rps.toFixed(0).padStart(6)}  ${r.p50.toFixed(2).padStart(7)}  ${r.p99.toFixed(2).padStart(7)}  ${r.rss.toFixed(1).padStart(8)}\n`,
    ),
  );
  process.stdout.write(`one client: p50 ${single.p50.toFixed(2)} ms over HTTP, ${median(direct).toFixed(2)} ms in-process\n`);

  const floods = [];
  for (let f = 0; f < floodCount; f++) {
    const flooded = await flood(server.url, server.child.pid!, floodClients, FLOOD_SIDE);
    floods.push(flooded);
    const answered = [...flooded.statuses].sort((a, b) => a[0] - b[0]).map(([status, count]) => `${count}× ${status}`).join(', ');
    process.stdout.write(
      `flood ${f + 1}: ${floodClients} connections of ${FLOOD_SIDE}x${FLOOD_SIDE} at once: ${answered} in ${flooded.seconds.toFixed(1)} s; ` +
        `server RSS ${flooded.before.toFixed(0)} MiB before, ${flooded.peak.toFixed(0)} MiB peak, ${flooded.after.toFixed(0)} MiB settled (lowest in the 2 s after)\n`,
    );
  }
  const floodPeak = Math.max(...floods.map((f) => f.peak));

  // The trained sample through the same server: one warm-up, then one run at --clients.
  await load(server.url, clients, 2000, sampleBody);
  const sampled = await load(server.url, clients, seconds * 1000, sampleBody);
  process.stdout.write(
    `trained sample (20 Euler steps, 64x64): ${clients} clients, ${sampled.rps.toFixed(1)} req/s, p50 ${sampled.p50.toFixed(0)} ms, p99 ${sampled.p99.toFixed(0)} ms, ${sampled.failures} failed\n`,
  );

  const mid = [...results].sort((a, b) => a.rps - b.rps)[Math.floor(results.length / 2)];
  const failures = results.reduce((n, r) => n + r.failures, 0);
  const fields = {
    rps: mid.rps.toFixed(0),
    p50_ms: mid.p50.toFixed(2),
    p99_ms: mid.p99.toFixed(2),
    failed: String(failures),
    rss_mib: results.map((r) => r.rss.toFixed(0)).join('/'),
    rss_ratio: (results[results.length - 1].rss / results[0].rss).toFixed(3),
    tail_ratio: (mid.p99 / mid.p50).toFixed(2),
    overhead_ratio: (single.p50 / median(direct)).toFixed(2),
    sample_rps: sampled.rps.toFixed(1),
    sample_p50_ms: sampled.p50.toFixed(0),
    sample_p99_ms: sampled.p99.toFixed(0),
    flood_peak_mib: floodPeak.toFixed(0),
    flood_peak_ratio: (floodPeak / floods[0].before).toFixed(2),
    flood_growth_ratio: (Math.max(...floods.slice(-2).map((f) => f.after)) / Math.max(...floods.slice(0, -2).map((f) => f.after))).toFixed(3),
  };
  process.stdout.write(`BENCH serve ${Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  // A flood may be refused (503 when the queue is full, 429): never answered with a 500.
  if (failures || sampled.failures || floods.some((f) => [...f.statuses.keys()].some((status) => status >= 500 && status !== 503))) process.exitCode = 1;
} finally {
  server?.child.kill('SIGTERM');
  await origin.close();
  await rm(work, { recursive: true, force: true });
}
