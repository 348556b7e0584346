/**
 * Builds the browser pages (vite.config.ts at the repository root) into a temp directory,
 * ready for a static origin: `<dir>/test/browser/harness/index.html`, ORT's runtime under
 * `<dir>/ort/`. A build, not the dev server: nothing is compiled while a test waits.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './paths.ts';
import type { BrowserContext, Page } from 'playwright-core';
import { build } from 'vite';

export { REPO_ROOT } from './paths.ts';

/** Page name (a key of `pages` in vite.config.ts) → its URL path once built. */
export const PAGE_PATHS: Record<string, string> = {
  harness: '/test/browser/harness/index.html',
};

export async function buildPages(pages: string[] = ['harness']): Promise<string> {
  const { pages: all } = (await import('../../vite.config.ts')) as { pages: Record<string, string> };
  const outDir = await mkdtemp(join(tmpdir(), 'fuseload-pages-'));
  const input = Object.fromEntries(pages.map((p) => [p, all[p]]));
  await build({
    configFile: join(REPO_ROOT, 'vite.config.ts'),
    logLevel: 'warn',
    build: { outDir, emptyOutDir: true, rollupOptions: { input } },
  });
  return outDir;
}

/** A new page in `context` on the built harness at `siteUrl`, once the harness says it is ready. */
export async function openHarness(context: BrowserContext, siteUrl: string): Promise<Page> {
  const page = await context.newPage();
  await page.goto(siteUrl + PAGE_PATHS.harness);
  await page.waitForFunction(() => document.title === 'harness ready');
  return page;
}
