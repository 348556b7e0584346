/**
 * Runs `npm start` as a user does (its own process group, as a terminal's foreground job),
 * on free ports and in a temp directory, so it never touches the user's state or ports.
 * `interrupt()` is Ctrl-C: SIGINT to the whole group.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../edge-dev/wrangler-dev.ts';
import { REPO_ROOT } from '../support/paths.ts';

export interface Orchestrator {
  /** The page URL it printed. */
  url: string;
  /** The edge worker's process group (wrangler dev runs detached, in its own group). */
  edgeGroup: number;
  /** npm's process group: npm, tsx and the orchestrator itself. */
  group: number;
  child: ChildProcess;
  work: string;
  output(): string;
  /** Ctrl-C, then waits until every process holding its output (npm, tsx, the orchestrator) has exited. */
  interrupt(timeoutMs?: number): Promise<void>;
  /** Kills whatever is left and removes the temp directory. */
  cleanup(): Promise<void>;
}

/**
 * Live processes whose group is one of `groups`, as `pid command` lines. Zombies do not count:
 * they have exited, and where PID 1 is no init (a container) nobody reaps them.
 */
export function groupMembers(groups: number[]): string[] {
  const out = execFileSync('ps', ['-eo', 'pid=,pgid=,stat=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((line) => line.trim().match(/^(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null && groups.includes(Number(m[2])) && !m[3].startsWith('Z'))
    .map((m) => `${m[1]} ${m[4].slice(0, 160)}`);
}

function killGroup(group: number): void {
  try {
    process.kill(-group, 'SIGKILL');
  } catch {
    // gone already
  }
}

export async function startOrchestrator(options: { readyTimeoutMs?: number } = {}): Promise<Orchestrator> {
  const work = await mkdtemp(join(tmpdir(), 'fuseload-e2e-'));
  const [edgePort, demoPort] = [await freePort(), await freePort()];
  const child = spawn('npm', ['start', '--silent'], {
    cwd: REPO_ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      FUSELOAD_EDGE_PORT: String(edgePort),
      FUSELOAD_DEMO_PORT: String(demoPort),
      FUSELOAD_DEV_DIR: join(work, 'dev'),
      FUSELOAD_PERSIST_TO: join(work, 'state'),
      PIPELINE_STORE: join(work, 'store'),
      // Other work in the tree must not live-reload the page under the test.
      FUSELOAD_HMR: '0',
    },
  });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const group = child.pid!;
  let closed = false;
  child.once('close', () => (closed = true));

  let edgeGroup = 0;
  const cleanup = async () => {
    for (const g of [group, edgeGroup]) if (g) killGroup(g);
    await rm(work, { recursive: true, force: true });
  };

  const deadline = Date.now() + (options.readyTimeoutMs ?? 75_000);
  let url = '';
  while (!url) {
    const ready = /ready in [\d.]+ s: open (\S+)/.exec(log);
    const edge = /\(wrangler dev, pid (\d+)\)/.exec(log);
    if (edge) edgeGroup = Number(edge[1]);
    if (ready) url = ready[1];
    else if (child.exitCode !== null) {
      await cleanup();
      throw new Error(`npm start exited with ${child.exitCode} before it was ready:\n${log}`);
    } else if (Date.now() > deadline) {
      await cleanup();
      throw new Error(`npm start was not ready within ${options.readyTimeoutMs ?? 75_000} ms:\n${log}`);
    } else await new Promise((r) => setTimeout(r, 100));
  }
  if (!edgeGroup) {
    await cleanup();
    throw new Error(`npm start did not print the edge worker's pid:\n${log}`);
  }

  return {
    url,
    edgeGroup,
    group,
    child,
    work,
    output: () => log,
    async interrupt(timeoutMs = 20_000) {
      if (!closed) {
        // npm exits on SIGINT before the orchestrator has cleaned up; `close` waits for the last holder of the pipes.
        const done = once(child, 'close');
        process.kill(-group, 'SIGINT');
        const timer = setTimeout(() => killGroup(group), timeoutMs);
        await done;
        clearTimeout(timer);
      }
    },
    cleanup,
  };
}
