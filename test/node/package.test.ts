/**
 * The installable package, as a user gets it: `npm pack` (which builds dist/), installed into a
 * fresh project from the local npm cache, then used by plain Node (no tsx): `fuseload/node`
 * loads a graph artifact from a local origin and runs it, and the `fuseload` bin answers --help.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyArtifact, type WrittenArtifact } from '../support/node-onnx.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';
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
  // Offline, from the local npm cache. onnxruntime-node by the tarball URL this checkout's lock
  // resolved (the cache holds it; its registry document is cached in a shape --offline skips).
  const lock = JSON.parse(await readFile(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { resolved?: string }> };
  const ort = lock.packages['node_modules/onnxruntime-node'].resolved!;
  const install = (mode: string, ortSpec: string) =>
    run('npm', ['install', mode, '--no-audit', '--no-fund', tarball, ortSpec], { cwd: consumer, env, maxBuffer: 64 << 20 });
  const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { peerDependencies: Record<string, string> };
  await install('--offline', ort).catch(() => install('--prefer-offline', `onnxruntime-node@${pkg.peerDependencies['onnxruntime-node']}`));

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
    const started = performance.now();
    const help = await run(bin, ['--help'], { cwd: consumer, env });
    const seconds = (performance.now() - started) / 1000;
    expect(help.stdout).toMatch(/^Usage: fuseload /);
    for (const command of ['build', 'publish', 'verify', 'serve', 'cache']) expect(help.stdout).toContain(command);
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect((await run(bin, ['--version'], { cwd: consumer, env })).stdout.trim()).toBe(pkg.version);
    // The target is 0.3 s on an idle machine; the bound here leaves room for a loaded CI box.
    process.stdout.write(`fuseload --help from the installed package: ${seconds.toFixed(2)} s\n`);
    expect(seconds).toBeLessThan(3);
  });
});
