/**
 * `fuseload` CLI. Each subcommand lives in tools/commands/<name>.ts and exports
 * `register(program)`; this file only wires them up and turns user mistakes into one line.
 */
import { readdirSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { userFacingError } from '../common/errors.ts';
import { TOOL_VERSION } from './version.ts';

export type RegisterCommand = (program: Command) => void;

async function loadCommands(program: Command): Promise<void> {
  const dir = new URL('./commands/', import.meta.url);
  // .ts from source (tsx), .js from the compiled package (dist/); never declarations.
  const files = readdirSync(dir)
    .filter((f) => /\.(ts|js)$/.test(f) && !/\.d\.ts$|\.test\.ts$/.test(f))
    .sort();
  for (const file of files) {
    const mod = (await import(new URL(file, dir).href)) as { register?: RegisterCommand };
    mod.register?.(program);
  }
}

/**
 * A reader that stops early (`fuseload inspect … | head`) closes our stdout: that ends the
 * command quietly, as it ends `git log | head`, instead of an unhandled EPIPE with a stack.
 */
let pipesWatched = false;
function quietOnClosedPipe(): void {
  // Once per process: main() also runs in-process (tests), many times.
  if (pipesWatched) return;
  pipesWatched = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE') throw e;
      process.exit(process.exitCode ?? 0);
    });
  }
}

export async function main(argv: string[]): Promise<number> {
  quietOnClosedPipe();
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
    // A user's mistake or the system's answer (ENOENT, EISDIR, EACCES, …): one line, no stack.
    const user = userFacingError(e);
    if (user) {
      process.stderr.write(`fuseload: ${user.message.replace(/\s*\n\s*/g, ' ')}\n`);
      return 1;
    }
    process.stderr.write(`fuseload: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 70;
  }
}
