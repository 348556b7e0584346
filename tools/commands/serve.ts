/** `fuseload serve --origin <url> [--port 8080] [--host 127.0.0.1]`: the generation server. */
import { type Command, Option } from 'commander';
import { intIn, positiveInt } from '../cli-options.ts';
import type { Device } from '../../common/pipeline.ts';
import { DEFAULT_LIMITS } from '../server/limits.ts';

interface ServeFlags {
  origin: string;
  port: number;
  host: string;
  device: Device;
  concurrency: number;
  queue: number;
  maxSide: number;
  maxPipelines: number;
  pixelBudget?: number;
  timeout: number;
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('serve POST /v1/generate and GET /healthz with the Node runtime')
    .requiredOption('--origin <url>', 'where artifacts are served (no credentials in it)', process.env.FUSELOAD_ORIGIN)
    .option('--port <n>', 'port (0 picks a free one)', intIn('--port', 0, 65535), Number(process.env.PORT ?? 8080))
    .option('--host <addr>', 'address to bind', '127.0.0.1')
    .addOption(new Option('--device <device>', 'execution provider').choices(['auto', 'cuda', 'cpu']).default('auto'))
    .option('--concurrency <n>', 'generations at once', intIn('--concurrency', 1, 64), DEFAULT_LIMITS.concurrency)
    .option('--queue <n>', 'generations allowed to wait', intIn('--queue', 0, 1024), DEFAULT_LIMITS.queue)
    .option('--max-side <px>', 'largest width/height', intIn('--max-side', 8, 4096), DEFAULT_LIMITS.maxSide)
    .option('--max-pipelines <n>', 'pipelines (model × LoRAs × scales) kept warm, least recently used dropped', intIn('--max-pipelines', 1, 256), DEFAULT_LIMITS.maxPipelines)
    .option('--pixel-budget <n>', 'pixels (width × height) generating at once; larger requests get 413 (default: max-side² × concurrency)', positiveInt('--pixel-budget'))
    .option('--timeout <s>', 'seconds a generation may take, queue wait and load included, before 504', positiveInt('--timeout'), DEFAULT_LIMITS.generationTimeoutMs / 1000)
    .action(async (flags: ServeFlags) => {
      // Checked before anything starts: a credential in the origin would end up in logs.
      const { checkOrigin } = await import('../server/app.ts');
      const origin = checkOrigin(flags.origin);
      // The runtime (onnxruntime-node) and the server load only when serving, not for --help.
      const [{ createNodeRuntime }, { installedProviders }, { listen }] = await Promise.all([
        import('../runtime/index.ts'),
        import('../runtime/ort-engine.ts'),
        import('../server/node.ts'),
      ]);
      const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
      const runtime = createNodeRuntime({ warn: (m) => log(`warning: ${m}`) });
      const server = await listen({
        origin,
        loadPipeline: runtime.loadPipeline,
        device: flags.device,
        providers: installedProviders(),
        limits: {
          concurrency: flags.concurrency,
          queue: flags.queue,
          maxSide: flags.maxSide,
          maxPipelines: flags.maxPipelines,
          pixelBudget: flags.pixelBudget ?? 0,
          generationTimeoutMs: flags.timeout * 1000,
        },
        log,
        port: flags.port,
        host: flags.host,
      });
      // Tests and supervisors read the URL from this line.
      process.stdout.write(`fuseload serve: listening on ${server.url} (store ${runtime.store.root})\n`);
      await new Promise<void>((resolve) => {
        const stop = () => void server.close().finally(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
