import { defineProject } from 'vitest/config';

// `npm start` end to end: the real orchestrator (sample → build → publish → wrangler dev + Vite)
// driven by real headless Chromium. One file, one orchestrator, tests in order.
export default defineProject({
  test: {
    name: 'e2e',
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/e2e/**/*.test.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 90_000,
    fileParallelism: false,
  },
});
