/**
 * `fuseload generate --origin <url> --model <name> [--tag <t> | --fingerprint <hex>]
 *   [--lora <url|path|sha256:hex>[:scale] …] [--device auto|cuda|cpu] [--seed N] [--width W] [--height H] --out image.png`
 *
 * `--lora` overlays a LoRA on the clean base at load time (a digest is fetched from --origin's
 * blobs); a PEFT file's lora_alpha comes from the adapter_config.json beside it.
 *
 * One image with the Node runtime. With --fingerprint and a warm PIPELINE_STORE it makes
 * no network request at all (the manifest and every blob come from the store).
 */
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SingleBar } from 'cli-progress';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { intIn } from '../cli-options.ts';
import { toDigest } from '../../common/digest.ts';
import { badInput } from '../../common/errors.ts';
import { parsePeftConfig } from '../../common/lora/adapter.ts';
import type { Device, LoraOverlay, ProgressEvent } from '../../common/pipeline.ts';
import { createNodeRuntime } from '../runtime/index.ts';
import { renderPng } from '../server/render.ts';

interface GenerateFlags {
  origin: string;
  model: string;
  tag?: string;
  fingerprint?: string;
  lora: LoraOverlay[];
  device: Device;
  seed: number;
  width: number;
  height: number;
  out: string;
}

/** `<url|path|sha256:hex>[:scale]`: the scale is a trailing `:<number>`, so URLs keep their colons. */
export function parseLora(value: string, previous: LoraOverlay[] = []): LoraOverlay[] {
  const m = /^(.*):(-?\d+(?:\.\d+)?)$/.exec(value);
  const source = m && m[1] !== 'sha256' ? m[1] : value;
  const scale = m && m[1] !== 'sha256' ? Number(m[2]) : 1;
  let lora: LoraOverlay;
  if (/^https?:\/\//.test(source)) lora = { url: source, scale };
  else if (/^(sha256:)?[0-9a-f]{64}$/.test(source)) lora = { digest: toDigest(source, '--lora'), scale };
  else if (existsSync(source)) {
    lora = { url: pathToFileURL(resolve(source)).href, scale };
    const alpha = peftAlpha(source);
    if (alpha !== undefined) lora.alpha = alpha;
  } else throw new InvalidArgumentError(`"${source}" is not a URL, a sha256 digest or an existing file`);
  return [...previous, lora];
}

/**
 * A PEFT adapter's lora_alpha lives in its adapter_config.json, found as `fuseload build` finds
 * it: `<stem>.adapter_config.json` beside the file, or `adapter_config.json` in its folder.
 */
function peftAlpha(path: string): number | undefined {
  const stem = basename(path).replace(/\.safetensors$/, '');
  for (const candidate of [join(dirname(path), `${stem}.adapter_config.json`), join(dirname(path), 'adapter_config.json')]) {
    if (!existsSync(candidate)) continue;
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(candidate, 'utf8'));
    } catch (e) {
      throw new InvalidArgumentError(`${basename(candidate)} is not valid JSON (${(e as Error).message})`);
    }
    const alpha = parsePeftConfig(json, basename(candidate)).lora_alpha;
    return alpha ? alpha : undefined;
  }
  return undefined;
}

function progressBar(): { onProgress?: (e: ProgressEvent) => void; stop(): void } {
  if (!process.stderr.isTTY) return { stop() {} };
  const bar = new SingleBar({ stream: process.stderr, format: 'load [{bar}] {percentage}% {phase}', hideCursor: true, clearOnComplete: true });
  let begun = false;
  return {
    onProgress(e) {
      const agg = e.aggregate;
      if (!agg || agg.total === 0) return;
      if (!begun) {
        bar.start(agg.total, agg.loaded, { phase: e.phase });
        begun = true;
      } else bar.update(agg.loaded, { phase: e.phase });
    },
    stop: () => begun && bar.stop(),
  };
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('generate one image with the Node runtime (disk cache, CUDA → CPU)')
    .requiredOption('--origin <url>', 'where artifacts are served (edge worker, bucket URL, static origin)')
    .requiredOption('--model <name>', 'model name')
    .option('--tag <tag>', 'tag to resolve (default latest)')
    .option('--fingerprint <hex>', 'pin the artifact (works offline with a warm store)')
    .option('--lora <src[:scale]>', 'load-time LoRA: URL, file or sha256 digest, with an optional :scale (repeatable)', parseLora, [])
    .addOption(new Option('--device <device>', 'execution provider').choices(['auto', 'cuda', 'cpu']).default('auto'))
    .option('--seed <n>', 'latent seed', intIn('--seed', 0, 2 ** 32 - 1), 0)
    .option('--width <px>', 'image width (multiple of 8)', intIn('--width', 8, 4096), 64)
    .option('--height <px>', 'image height (multiple of 8)', intIn('--height', 8, 4096), 64)
    .requiredOption('--out <file>', 'where to write the PNG')
    .action(async (flags: GenerateFlags) => {
      if (flags.tag && flags.fingerprint) throw badInput('--tag/--fingerprint', 'give one, not both');
      for (const side of ['width', 'height'] as const) {
        if (flags[side] % 8 !== 0) throw badInput(`--${side}`, `${flags[side]} is not a multiple of 8`);
      }
      // Provider fallbacks are reported in the result line (or the error), so only other
      // warnings (a corrupt cache entry, an uncached blob) are printed as they happen.
      const warn = (m: string) => {
        if (!/ could not run it \(/.test(m)) process.stderr.write(`fuseload: warning: ${m}\n`);
      };
      const runtime = createNodeRuntime({ warn });
      const bar = progressBar();
      let pipeline;
      try {
        pipeline = await runtime.loadPipeline({
          origin: flags.origin,
          model: flags.model,
          tag: flags.tag,
          fingerprint: flags.fingerprint,
          loras: flags.lora.length ? flags.lora : undefined,
          device: flags.device,
          onProgress: bar.onProgress,
        });
      } finally {
        bar.stop();
      }
      try {
        const png = await renderPng(pipeline, flags);
        await writeFile(flags.out, png);
        const { info } = pipeline;
        const fallbacks = info.fallbacks.map((f) => ` (${f.provider} passed over: ${f.reason})`).join('');
        process.stdout.write(
          `${flags.out}: ${flags.width}x${flags.height} ${info.fingerprint} provider=${info.provider} fetched=${info.bytesFetched}B${fallbacks}\n`,
        );
      } finally {
        await pipeline.dispose();
        await runtime.flush(); // the store is written behind the load: finish before exiting
      }
    });
}
