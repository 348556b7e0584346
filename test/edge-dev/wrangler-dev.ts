/**
 * Starts `wrangler dev` for real (workerd, local R2 state, no network) and stops its
 * whole process group. Shared by the edge-dev test and test/bench/edge.ts.
 */
import { freePort as freePortOn, spawnGroup, waitForHttp } from '../../tools/dev/process-group.ts';

export const REPO_ROOT = new URL('../..', import.meta.url).pathname;

/** Offline and quiet, as DESIGN.md asks. */
export const WRANGLER_ENV = { WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' } as const;

export const freePort = (): Promise<number> => freePortOn('127.0.0.1');

export interface WranglerDev {
  origin: string;
  /** The last lines wrangler printed, for failure messages. */
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
  const group = spawnGroup('npx', args, { cwd: REPO_ROOT, env: { ...process.env, ...WRANGLER_ENV, CI: '1' } });
  const origin = `http://127.0.0.1:${port}`;
  const dev: WranglerDev = { origin, output: () => group.tail(), stop: () => group.stop() };
  try {
    // The worker answers `/` with 404: it is not a key.
    await waitForHttp(`${origin}/`, (status) => status === 404, group, options.readyTimeoutMs ?? 45_000, 'wrangler dev');
  } catch (e) {
    await dev.stop();
    throw e;
  }
  return dev;
}
