#!/usr/bin/env node
// The `fuseload` CLI. An installed package runs its compiled JavaScript (dist/, built on pack);
// a checkout runs its TypeScript source through tsx, so there is no build step between a change
// and `npx fuseload` (and a stale dist/ never shadows the source).
import { existsSync } from 'node:fs';

const source = new URL('../tools/cli.ts', import.meta.url);
let main;
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(source.href));
} else {
  ({ main } = await import('../dist/tools/cli.js'));
}
process.exitCode = await main(process.argv);
