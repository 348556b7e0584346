import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { build, type BuildProgress, DEFAULT_SHARD_SIZE } from '../build/build.ts';
import { parseLoraSource } from '../lora-source.ts';
import { byteCount } from '../cli-options.ts';


/**
 * One bar per phase on stderr (weights, then store); nothing when stderr is not a terminal or
 * --json is given. Hashing the base runs alongside the weights pass, so it has no bar of its own.
 */
function progressBars(enabled: boolean): { onProgress?: (p: BuildProgress) => void; stop: () => void } {
  if (!enabled) return { stop: () => {} };
  let bar: cliProgress.SingleBar | undefined;
  let phase = '';
  const stop = () => {
    bar?.stop();
    bar = undefined;
  };
  return {
    stop,
    onProgress: (p) => {
      if (p.phase === 'hash') return;
      if (p.phase !== phase) {
        stop();
        phase = p.phase;
        const format = p.phase === 'weights' ? 'weights {bar} {percentage}% {value}/{total} bytes' : 'store   {bar} {value}/{total} blobs';
        bar = new cliProgress.SingleBar({ stream: process.stderr, format, hideCursor: true }, cliProgress.Presets.shades_classic);
        bar.start(p.total, 0);
      }
      bar?.update(p.loaded);
    },
  };
}

export function register(program: Command): void {
  program
    .command('build')
    .description('merge LoRAs into a base pipeline or ONNX model and write a fingerprinted artifact')
    .requiredOption('--base <dir|model.onnx|s3://…|https://…>', 'base: a diffusers ONNX directory (model_index.json + component folders), a .onnx file (external data beside it), or an s3:// / http(s) URL')
    .option('--lora <file|url[:scale]>', 'LoRA safetensors (PEFT: <stem>.adapter_config.json or adapter_config.json beside it), optional scale (default 1); repeatable', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .requiredOption('--name <model>', 'model name')
    .requiredOption('--out <dir>', 'artifact directory (missing, empty or an artifact directory)')
    .addOption(new Option('--shard-size <bytes>', 'largest weight shard (e.g. 64MiB)').argParser(byteCount('--shard-size')).default(DEFAULT_SHARD_SIZE))
    .option('--strict', 'fail when any LoRA key matches no weight', false)
    .option('--json', 'print a JSON report instead of the fingerprint', false)
    .action(async (opts: { base: string; lora: string[]; name: string; out: string; shardSize: number; strict: boolean; json: boolean }) => {
      const loras = opts.lora.map((arg) => {
        const { source, scale } = parseLoraSource(arg);
        return { path: source, scale };
      });
      const shardSize = opts.shardSize;
      const bars = progressBars(!opts.json && !!process.stderr.isTTY);
      let report;
      try {
        report = await build({ base: opts.base, loras, name: opts.name, out: opts.out, shardSize, strict: opts.strict, onProgress: bars.onProgress });
      } finally {
        bars.stop();
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
        return;
      }
      for (const l of report.loras) {
        process.stderr.write(`${l.source} (${l.format}, scale ${l.scale}): ${l.matched} keys matched, ${l.unmatched} unmatched${l.unmatched ? ` (first: ${l.unmatchedKeys[0]})` : ''}\n`);
      }
      if (report.cached) process.stderr.write('build cache hit\n');
      process.stdout.write(`${report.fingerprint}\n`);
    });
}
