import { defineConfig } from 'vitest/config';

// Each suite under test/ owns its vitest config (node, workerd, Chromium, end-to-end);
// `vitest run` here runs them all.
export default defineConfig({
  test: {
    projects: ['test/*/vitest.config.ts'],
  },
});
