import { defineProject } from 'vitest/config';

// The edge worker under a real `wrangler dev` (Node side: spawn, plain fetch).
export default defineProject({
  test: {
    name: 'edge-dev',
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/edge-dev/**/*.test.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 90_000,
  },
});
