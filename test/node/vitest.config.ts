import { defineProject } from 'vitest/config';

export default defineProject({
  test: {
    name: 'node',
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/node/**/*.test.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
