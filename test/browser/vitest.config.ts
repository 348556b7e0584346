import { defineProject } from 'vitest/config';

// Real headless Chromium (playwright-core) driven from Node; one browser per file.
export default defineProject({
  test: {
    name: 'browser',
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/browser/**/*.test.ts'],
    environment: 'node',
    testTimeout: 90_000,
    hookTimeout: 120_000,
    // Chromium's SwiftShader WebGPU wants the CPU to itself: one file at a time.
    fileParallelism: false,
  },
});
