import { cloudflareTest } from '@cloudflare/vitest-pool-workers';
import { defineProject } from 'vitest/config';

const root = new URL('../..', import.meta.url).pathname;

// Tests run inside workerd with the R2 binding of the real wrangler.toml (local, per-test storage).
export default defineProject({
  plugins: [cloudflareTest({ wrangler: { configPath: `${root}wrangler.toml` } })],
  test: {
    name: 'edge',
    root,
    include: ['test/edge/**/*.test.ts'],
    testTimeout: 20_000,
  },
});
