/**
 * Starts `wrangler dev` for real (workerd, local R2 state, no network) and stops its
 * whole process group. Shared by the edge-dev test and test/bench/edge.ts.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';

export const REPO_ROOT = new URL('../..', import.meta.url).pathname;

/** Offline and quiet, as DESIGN.md asks. */
export const WRANGLER_ENV = { WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' } as const;

export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

export interface WranglerDev {
  origin: string;
  /** Everything wrangler printed, for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

export interface WranglerDevOptions {
  /** `--persist-to`: the local state (R2 included) to serve. */
  persistTo: string;
  /** How long to wait for the first answer; default 45 s (a cold start bundles the worker). */
  readyTimeoutMs?: number;
  /** Extra `--var NAME:value` bindings. */
  vars?: Record<string, string>;
}

export async function startWranglerDev(options: WranglerDevOptions): Promise<WranglerDev> {
  const port = await freePort();
  const inspectorPort = await freePort(); // the default 9229 clashes between parallel runs
  const vars = Object.entries(options.vars ?? {}).flatMap(([k, v]) => ['--var', `${k}:${v}`]);
  const args = ['wrangler', 'dev', '--port', String(port), '--ip', '127.0.0.1', '--inspector-port', String(inspectorPort),
    '--persist-to', options.persistTo, '--show-interactive-dev-session=false', '--log-level', 'warn', ...vars];
  // Its own process group, so stop() reaches npx, wrangler and workerd alike.
  const child = spawn('npx', args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...WRANGLER_ENV, CI: '1' },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout?.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const origin = `http://127.0.0.1:${port}`;
  const dev: WranglerDev = { origin, output: () => log, stop: () => stopGroup(child) };
  try {
    await waitUntilAnswering(origin, child, options.readyTimeoutMs ?? 45_000);
  } catch (e) {
    await dev.stop();
    throw new Error(`${(e as Error).message}\n--- wrangler output ---\n${log.slice(-4000)}`);
  }
  return dev;
}

async function waitUntilAnswering(origin: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited with ${child.exitCode} before it was ready`);
    try {
      const res = await fetch(`${origin}/`, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      if (res.status === 404) return; // the worker answers: `/` is not a key
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`wrangler dev did not answer on ${origin} within ${timeoutMs} ms`);
}

async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = once(child, 'exit');
  const kill = (signal: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, signal);
    } catch {
      // already gone
    }
  };
  kill('SIGTERM');
  const timer = setTimeout(() => kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
  kill('SIGKILL'); // stragglers (workerd) that outlived their parent
}
