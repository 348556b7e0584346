/**
 * The data half of `npm start`: the built-in sample → artifacts (the base and LoRA-merged
 * variants) → wrangler dev's local R2 state, with a tag each → the demo's catalog.
 * These are the functions `fuseload sample`, `fuseload build` and `fuseload publish --local`
 * run, called in one process so a re-run costs one startup, not one per command.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { DemoCatalog, DemoLora, DemoTag } from '../../web/demo/catalog.ts';
import { build, type BuildReport } from '../build/build.ts';
import { readLoraInput } from '../build/inputs.ts';
import { LocalR2Target } from '../local-r2/index.ts';
import { publishArtifact, type PublishReport } from '../publish/publish.ts';
import { writeSample } from '../sample/sample.ts';

export const DEMO_MODEL = 'sample';
export const DEMO_SIZE = { width: 64, height: 64 };

/** The sample's LoRAs (tools/sample) and the scale the page starts them at. */
export const DEMO_LORAS = [
  { name: 'warm', file: 'warm.safetensors', defaultScale: 0.8 },
  { name: 'cool', file: 'cool.safetensors', defaultScale: 0.8 },
  { name: 'detail', file: 'detail.safetensors', defaultScale: 0.8 },
] as const;

/**
 * One tag per artifact: the clean base (what load-time overlays go on) and one merged variant
 * per LoRA. Merged builds also carry each LoRA file as a blob, which is how the origin comes
 * to serve them for overlays.
 */
export const DEMO_VARIANTS: { tag: string; loras: { name: string; scale: number }[] }[] = [
  { tag: 'latest', loras: [] },
  ...DEMO_LORAS.map((l) => ({ tag: l.name, loras: [{ name: l.name, scale: l.defaultScale }] })),
];

export interface PrepareDirs {
  /** Work directory (`.fuseload/dev` by default): sample/, artifact/, catalog.json. */
  work: string;
  /** wrangler's state directory (`--persist-to`). */
  persistTo: string;
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

export async function writeDemoSample(dirs: PrepareDirs): Promise<string[]> {
  return writeSample(sampleDir(dirs));
}

export interface VariantBuild {
  tag: string;
  merged: { name: string; scale: number }[];
  report: BuildReport;
}

/** Builds every variant into one artifact directory; the build cache (PIPELINE_STORE) makes repeats cheap. */
export async function buildVariants(dirs: PrepareDirs): Promise<VariantBuild[]> {
  const sample = sampleDir(dirs);
  const fileOf = (name: string) => join(sample, DEMO_LORAS.find((l) => l.name === name)!.file);
  const builds: VariantBuild[] = [];
  // One at a time: they share the build cache, and each is a fraction of a second.
  for (const v of DEMO_VARIANTS) {
    const report = await build({
      base: join(sample, 'model.onnx'),
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

export async function demoCatalog(dirs: PrepareDirs, origin: string, builds: VariantBuild[]): Promise<DemoCatalog> {
  const tags: DemoTag[] = builds.map((b) => ({ tag: b.tag, fingerprint: b.report.fingerprint, merged: b.merged }));
  const loras: DemoLora[] = [];
  for (const l of DEMO_LORAS) {
    const record = builds.flatMap((b) => b.report.loras).find((r) => r.source === l.file);
    if (!record) throw new Error(`no build merged ${l.file}, so the origin would not serve it for overlays`);
    // The build found the PEFT config beside the file; a load-time overlay needs its alpha passed in.
    const { config, bytes } = await readLoraInput(join(sampleDir(dirs), l.file), l.defaultScale);
    const alpha = config?.lora_alpha;
    loras.push({
      name: l.name,
      digest: record.digest,
      size: bytes.byteLength,
      format: record.format,
      defaultScale: l.defaultScale,
      ...(alpha === undefined ? {} : { alpha }),
    });
  }
  return { origin, model: DEMO_MODEL, tags, loras, ...DEMO_SIZE };
}

export async function writeCatalog(dirs: PrepareDirs, catalog: DemoCatalog): Promise<string> {
  await mkdir(dirs.work, { recursive: true });
  const file = catalogFile(dirs);
  await writeFile(file, `${JSON.stringify(catalog, null, 2)}\n`);
  return file;
}
