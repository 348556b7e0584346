import { defineProject } from 'vitest/config';

export default defineProject({
  test: {
    name: 'publish',
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/publish/**/*.test.ts'],
    setupFiles: ['test/publish/setup.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
