/**
 * `npm start`: the whole main job on the built-in sample, on this machine, offline.
 *
 *   sample (the trained text-to-image pipeline, tools/sample) → build (base + one LoRA-merged
 *   variant per LoRA) → publish --local with tags → catalog
 *   → wrangler dev (the edge worker over that local R2 state) + Vite (the demo page)
 *
 * One line per step with its time. Ctrl-C (SIGINT) or SIGTERM stops everything it started.
 * Settings (environment):
 *   FUSELOAD_EDGE_PORT   edge worker port, default 8787
 *   FUSELOAD_DEMO_PORT   demo page port, default 5173
 *   FUSELOAD_DEV_DIR     work directory, default .fuseload/dev
 *   FUSELOAD_PERSIST_TO  wrangler state, default .wrangler/state (where `fuseload publish --local` writes)
 *   FUSELOAD_HMR=0       no live reload of the page on source edits
 *   FUSELOAD_SAMPLE_FROM a pipeline laid out as tools/sample/pipeline to use instead (default that one)
 *   PIPELINE_STORE       the build cache (default ~/.cache/fuseload)
 */
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import type { ViteDevServer } from 'vite';
import { formatBytes } from '../commands/publish.ts';
import { DEMO_CATALOG_PATH, DEMO_PAGE_PATH } from '../../web/demo/catalog.ts';
import { startDemoServer } from './demo-server.ts';
import { buildVariants, demoCatalog, DEMO_MODEL, publishVariants, type PrepareDirs, writeCatalog, writeDemoSample } from './prepare.ts';
import { assertPortFree, freePort, type GroupChild, spawnGroup, waitForHttp } from './process-group.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const HOST = '127.0.0.1';

/** A settings mistake: one line naming the variable, exit 2, before anything starts. */
class SettingError extends Error {}

function portFrom(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw.trim());
  if (!/^\d+$/.test(raw.trim()) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new SettingError(`${name}=${JSON.stringify(raw.slice(0, 40))} is not a port number (1-65535; default ${fallback})`);
  }
  return port;
}

function readConfig() {
  const hmr = (process.env.FUSELOAD_HMR ?? '').trim().toLowerCase();
  if (!['', '0', '1', 'true', 'false', 'yes', 'no', 'on', 'off'].includes(hmr)) {
    throw new SettingError(`FUSELOAD_HMR=${JSON.stringify(process.env.FUSELOAD_HMR!.slice(0, 40))}: want 0 or 1`);
  }
  const config = {
    edgePort: portFrom('FUSELOAD_EDGE_PORT', 8787),
    demoPort: portFrom('FUSELOAD_DEMO_PORT', 5173),
    work: resolve(ROOT, process.env.FUSELOAD_DEV_DIR || '.fuseload/dev'),
    persistTo: resolve(ROOT, process.env.FUSELOAD_PERSIST_TO || '.wrangler/state'),
    hmr: !['0', 'false', 'no', 'off'].includes(hmr),
  };
  if (config.edgePort === config.demoPort) {
    throw new SettingError(`FUSELOAD_EDGE_PORT and FUSELOAD_DEMO_PORT are both ${config.edgePort}; give them different ports`);
  }
  return config;
}

let config: ReturnType<typeof readConfig>;
try {
  config = readConfig();
} catch (e) {
  if (!(e instanceof SettingError)) throw e;
  process.stderr.write(`fuseload start: ${e.message}\n`);
  process.exit(2);
}
const dirs: PrepareDirs = { work: config.work, persistTo: config.persistTo, sampleFrom: process.env.FUSELOAD_SAMPLE_FROM || undefined };
const edgeOrigin = `http://${HOST}:${config.edgePort}`;
// `localhost`, not the IP: browsers treat it as a secure context, which WebGPU needs.
const pageUrl = `http://localhost:${config.demoPort}${DEMO_PAGE_PATH}`;

const started = performance.now();
/** Paths inside the repository relative to it, others absolute. */
const shown = (path: string) => {
  const rel = relative(process.cwd(), path);
  return rel.startsWith('..') ? path : rel || '.';
};
const short = (digest: string) => `${digest.slice(7, 15)}…`;

/** Runs one step and prints `  <label> <detail>  <seconds>`. */
async function step<T>(label: string, run: () => Promise<T>, detail: (value: T) => string): Promise<T> {
  const t = performance.now();
  const value = await run();
  const seconds = ((performance.now() - t) / 1000).toFixed(2).padStart(6);
  process.stdout.write(`  ${label.padEnd(8)} ${detail(value).padEnd(72)} ${seconds} s\n`);
  return value;
}

let edge: GroupChild | null = null;
let demo: ViteDevServer | null = null;
let stopping: Promise<void> | null = null;

function shutdown(reason: string, code: number): Promise<void> {
  stopping ??= (async () => {
    process.stdout.write(`stopping (${reason})…\n`);
    await Promise.allSettled([demo?.close(), edge?.stop()]);
    process.stdout.write('stopped: wrangler dev and the demo server are down\n');
    process.exit(code);
  })();
  return stopping;
}

process.on('SIGINT', () => void shutdown('SIGINT', 130));
process.on('SIGTERM', () => void shutdown('SIGTERM', 143));
// Whatever way this process ends, the edge worker's group goes with it.
process.on('exit', () => edge?.killNow());

async function startEdge(): Promise<GroupChild> {
  const wrangler = join(dirname(createRequire(import.meta.url).resolve('wrangler/package.json')), 'bin', 'wrangler.js');
  const args = [wrangler, 'dev', '--port', String(config.edgePort), '--ip', HOST, '--persist-to', config.persistTo,
    // The default inspector port 9229 would clash with a debugger or a second checkout.
    '--inspector-port', String(await freePort(HOST)),
    '--show-interactive-dev-session=false', '--log-level', 'warn'];
  edge = spawnGroup(process.execPath, args, {
    cwd: ROOT,
    // Offline and quiet (DESIGN.md); CI=1 keeps wrangler from prompting; its debug logs stay in the work dir.
    env: {
      ...process.env,
      WRANGLER_SEND_METRICS: 'false',
      CLOUDFLARE_CF_FETCH_ENABLED: 'false',
      CI: '1',
      WRANGLER_LOG_PATH: process.env.WRANGLER_LOG_PATH ?? join(config.work, 'wrangler-logs'),
    },
    // Its goodbye ("Logs were written to …") is noise once we are the ones stopping it.
    onLine: (line) => void (stopping || process.stdout.write(`  [edge] ${line}\n`)),
  });
  const group = edge;
  // Ready once the worker answers with the published tag: the same state is served.
  await waitForHttp(`${edgeOrigin}/tags/${DEMO_MODEL}/latest.json`, (s) => s === 200, group, 60_000, 'wrangler dev');
  return group;
}

async function main(): Promise<void> {
  process.stdout.write(`fuseload start: the sample end to end (work dir ${shown(config.work)}, wrangler state ${shown(config.persistTo)})\n`);
  await assertPortFree(config.edgePort, HOST, 'FUSELOAD_EDGE_PORT');
  await assertPortFree(config.demoPort, HOST, 'FUSELOAD_DEMO_PORT');

  const sample = await step('sample', () => writeDemoSample(dirs), (s) =>
    `${shown(s.dir)}: ${s.files.filter((f) => f.endsWith('/model.onnx')).map((f) => f.split('/')[0]).join(', ')} + LoRAs ${s.loras.map((l) => l.name).join(', ')}`,
  );
  const builds = await step('build', () => buildVariants(dirs, sample), (bs) =>
    `${bs.length} artifacts (${bs.filter((b) => b.report.cached).length} from the build cache): ${bs.map((b) => `${b.tag} ${short(b.report.fingerprint)}`).join(', ')}`,
  );
  await step('publish', () => publishVariants(dirs, builds), (reports) => {
    const uploaded = reports.reduce((n, r) => n + r.uploaded.length, 0);
    const bytes = reports.reduce((n, r) => n + r.bytesUploaded, 0);
    const skipped = reports.reduce((n, r) => n + r.skipped.length, 0);
    return `tags ${builds.map((b) => b.tag).join(', ')}: uploaded ${uploaded} (${formatBytes(bytes)}), skipped ${skipped} already there`;
  });
  await step('catalog', async () => writeCatalog(dirs, await demoCatalog(sample, edgeOrigin, builds)), (file) => `${shown(file)} → ${DEMO_CATALOG_PATH}`);

  // The two servers start side by side; each line prints when its server answers.
  await Promise.all([
    step('edge', startEdge, (g) => `${edgeOrigin} (wrangler dev, pid ${g.child.pid})`),
    step('demo', async () => {
      demo = await startDemoServer({ root: ROOT, host: HOST, port: config.demoPort, catalogFile: join(config.work, 'catalog.json'), cacheDir: join(config.work, 'vite'), hmr: config.hmr });
      await waitForHttp(`http://${HOST}:${config.demoPort}${DEMO_PAGE_PATH}`, (s) => s === 200, null, 30_000, 'vite');
    }, () => `${pageUrl} (vite${config.hmr ? '' : ', no live reload'})`),
  ]);
  process.stdout.write(`ready in ${((performance.now() - started) / 1000).toFixed(1)} s: open ${pageUrl}  (Ctrl-C stops everything)\n`);

  // A server that dies on its own takes the rest down: a half-running demo only confuses.
  edge!.child.once('exit', (code, signal) => {
    if (stopping) return;
    process.stderr.write(`wrangler dev exited (${code ?? signal}):\n${edge!.tail()}\n`);
    void shutdown('wrangler dev exited', 1);
  });
}

main().catch((e: unknown) => {
  process.stderr.write(`fuseload start: ${e instanceof Error ? e.message : String(e)}\n`);
  void shutdown('start failed', 1);
});
