/**
 * `npm run bench`: runs every other test/bench/*.ts in turn (one at a time: they measure
 * throughput and must not share the CPU), collects each one's `BENCH <name> key=value …`
 * line and prints one table of the ratios, with the target where the project has one.
 *
 *   npm run bench                       all benchmarks
 *   npm run bench -- --only build,edge  some (file names without .ts)
 *   npm run bench -- --from bench.log   no runs: tabulate the BENCH lines of a saved log
 *
 * Before each bench the machine settles (`settle`: `sync`, then the CPUs idle for a second, at most
 * BENCH_SETTLE_S seconds, default 30), so none starts in the writeback of the one before it.
 *
 * Exit status 1 when a benchmark fails or prints no BENCH line, or a ratio misses its target.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

const BENCH_DIR = import.meta.dirname;
const ROOT = join(BENCH_DIR, '../..');

/** Upper bounds from the project's goals, as `<bench>.<key>`; other ratios are reported only. */
export const TARGETS: Record<string, number> = {
  'build.ratio': 1.5,
  'publish.ratio': 1.2,
  // Browser loads (test/bench/browser-load.ts), each against its baseline in the same round: cold / bare
  // fetch (IndexedDB writes going on), warm until the stored shards are read and verified / a raw IndexedDB
  // read, / the Cache API read of transformers.js, and the whole warm load (session built) / the Cache API
  // read + the same session.
  'browser.cold_ratio': 1.0,
  // The same over a 1 Gbit/s link (the origin's bodies paced): where the CPU waits on the network, not loopback's.
  'browser.cold_link_ratio': 1.0,
  'browser.warm_ratio': 1.15,
  'browser.warm_cache_api_ratio': 1.0,
  'browser.warm_usable_cache_api_ratio': 1.0,
  // SD-sized pipelines in Chromium (test/bench/browser-large.ts): the renderer's peak RSS / the artifact.
  'browser-large.wasm_cold_peak_ratio': 1.3,
  'browser-large.wasm_warm_peak_ratio': 1.3,
  'browser-large.webgpu_cold_peak_ratio': 1.3,
  'browser-large.webgpu_warm_peak_ratio': 1.3,
  'node.warm_ratio': 1.2,
  // LoRA switching without a new session (docs/architecture.md): switch / cold load, a run with an
  // overlay / a run of the plain base, extra memory during switches / the targeted weights' bytes.
  'overlay.switch_ratio': 0.1,
  'overlay.step_ratio': 1.05,
  'overlay.mem_ratio': 1,
  'overlay.wasm_switch_ratio': 0.1,
  'overlay.wasm_step_ratio': 1.05,
  'overlay.wasm_mem_ratio': 1,
  'adapters.loha_ratio': 1.3,
  'adapters.lokr_ratio': 1.3,
  'serve.rss_ratio': 1.25,
  'serve.flood_growth_ratio': 1.1,
  'generate.node_ratio': 1.05,
  'generate.wasm_ratio': 1.05,
};

export interface BenchLine {
  name: string;
  values: Record<string, string>;
}

/** `BENCH <name> k=v k=v` lines anywhere in `text`; the last one per name wins. */
export function parseBenchLines(text: string): BenchLine[] {
  const byName = new Map<string, BenchLine>();
  for (const line of text.split('\n')) {
    const m = /^\s*BENCH\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const values: Record<string, string> = {};
    for (const pair of m[2].split(/\s+/)) {
      const eq = pair.indexOf('=');
      if (eq > 0) values[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    byName.set(m[1], { name: m[1], values });
  }
  return [...byName.values()];
}

export interface Row {
  bench: string;
  metric: string;
  value: number;
  /** As the bench printed it (its own precision). */
  raw: string;
  target: number | null;
  ok: boolean | null;
}

/** `ratio`, `cold_ratio`, `switch_ratio_1gbit`, …: the keys tabulated as ratios. */
const isRatio = (key: string) => /(^|_)ratio(_|$)/.test(key);

/** One row per ratio key; a ratio that is not a number is a failed row. */
export function ratioRows(lines: BenchLine[]): Row[] {
  const rows: Row[] = [];
  for (const { name, values } of lines) {
    for (const [key, raw] of Object.entries(values)) {
      if (!isRatio(key)) continue;
      const value = Number(raw);
      const target = TARGETS[`${name}.${key}`] ?? null;
      const ok = !Number.isFinite(value) ? false : target === null ? null : value <= target;
      rows.push({ bench: name, metric: key, value, raw, target, ok });
    }
  }
  return rows;
}

export function formatTable(rows: Row[], lines: BenchLine[]): string {
  const header = ['bench', 'ratio', 'value', 'target', ''];
  const body = rows.map((r) => [
    r.bench,
    r.metric,
    r.raw,
    r.target === null ? '–' : `≤ ${r.target}`,
    r.ok === null ? '' : r.ok ? 'ok' : 'MISS',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const fmt = (row: string[]) => row.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const out = [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(fmt)];
  // Everything else each bench reported (sizes, seconds, RSS), one line per bench.
  for (const { name, values } of lines) {
    const rest = Object.entries(values).filter(([k]) => !isRatio(k));
    if (rest.length) out.push(`  ${name}: ${rest.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  return out.join('\n');
}

function benchFiles(only: string[] | null): string[] {
  const all = readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.ts') && f !== basename(import.meta.filename) && !f.endsWith('.d.ts'))
    .sort();
  if (!only) return all;
  const unknown = only.filter((o) => !all.includes(`${o}.ts`));
  if (unknown.length) throw new Error(`--only: no test/bench/${unknown.join('.ts, ')}.ts (have ${all.map((f) => f.replace(/\.ts$/, '')).join(', ')})`);
  return all.filter((f) => only.includes(f.replace(/\.ts$/, '')));
}

/** Runs one bench with tsx, passing its output through, and returns its stdout. */
function runBench(file: string): Promise<{ code: number | null; stdout: string; seconds: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(BENCH_DIR, file)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      process.stdout.write(d);
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, seconds: (performance.now() - started) / 1000 }));
  });
}

/** Busy and total jiffies over all CPUs, from Linux's /proc/stat. */
function cpuTimes(): { busy: number; total: number } {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  // user nice system idle iowait …: idle and iowait are the time nobody ran.
  return { busy: total - fields[3] - (fields[4] ?? 0), total };
}

/**
 * Before each bench: the previous one's dirty pages written back (`sync`; the builds write
 * gigabytes, and writeback beside the next bench's timed work slows it unevenly) and the CPUs
 * idle (a second of ≤ 10% busy, at most `SETTLE_S` seconds of waiting), so every bench starts on
 * the same quiet machine whatever ran before it. Returns what it waited for, for the log.
 */
async function settle(maxSeconds: number): Promise<string> {
  const started = performance.now();
  try {
    execFileSync('sync');
  } catch {
    // No sync(1): nothing to wait for.
  }
  const synced = (performance.now() - started) / 1000;
  if (!existsSync('/proc/stat')) return `sync ${synced.toFixed(1)} s`;
  let busy = 1;
  while ((performance.now() - started) / 1000 < maxSeconds) {
    const a = cpuTimes();
    await sleep(1000);
    const b = cpuTimes();
    busy = (b.busy - a.busy) / Math.max(1, b.total - a.total);
    if (busy <= 0.1) break;
  }
  return `sync ${synced.toFixed(1)} s, idle after ${((performance.now() - started) / 1000).toFixed(1)} s (last second ${(busy * 100).toFixed(0)}% busy)`;
}

const SETTLE_S = Number(process.env.BENCH_SETTLE_S ?? 30);

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { only: { type: 'string' }, from: { type: 'string' } } });
  const failures: string[] = [];
  let lines: BenchLine[];
  if (values.from) {
    lines = parseBenchLines(readFileSync(values.from, 'utf8'));
    if (lines.length === 0) failures.push(`${values.from}: no BENCH lines`);
  } else {
    lines = [];
    for (const file of benchFiles(values.only ? values.only.split(',').map((s) => s.trim()) : null)) {
      process.stdout.write(`\n=== ${file} (${await settle(SETTLE_S)})\n`);
      const { code, stdout, seconds } = await runBench(file);
      const found = parseBenchLines(stdout);
      process.stdout.write(`=== ${file}: exit ${code} in ${seconds.toFixed(1)} s\n`);
      if (code !== 0) failures.push(`${file} exited with ${code}`);
      else if (found.length === 0) failures.push(`${file} printed no BENCH line`);
      lines.push(...found);
    }
  }
  const rows = ratioRows(lines);
  process.stdout.write(`\n${formatTable(rows, lines)}\n`);
  for (const r of rows) if (r.ok === false) failures.push(`${r.bench} ${r.metric}=${r.value} misses its target ≤ ${r.target ?? 'a number'}`);
  for (const f of failures) process.stdout.write(`FAIL ${f}\n`);
  return failures.length ? 1 : 0;
}

// Importable for its parser; runs only as the entry point.
if (process.argv[1] && import.meta.filename === process.argv[1]) {
  process.exitCode = await main().catch((e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  });
}
