#!/usr/bin/env node
/**
 * `npm run build` (and `prepack`): the installable package in dist/ — common/, tools/ and web/
 * compiled to JavaScript with declarations (tsconfig.build.json), plus the non-TypeScript
 * files the code reads at run time (tools/onnx/onnx.proto, …) beside them. Plain JavaScript, so
 * it needs nothing but TypeScript itself.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
const OUT = join(ROOT, 'dist');
/** Sources compiled, and where their assets are looked for. */
const SOURCES = ['common', 'tools', 'web'];
/** Not in the package (tsconfig.build.json's exclude, for assets). */
const SKIP = new Set(['tools/dev', 'web/demo']);
/** What code reads at run time besides modules (schemas, data); scripts and notes stay out. */
const ASSETS = /\.(proto|json|txt|bin)$/;

rmSync(OUT, { recursive: true, force: true });
const tsc = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc');
const result = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
if (result.status !== 0) {
  process.stderr.write(`build: tsc -p tsconfig.build.json failed (exit ${result.status ?? result.signal})\n`);
  process.exit(1);
}

let assets = 0;
function copyAssets(dir) {
  for (const name of readdirSync(join(ROOT, dir))) {
    const rel = `${dir}/${name}`;
    if (SKIP.has(rel)) continue;
    const path = join(ROOT, rel);
    if (statSync(path).isDirectory()) copyAssets(rel);
    else if (ASSETS.test(name)) {
      cpSync(path, join(OUT, rel));
      assets++;
    }
  }
}
for (const dir of SOURCES) copyAssets(dir);

// tsc rewrites `.ts` import specifiers but not module URLs: `new Worker(new URL('./worker.ts',
// import.meta.url))` must name the compiled file, so that a bundler (Vite, webpack) or a browser
// finds it beside the module.
let urls = 0;
function rewriteModuleUrls(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) rewriteModuleUrls(path);
    else if (name.endsWith('.js')) {
      const code = readFileSync(path, 'utf8');
      const out = code.replace(/new URL\((['"])(\.{1,2}\/[^'"]+)\.ts\1, import\.meta\.url\)/g, (_, q, stem) => {
        urls++;
        return `new URL(${q}${stem}.js${q}, import.meta.url)`;
      });
      if (out !== code) writeFileSync(path, out);
    }
  }
}
rewriteModuleUrls(OUT);

for (const entry of ['tools/cli.js', 'tools/runtime/index.js', 'web/index.js']) {
  if (!existsSync(join(OUT, entry))) {
    process.stderr.write(`build: dist/${entry} is missing after tsc\n`);
    process.exit(1);
  }
}
process.stdout.write(`build: ${relative(process.cwd(), OUT) || '.'} ready (${assets} asset file${assets === 1 ? '' : 's'} copied, ${urls} module URL${urls === 1 ? '' : 's'} renamed to .js)\n`);
