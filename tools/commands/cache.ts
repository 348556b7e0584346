/** `fuseload cache ls | prune [--max-bytes N] | verify`: the disk store under PIPELINE_STORE. */
import { type Command } from 'commander';
import { byteCount } from '../cli-options.ts';
import { badInput } from '../../common/errors.ts';
import { defaultMaxBytes, defaultStoreRoot, DiskStore } from '../store/disk-store.ts';

export function register(program: Command): void {
  const cache = program.command('cache').description(`inspect and maintain the disk store (PIPELINE_STORE, default ${'~/.cache/fuseload'})`);

  cache
    .command('ls')
    .description('list stored blobs, least recently used first')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const store = new DiskStore(defaultStoreRoot());
      await store.check();
      const entries = [];
      for await (const e of store.entries()) entries.push(e);
      entries.sort((a, b) => a.lastUsed - b.lastUsed);
      const bytes = entries.reduce((n, e) => n + e.size, 0);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ root: store.root, blobs: entries.length, bytes, maxBytes: defaultMaxBytes() ?? null, entries })}\n`);
        return;
      }
      for (const e of entries) process.stdout.write(`${e.digest}  ${String(e.size).padStart(12)}  ${new Date(e.lastUsed).toISOString()}\n`);
      process.stdout.write(`${entries.length} blobs, ${bytes} bytes in ${store.root}\n`);
    });

  cache
    .command('prune')
    .description('evict least recently used blobs down to a byte budget')
    .option('--max-bytes <n>', 'budget (default PIPELINE_STORE_MAX_BYTES)', byteCount('--max-bytes', 0))
    .action(async (flags: { maxBytes?: number }) => {
      const max = flags.maxBytes ?? defaultMaxBytes();
      if (max === undefined) throw badInput('--max-bytes', 'give a budget (or set PIPELINE_STORE_MAX_BYTES)');
      const store = new DiskStore(defaultStoreRoot(), {});
      await store.check();
      const result = await store.prune(max);
      process.stdout.write(`removed ${result.removed.length} blobs (${result.freedBytes} bytes); ${result.keptBytes} bytes kept\n`);
    });

  cache
    .command('verify')
    .description('re-hash every blob; corrupt ones are removed (exit 1 if any were)')
    .action(async () => {
      const store = new DiskStore(defaultStoreRoot(), {});
      await store.check();
      const result = await store.verifyAll();
      for (const d of result.removed) process.stdout.write(`corrupt, removed: ${d}\n`);
      process.stdout.write(`${result.ok}/${result.checked} blobs intact\n`);
      if (result.removed.length) process.exitCode = 1;
    });
}
