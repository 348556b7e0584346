/**
 * The installable package, as a user gets it: `npm pack` (which builds dist/), installed into a
 * fresh project from the local npm cache, then used by plain Node (no tsx): `fuseload/node`
 * loads a graph artifact from a local origin and runs it, and the `fuseload` bin answers --help;
 * and by a Vite app: a page importing `fuseload/web` (on the main thread and in its Web Worker),
 * built with Vite and `fuseload/vite`, loads and runs the same artifact in headless Chromium.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyArtifact, type WrittenArtifact } from '../support/node-onnx.ts';
import { launchChromium } from '../support/chromium.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';
import { startOrigin } from '../support/origin.ts';
import { REPO_ROOT } from '../support/paths.ts';

const run = promisify(execFile);
/** Plain Node and npm: no tsx loader, no CUDA download, no ORT install script. */
const env = (() => {
  const e: NodeJS.ProcessEnv = { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_audit: 'false', npm_config_fund: 'false' };
  delete e.NODE_OPTIONS;
  return e;
})();

let work: string;
let consumer: string;
let tarball: string;
let artifact: WrittenArtifact;
let origin: CountingOrigin;
let packed: { files: { path: string }[] };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-package-'));
  // npm pack runs prepack (npm run build): dist/ is compiled from this checkout.
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: REPO_ROOT, env, maxBuffer: 64 << 20 });
  const reports = JSON.parse(stdout.slice(stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  packed = reports[0];
  tarball = join(work, reports[0].filename);

  consumer = join(work, 'consumer');
  await mkdir(consumer);
  await writeFile(
    join(consumer, 'package.json'),
    JSON.stringify({ name: 'consumer', private: true, type: 'module', allowScripts: { 'onnxruntime-node': false, esbuild: true } }),
  );
  // From the local npm cache (CI's `npm ci` filled it): the package and both optional runtimes.
  const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { peerDependencies: Record<string, string> };
  const runtimes = ['onnxruntime-node', 'onnxruntime-web'].map((name) => `${name}@${pkg.peerDependencies[name]}`);
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball, ...runtimes], { cwd: consumer, env, maxBuffer: 64 << 20 });

  artifact = await writeTinyArtifact(join(work, 'origin'), { name: 'tiny' });
  origin = await startCountingOrigin(join(work, 'origin'));
}, 180_000);

afterAll(async () => {
  await origin?.close();
  await rm(work, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('ships compiled JavaScript with declarations, and no TypeScript sources or tests', () => {
    const paths = packed.files.map((f) => f.path);
    expect(paths).toContain('dist/tools/runtime/index.js');
    expect(paths).toContain('dist/tools/runtime/index.d.ts');
    expect(paths).toContain('dist/web/index.js');
    expect(paths).toContain('dist/tools/onnx/onnx.proto');
    expect(paths).toContain('bin/fuseload.js');
    expect(paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))).toEqual([]);
    expect(paths.filter((p) => p.startsWith('test/') || p.startsWith('tools/'))).toEqual([]);
  });

  it('every export resolves to files that exist, types and code', async () => {
    const installed = join(consumer, 'node_modules', 'fuseload');
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as { exports: Record<string, string | Record<string, string>> };
    for (const [subpath, target] of Object.entries(manifest.exports)) {
      for (const file of typeof target === 'string' ? [target] : Object.values(target)) {
        const concrete = file.replace('*', subpath.includes('*') ? 'sample-input' : '');
        expect(existsSync(join(installed, concrete)), `${subpath} → ${concrete}`).toBe(true);
      }
    }
  });

  it('installs onnxruntime-node without its CUDA download (ONNXRUNTIME_NODE_INSTALL=skip)', () => {
    const bin = join(consumer, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', process.platform, process.arch);
    expect(existsSync(join(bin, 'onnxruntime_binding.node'))).toBe(true);
    expect(existsSync(join(bin, 'libonnxruntime_providers_cuda.so'))).toBe(false);
  });

  it('plain Node imports fuseload/node and loads and runs a graph artifact from an origin', async () => {
    const script = join(consumer, 'load.mjs');
    await writeFile(
      script,
      `import { createNodeRuntime } from 'fuseload/node';
       import { sampleFeeds } from 'fuseload/common/sample-input';
       const runtime = createNodeRuntime({ storeRoot: process.argv[3], warn: () => {} });
       const p = await runtime.loadPipeline({ origin: process.argv[2], model: 'tiny', tag: 'latest', device: 'cpu' });
       const out = await p.run(sampleFeeds({ seed: 1, width: 16, height: 8 }));
       process.stdout.write(JSON.stringify({ fingerprint: p.info.fingerprint, provider: p.info.provider, dims: out.image.dims }));
       await p.dispose();
       await runtime.flush();`,
    );
    const { stdout } = await run(process.execPath, [script, origin.url, join(work, 'store')], { cwd: consumer, env });
    expect(JSON.parse(stdout)).toEqual({ fingerprint: artifact.fingerprint, provider: 'cpu', dims: [1, 3, 8, 16] });
  });

  it('the installed `fuseload` bin runs the compiled CLI: --help and --version', async () => {
    const bin = join(consumer, 'node_modules', '.bin', 'fuseload');
    const help = await run(bin, ['--help'], { cwd: consumer, env });
    expect(help.stdout).toMatch(/^Usage: fuseload /);
    for (const command of ['build', 'publish', 'verify', 'serve', 'cache']) expect(help.stdout).toContain(command);
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect((await run(bin, ['--version'], { cwd: consumer, env })).stdout.trim()).toBe(pkg.version);
  });

  it('a Vite app imports fuseload/web, builds, and loads and runs the artifact in Chromium (main thread and worker)', async () => {
    const app = join(consumer, 'app');
    await mkdir(app);
    await writeFile(join(app, 'index.html'), '<!doctype html><meta charset="utf-8"><script type="module" src="./main.js"></script>\n');
    await writeFile(
      join(app, 'main.js'),
      `import { createWorkerLoader, loadPipeline } from 'fuseload/web';
       import { sampleFeeds } from 'fuseload/common/sample-input';
       const feeds = () => sampleFeeds({ seed: 1, width: 16, height: 8 });
       const summary = async (p) => {
         const out = await p.run(feeds());
         const r = { fingerprint: p.info.fingerprint, provider: p.info.provider, dims: out.image.dims };
         await p.dispose();
         return r;
       };
       try {
         const options = { origin: location.origin, model: 'tiny', tag: 'latest', device: 'wasm' };
         const main = await summary(await loadPipeline(options));
         const workerLoader = createWorkerLoader();
         const worker = await summary(await workerLoader.loadPipeline(options));
         workerLoader.terminate();
         window.result = { main, worker };
       } catch (e) {
         window.result = { error: String(e?.message ?? e) };
       }`,
    );
    await writeFile(
      join(consumer, 'vite.config.mjs'),
      `import { ortAssets } from 'fuseload/vite';
       export default { root: 'app', base: '/app/', logLevel: 'warn', plugins: [ortAssets()], build: { outDir: '../app-dist', emptyOutDir: true } };`,
    );
    // The checkout's Vite (the consumer would have its own) run as its CLI, in the consumer.
    await run(process.execPath, [join(REPO_ROOT, 'node_modules/vite/bin/vite.js'), 'build'], { cwd: consumer, env, maxBuffer: 64 << 20 });
    const dist = join(consumer, 'app-dist');
    // The app at /app/, ORT's runtime (emitted by fuseload/vite) at the engine's default /ort/,
    // the artifact at / — one origin, as a deployed app with its own artifact host would be.
    const site = await startOrigin({ root: join(work, 'origin'), mounts: { '/app/': dist, '/ort/': join(dist, 'ort') } });
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${site.url}/app/index.html`);
      await page.waitForFunction(() => 'result' in window, null, { timeout: 60_000 });
      const result = await page.evaluate(() => (window as unknown as { result: unknown }).result);
      const expected = { fingerprint: artifact.fingerprint, provider: 'wasm', dims: [1, 3, 8, 16] };
      expect(result).toEqual({ main: expected, worker: expected });
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      await site.close();
    }
  }, 120_000);
});
