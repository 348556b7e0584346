/**
 * Build-time (Node) Vite plugin: serves onnxruntime-web's runtime files under `/ort/`
 * in dev and emits them there in a build, so pages load ORT from their own origin and
 * never from a CDN. Pair with the ORT engine's default `wasmPaths` (`/ort/`).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Plugin } from 'vite';

/** The runtimes web/ort-engine.ts loads: the JSPI build where the browser has JSPI, the asyncify one elsewhere. */
const RUNTIME_FILE = /^ort-wasm-simd-threaded\.(jspi|asyncify)\.(wasm|mjs)$/;

export function ortDistDir(): string {
  // The package's `require` entry sits in dist/, beside the runtime files.
  return dirname(createRequire(import.meta.url).resolve('onnxruntime-web'));
}

export function ortAssets(base = 'ort'): Plugin {
  const dist = ortDistDir();
  const files = readdirSync(dist).filter((f) => RUNTIME_FILE.test(f));
  return {
    name: 'fuseload:ort-assets',
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        const name = req.url?.split('?')[0].replace(`/${base}/`, '');
        if (!req.url?.startsWith(`/${base}/`) || !name || !files.includes(name)) return next();
        res.setHeader('Content-Type', name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript');
        res.end(readFileSync(join(dist, name)));
      });
    },
    generateBundle() {
      for (const name of files) this.emitFile({ type: 'asset', fileName: `${base}/${name}`, source: readFileSync(join(dist, name)) });
    },
  };
}
