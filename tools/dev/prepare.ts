/**
 * The data half of `npm start`: the sample pipeline (tools/sample) → artifacts (the base and one
 * LoRA-merged variant per LoRA) → wrangler dev's local R2 state, with a tag each → the demo's
 * catalog. These are the functions `fuseload sample`, `fuseload build` and
 * `fuseload publish --local` run, called in one process so a re-run costs one startup, not one
 * per command.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveSchedulerName } from '../../common/generate/schedulers/index.ts';
import type { DemoCatalog, DemoLora, DemoTag } from '../../web/demo/catalog.ts';
import { build, type BuildReport } from '../build/build.ts';
import { readLoraInput } from '../build/inputs.ts';
import { LocalR2Target } from '../local-r2/index.ts';
import { publishArtifact, type PublishReport } from '../publish/publish.ts';
import { examplePrompts, type WrittenSample, writeSample } from '../sample/sample.ts';

export const DEMO_MODEL = 'sample';
/** Scale of each LoRA in its merged tag, and where the page's overlay slider starts. */
export const DEMO_LORA_SCALE = 1;
/** What the sample was trained and evaluated with (tools/sample/train): 20 Euler steps at guidance 5. */
export const DEMO_STEPS = 20;
export const DEMO_GUIDANCE = 5;

export interface PrepareDirs {
  /** Work directory (`.fuseload/dev` by default): sample/, artifact/, catalog.json. */
  work: string;
  /** wrangler's state directory (`--persist-to`). */
  persistTo: string;
  /** The sample pipeline to copy (default: the committed tools/sample/pipeline). */
  sampleFrom?: string;
}

export function sampleDir(dirs: PrepareDirs): string {
  return join(dirs.work, 'sample');
}
export function artifactDir(dirs: PrepareDirs): string {
  return join(dirs.work, 'artifact');
}
export function catalogFile(dirs: PrepareDirs): string {
  return join(dirs.work, 'catalog.json');
}

/** Writes the sample afresh: the directory is ours, and files from an older sample must not linger in the build's input. */
export async function writeDemoSample(dirs: PrepareDirs): Promise<WrittenSample> {
  await rm(sampleDir(dirs), { recursive: true, force: true });
  return writeSample(sampleDir(dirs), { from: dirs.sampleFrom });
}

export interface VariantBuild {
  tag: string;
  merged: { name: string; scale: number }[];
  report: BuildReport;
}

/** One tag per artifact: the clean base (what load-time overlays go on) and one merged variant per LoRA. */
export function demoVariants(sample: WrittenSample): { tag: string; loras: { name: string; scale: number }[] }[] {
  return [{ tag: 'latest', loras: [] }, ...sample.loras.map((l) => ({ tag: l.name, loras: [{ name: l.name, scale: DEMO_LORA_SCALE }] }))];
}

/**
 * Builds every variant into one artifact directory; the build cache (PIPELINE_STORE) makes
 * repeats cheap. Merged builds also carry each LoRA file as a blob, which is how the origin
 * comes to serve them for overlays.
 */
export async function buildVariants(dirs: PrepareDirs, sample: WrittenSample): Promise<VariantBuild[]> {
  const fileOf = (name: string) => join(sample.dir, sample.loras.find((l) => l.name === name)!.file);
  const builds: VariantBuild[] = [];
  // One at a time: they share the build cache.
  for (const v of demoVariants(sample)) {
    const report = await build({
      base: sample.dir,
      loras: v.loras.map((l) => ({ path: fileOf(l.name), scale: l.scale })),
      name: DEMO_MODEL,
      out: artifactDir(dirs),
    });
    builds.push({ tag: v.tag, merged: v.loras, report });
  }
  return builds;
}

/** Publishes each variant under its tag through one local R2 handle (one miniflare start). */
export async function publishVariants(dirs: PrepareDirs, builds: VariantBuild[]): Promise<PublishReport[]> {
  const target = new LocalR2Target({ persistTo: dirs.persistTo });
  try {
    const reports: PublishReport[] = [];
    for (const b of builds) reports.push(await publishArtifact(artifactDir(dirs), target, { tag: b.tag, fingerprint: b.report.fingerprint }));
    return reports;
  } finally {
    await target.close();
  }
}

export async function demoCatalog(sample: WrittenSample, origin: string, builds: VariantBuild[]): Promise<DemoCatalog> {
  const tags: DemoTag[] = builds.map((b) => ({ tag: b.tag, fingerprint: b.report.fingerprint, merged: b.merged }));
  const loras: DemoLora[] = [];
  for (const l of sample.loras) {
    const record = builds.flatMap((b) => b.report.loras).find((r) => r.source === l.file.split('/').pop());
    if (!record) throw new Error(`no build merged ${l.file}, so the origin would not serve it for overlays`);
    // The build found the PEFT config beside the file; a load-time overlay needs its alpha passed in.
    const { config, bytes } = await readLoraInput(join(sample.dir, l.file), DEMO_LORA_SCALE);
    const alpha = config?.lora_alpha;
    loras.push({
      name: l.name,
      digest: record.digest,
      size: bytes.byteLength,
      format: record.format,
      defaultScale: DEMO_LORA_SCALE,
      ...(alpha === undefined ? {} : { alpha }),
      ...(l.style ? { style: l.style } : {}),
    });
  }
  const p = sample.palette;
  const size = p.image_size;
  const multiple = await sizeMultiple(sample.dir);
  const sizes = [size, 1.5 * size, 2 * size].filter((s) => Number.isInteger(s) && s % multiple === 0);
  const prompts = examplePrompts(p);
  const schedulerConfig = JSON.parse(await readFile(join(sample.dir, 'scheduler', 'scheduler_config.json'), 'utf8'));
  return {
    origin,
    model: DEMO_MODEL,
    tags,
    loras,
    width: size,
    height: size,
    sizes,
    prompts,
    defaults: { prompt: prompts[0], negativePrompt: '', steps: DEMO_STEPS, guidanceScale: DEMO_GUIDANCE, scheduler: resolveSchedulerName(schedulerConfig), seed: 1 },
    vocabulary: {
      colors: Object.keys(p.colors),
      shapes: p.shapes,
      sizes: Object.keys(p.sizes).filter((s) => s !== 'default'),
      positions: Object.keys(p.positions).filter((s) => s !== 'center'),
      grammar: p.caption_grammar,
    },
  };
}

/**
 * Image sides the pipeline can take: the VAE's factor (2^(VAE blocks − 1)) times the UNet's
 * downsampling (2^(down blocks − 1)), from their diffusers configs.
 */
async function sizeMultiple(dir: string): Promise<number> {
  const config = async (path: string): Promise<Record<string, unknown>> => {
    try {
      return JSON.parse(await readFile(join(dir, path), 'utf8'));
    } catch {
      return {};
    }
  };
  const blocks = (c: Record<string, unknown>, key: string) => (Array.isArray(c[key]) ? (c[key] as unknown[]).length : 1);
  const vae = await config('vae_decoder/config.json');
  const unet = await config('unet/config.json');
  return 2 ** (blocks(vae, 'block_out_channels') - 1) * 2 ** (blocks(unet, 'down_block_types') - 1);
}

export async function writeCatalog(dirs: PrepareDirs, catalog: DemoCatalog): Promise<string> {
  await mkdir(dirs.work, { recursive: true });
  const file = catalogFile(dirs);
  await writeFile(file, `${JSON.stringify(catalog, null, 2)}\n`);
  return file;
}
