#!/usr/bin/env node
// The CLI is TypeScript run through tsx's loader, so there is no build step between a change and `npx fuseload`.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../tools/cli.ts');
process.exitCode = await main(process.argv);
