/**
 * The demo page on Vite's dev server, in this process, with the repository's vite.config.ts
 * (so ORT's runtime is served from this origin under /ort/, as for every page). Adds the
 * catalog beside the page and sends `/` to the page.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createServer, type Plugin, type ViteDevServer } from 'vite';
import { DEMO_CATALOG_PATH, DEMO_PAGE_PATH } from '../../web/demo/catalog.ts';

export interface DemoServerOptions {
  root: string;
  host: string;
  port: number;
  catalogFile: string;
  /** Vite's dependency cache; the work dir's own, so no other Vite run in the tree shares it. */
  cacheDir: string;
  /** Live reload on source edits; off for the end-to-end test, so an edit elsewhere cannot reload its page. */
  hmr: boolean;
}

function demoRoutes(catalogFile: string): Plugin {
  return {
    name: 'fuseload:demo-routes',
    configureServer(server) {
      server.middlewares.use(async (req, res, next) => {
        const path = req.url?.split('?')[0];
        if (path === '/' || path === '/index.html') {
          res.statusCode = 302;
          res.setHeader('Location', DEMO_PAGE_PATH);
          return res.end();
        }
        if (path !== DEMO_CATALOG_PATH) return next();
        try {
          const body = await readFile(catalogFile);
          res.setHeader('Content-Type', 'application/json');
          res.setHeader('Cache-Control', 'no-store');
          res.end(body);
        } catch (e) {
          res.statusCode = 500;
          res.end(`catalog: ${(e as Error).message}`);
        }
      });
    },
  };
}

export async function startDemoServer(options: DemoServerOptions): Promise<ViteDevServer> {
  const server = await createServer({
    configFile: join(options.root, 'vite.config.ts'),
    root: options.root,
    cacheDir: options.cacheDir,
    logLevel: 'warn',
    clearScreen: false,
    plugins: [demoRoutes(options.catalogFile)],
    server: {
      host: options.host,
      port: options.port,
      strictPort: true,
      open: false,
      hmr: options.hmr,
      // Local state and outputs change while the demo runs; none of it is page source.
      watch: options.hmr ? { ignored: ['**/.fuseload/**', '**/.wrangler/**', '**/test-results/**', '**/dist/**'] } : null,
    },
  });
  await server.listen();
  return server;
}
