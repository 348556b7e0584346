/**
 * Vite for the browser pages (the demo, the Chromium test harness). Each page is one entry
 * in `pages`; ORT's runtime files are served from this origin under /ort/.
 */
import { resolve } from 'node:path';
import { defaultClientConditions, defineConfig } from 'vite';
import { ortAssets } from './web/vite-plugin-ort.ts';

const root = import.meta.dirname;

/** Page name → its HTML file. Add a page here to build it. */
export const pages: Record<string, string> = {
  harness: resolve(root, 'test/browser/harness/index.html'),
  demo: resolve(root, 'web/demo/index.html'),
};

export default defineConfig({
  root,
  // Relative asset URLs, so a built page works from any static server and path.
  base: './',
  plugins: [ortAssets()],
  // ORT's "extern wasm" build loads its runtime from wasmPaths (/ort/) instead of carrying a
  // second copy that the bundler would emit again as an asset.
  resolve: { conditions: ['onnxruntime-web-use-extern-wasm', ...defaultClientConditions] },
  // The dev pre-bundler rewrites ORT's `new URL(…, import.meta.url)`; we serve its files ourselves.
  optimizeDeps: { exclude: ['onnxruntime-web'] },
  // The loader's Web Worker (web/worker.ts, started by createWorkerLoader) is a module worker: it
  // shares chunks with the page and keeps ORT's dynamic imports.
  worker: { format: 'es' },
  build: {
    target: 'es2022',
    outDir: 'dist/web',
    emptyOutDir: true,
    chunkSizeWarningLimit: 4096,
    rollupOptions: { input: pages },
  },
});
