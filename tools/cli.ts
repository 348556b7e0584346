/**
 * `fuseload` CLI. Each subcommand lives in tools/commands/<name>.ts and exports
 * `register(program)`; this file only wires them up and turns user mistakes into one line.
 */
import { readdirSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { isFuseloadError } from '../common/errors.ts';
import { TOOL_VERSION } from './version.ts';

export type RegisterCommand = (program: Command) => void;

async function loadCommands(program: Command): Promise<void> {
  const dir = new URL('./commands/', import.meta.url);
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
    .sort();
  for (const file of files) {
    const mod = (await import(new URL(file, dir).href)) as { register?: RegisterCommand };
    mod.register?.(program);
  }
}

export async function main(argv: string[]): Promise<number> {
  const program = new Command('fuseload')
    .description('Build, publish, serve and load LoRA-merged ONNX pipelines')
    .version(TOOL_VERSION)
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({ outputError: (str, write) => write(str) });
  await loadCommands(program);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (isFuseloadError(e)) {
      process.stderr.write(`fuseload: ${e.message}\n`);
      return 1;
    }
    const err = e as NodeJS.ErrnoException;
    if (err?.code === 'ENOENT' && err.path) {
      process.stderr.write(`fuseload: ${err.path}: no such file or directory\n`);
      return 1;
    }
    process.stderr.write(`fuseload: internal error: ${err?.stack ?? String(e)}\n`);
    return 70;
  }
}
