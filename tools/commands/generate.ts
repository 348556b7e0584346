/**
 * `fuseload generate --origin <url> --model <name> [--tag <t> | --fingerprint <hex>]
 *   [--prompt "…"] [--negative-prompt "…"] [--steps N] [--guidance G] [--scheduler S]
 *   [--lora <url|path|sha256:hex>[:scale] …] [--device auto|cuda|cpu] [--seed N] [--width W] [--height H] --out image.png`
 *
 * A text-to-image pipeline generates from the prompt (docs/generation.md); a `graph` artifact
 * renders the sample graph's image from the seed, as before.
 *
 * `--lora` overlays a LoRA on the clean base at load time (a digest is fetched from --origin's
 * blobs); a PEFT file's lora_alpha comes from the adapter_config.json beside it.
 *
 * One image with the Node runtime. With --fingerprint and a warm PIPELINE_STORE it makes
 * no network request at all (the manifest and every blob come from the store).
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SingleBar } from 'cli-progress';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { intIn } from '../cli-options.ts';
import { toDigest } from '../../common/digest.ts';
import { badInput } from '../../common/errors.ts';
import { GENERATE_LIMITS } from '../../common/generate/options.ts';
import { SCHEDULER_NAMES, type SchedulerName } from '../../common/generate/schedulers/index.ts';
import type { Device, LoraOverlay, ProgressEvent } from '../../common/pipeline.ts';
import { parseLoraSource, readPeftConfig } from '../lora-source.ts';

interface GenerateFlags {
  origin: string;
  model: string;
  tag?: string;
  fingerprint?: string;
  lora: LoraOverlay[];
  device: Device;
  seed: number;
  width?: number;
  height?: number;
  prompt?: string;
  negativePrompt?: string;
  steps?: number;
  guidance?: number;
  scheduler?: SchedulerName;
  out: string;
}

/** `<url|path|sha256:hex>[:scale]` (tools/lora-source.ts), as a load-time overlay. */
export function parseLora(value: string, previous: LoraOverlay[] = []): LoraOverlay[] {
  let parsed;
  try {
    parsed = parseLoraSource(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  const { source, scale } = parsed;
  let lora: LoraOverlay;
  if (/^https?:\/\//.test(source)) lora = { url: source, scale };
  else if (/^(sha256:)?[0-9a-f]{64}$/.test(source)) lora = { digest: toDigest(source, '--lora'), scale };
  else if (existsSync(source)) {
    lora = { url: pathToFileURL(resolve(source)).href, scale };
    // A PEFT adapter's lora_alpha lives in its adapter_config.json, found as `fuseload build` finds it.
    let alpha: number | undefined;
    try {
      alpha = readPeftConfig(source)?.config.lora_alpha;
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
    if (alpha) lora.alpha = alpha;
  } else throw new InvalidArgumentError(`"${source}" is not a URL, a sha256 digest or an existing file`);
  return [...previous, lora];
}

const numberIn = (name: string, min: number, max: number) => (value: string): number => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};

/** Per-step progress on a terminal: `step 3/20`. */
function stepBar(): { onStep?: (e: { step: number; steps: number }) => void; stop(): void } {
  if (!process.stderr.isTTY) return { stop() {} };
  const bar = new SingleBar({ stream: process.stderr, format: 'generate [{bar}] step {value}/{total}', hideCursor: true, clearOnComplete: true });
  let begun = false;
  return {
    onStep(e) {
      if (!begun) {
        bar.start(e.steps, e.step);
        begun = true;
      } else bar.update(e.step);
    },
    stop: () => begun && bar.stop(),
  };
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
    .option('--prompt <text>', 'what to draw (text-to-image pipelines)')
    .option('--negative-prompt <text>', 'what not to draw')
    .option('--steps <n>', `denoising steps (1–${GENERATE_LIMITS.maxSteps}; default the scheduler's)`, intIn('--steps', 1, GENERATE_LIMITS.maxSteps))
    .option('--guidance <g>', `classifier-free guidance (0–${GENERATE_LIMITS.maxGuidanceScale}; ≤ 1 skips the unconditional pass)`, numberIn('--guidance', 0, GENERATE_LIMITS.maxGuidanceScale))
    .addOption(new Option('--scheduler <name>', "default: the pipeline's scheduler_config.json").choices([...SCHEDULER_NAMES]))
    .option('--seed <n>', 'noise seed', intIn('--seed', 0, 2 ** 32 - 1), 0)
    .option('--width <px>', 'image width (multiple of 8; default the pipeline\'s size, 64 for a graph)', intIn('--width', 8, 4096))
    .option('--height <px>', 'image height (multiple of 8)', intIn('--height', 8, 4096))
    .requiredOption('--out <file>', 'where to write the PNG')
    .action(async (flags: GenerateFlags) => {
      if (flags.tag && flags.fingerprint) throw badInput('--tag/--fingerprint', 'give one, not both');
      for (const side of ['width', 'height'] as const) {
        const v = flags[side];
        if (v !== undefined && v % 8 !== 0) throw badInput(`--${side}`, `${v} is not a multiple of 8`);
      }
      // Provider fallbacks are reported in the result line (or the error), so only other
      // warnings (a corrupt cache entry, an uncached blob) are printed as they happen.
      const warn = (m: string) => {
        if (!/ could not run it \(/.test(m)) process.stderr.write(`fuseload: warning: ${m}\n`);
      };
      // Loaded when the command runs, so `fuseload --help` needs no onnxruntime-node.
      const { createNodeRuntime } = await import('../runtime/index.ts');
      const { renderPng, rgbaToPng } = await import('../server/render.ts');
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
        const { info } = pipeline;
        let png: Uint8Array;
        let size: string;
        let detail = '';
        if (info.kind === 'text-to-image') {
          if (flags.prompt === undefined) throw badInput('--prompt', `${flags.model} is a text-to-image pipeline: say what to draw`);
          const steps = stepBar();
          const result = await pipeline.generate({
            prompt: flags.prompt,
            negativePrompt: flags.negativePrompt,
            steps: flags.steps,
            guidanceScale: flags.guidance,
            scheduler: flags.scheduler,
            seed: flags.seed,
            width: flags.width,
            height: flags.height,
            onStep: steps.onStep,
          });
          steps.stop();
          png = rgbaToPng(result.image);
          size = `${result.image.width}x${result.image.height}`;
          detail = ` steps=${result.steps} scheduler=${result.scheduler} seed=${result.seed} ${Math.round(result.timings.totalMs)}ms`;
        } else {
          const request = { seed: flags.seed, width: flags.width ?? 64, height: flags.height ?? 64 };
          png = await renderPng(pipeline, request);
          size = `${request.width}x${request.height}`;
        }
        await writeFile(flags.out, png);
        // One short line per provider passed over; the full reasons are in p.info for those who ask.
        const passed = [...new Set(info.fallbacks.map((f) => f.provider))];
        process.stdout.write(`${flags.out}: ${size} ${info.fingerprint} provider=${info.provider}${passed.length ? ` (${passed.join(', ')} unavailable)` : ''} fetched=${info.bytesFetched}B${detail}\n`);
      } finally {
        await pipeline.dispose();
        await runtime.flush(); // the store is written behind the load: finish before exiting
      }
    });
}
