/**
 * A child in its own process group, stopped as a group: `wrangler dev` runs workerd under
 * it, and killing wrangler alone would leave workerd holding the port.
 */
import { type ChildProcess, spawn, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';

export interface GroupChild {
  readonly child: ChildProcess;
  /** The last output lines, for a failure message. */
  tail(): string;
  /** SIGTERM to the group, SIGKILL after `graceMs`, then SIGKILL for stragglers. */
  stop(graceMs?: number): Promise<void>;
  /** Last resort from a synchronous `exit` handler. */
  killNow(): void;
}

/**
 * A watchdog in a group of its own that holds a pipe from this process: when this process is
 * gone, even by SIGKILL, the pipe closes and it stops `group`. So nothing outlives us.
 */
const WATCHDOG = `
const group = Number(process.argv[1]);
const kill = (signal) => { try { process.kill(-group, signal); return true; } catch { return false; } };
process.on('SIGINT', () => {});
process.stdin.on('data', () => {});
process.stdin.on('end', () => {
  if (!kill('SIGTERM')) process.exit(0);
  setTimeout(() => { kill('SIGKILL'); process.exit(0); }, 3000);
});
`;

function watchGroup(group: number): ChildProcess {
  const watchdog = spawn(process.execPath, ['-e', WATCHDOG, String(group)], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
  watchdog.unref();
  (watchdog.stdin as unknown as { unref?: () => void }).unref?.();
  return watchdog;
}

export function spawnGroup(command: string, args: string[], options: SpawnOptions & { onLine?: (line: string) => void }): GroupChild {
  const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const watchdog = child.pid === undefined ? null : watchGroup(child.pid);
  const lines: string[] = [];
  const take = (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line.trim()) continue;
      lines.push(line);
      if (lines.length > 200) lines.shift();
      options.onLine?.(line);
    }
  };
  child.stdout?.on('data', take);
  child.stderr?.on('data', take);
  const signalGroup = (signal: NodeJS.Signals) => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, signal);
    } catch {
      // the group is gone
    }
  };
  return {
    child,
    tail: () => lines.slice(-40).join('\n'),
    killNow: () => signalGroup('SIGKILL'),
    async stop(graceMs = 5000) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        signalGroup('SIGTERM');
        const timer = setTimeout(() => signalGroup('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }
      signalGroup('SIGKILL'); // anything in the group that outlived its leader
      watchdog?.kill();
    },
  };
}

/** Fails with a line the user can act on when something already listens on `port`. */
export async function assertPortFree(port: number, host: string, envName: string): Promise<void> {
  const server = createServer();
  try {
    server.listen(port, host);
    await once(server, 'listening');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`port ${port} on ${host} is not free (${code}); stop what uses it or set ${envName} to another port`);
  } finally {
    // Released before the real server binds it.
    if (server.listening) await new Promise((r) => server.close(r));
  }
}

/** A port nothing listens on right now (the OS picks it). */
export async function freePort(host: string): Promise<number> {
  const server = createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await new Promise((r) => server.close(r));
  return port;
}

/** Polls `url` until `ok(status)` or the child exits or time runs out. */
export async function waitForHttp(url: string, ok: (status: number) => boolean, group: GroupChild | null, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (group && (group.child.exitCode !== null || group.child.signalCode !== null)) {
      throw new Error(`${what} exited (${group.child.exitCode ?? group.child.signalCode}) before it answered:\n${group.tail()}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      if (ok(res.status)) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} did not answer ${url} within ${timeoutMs / 1000} s (last: ${last})${group ? `:\n${group.tail()}` : ''}`);
}
