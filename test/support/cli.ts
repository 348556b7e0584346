/** Runs the real `fuseload` CLI in a child process, as a user would. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export const BIN = new URL('../../bin/fuseload.js', import.meta.url).pathname;

export async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}
