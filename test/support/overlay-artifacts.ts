/**
 * Artifacts for the load-time overlay tests, all from the real build tool: the graph sample base
 * (several shards, so some stay untouched) with its LoRA files published beside it as blobs,
 * and one LoRA-merged artifact per case — `fuseload build` with the same LoRAs and scales,
 * the numbers an overlay must reproduce.
 */
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { decodeManifest, type Manifest, schema1 } from '../../common/manifest.ts';
import type { LoraOverlay } from '../../common/pipeline.ts';
import { encodeSafetensors } from '../../common/safetensors.ts';
import { build } from '../../tools/build/build.ts';
import { SAMPLE_CHANNELS, writeGraphSample } from '../../tools/sample/graph-sample.ts';
import { writeTag } from './tag.ts';

export const SHARD_SIZE = 16 * 1024;
export const LORA_FILES = ['warm', 'cool', 'detail', 'misfit'] as const;
export type LoraName = (typeof LORA_FILES)[number];

export interface OverlayCase {
  name: string;
  loras: { file: LoraName; scale: number }[];
}

export const CASES: OverlayCase[] = [
  { name: 'kohya (warm, incl. LoCon convs) at 0.8', loras: [{ file: 'warm', scale: 0.8 }] },
  { name: 'PEFT (cool) with alpha from its adapter_config.json', loras: [{ file: 'cool', scale: 1 }] },
  { name: 'diffusers (detail) at -0.7', loras: [{ file: 'detail', scale: -0.7 }] },
  { name: 'two at once: warm 0.8 + detail 1.2', loras: [{ file: 'warm', scale: 0.8 }, { file: 'detail', scale: 1.2 }] },
  { name: 'negative scale: cool -1.5', loras: [{ file: 'cool', scale: -1.5 }] },
];

export interface BuiltArtifact {
  dir: string;
  fingerprint: Digest;
  manifest: Manifest;
  /** The graph blob's file (its shards are its siblings). */
  graphFile: string;
}

export interface OverlayArtifacts {
  /** Origin root: the base artifact, tag `sample/latest`, and every LoRA file as a blob. */
  dir: string;
  base: BuiltArtifact;
  loras: Record<LoraName, { digest: Digest; size: number; file: string }>;
  /** cool's adapter_config.json lora_alpha. */
  coolAlpha: number;
  /** One merged artifact per case name. */
  merged: Map<string, BuiltArtifact>;
  /** The overlays a case asks for (cool with its alpha). */
  overlays(c: OverlayCase): LoraOverlay[];
  /** Removes the temporary folder everything above lives in (a test file's `afterAll`). */
  remove(): Promise<void>;
}

/** kohya keys shaped for a 33-wide layer on the sample's 32-wide to_out.0: must not fit. */
function misfitLora(): Uint8Array {
  const C = SAMPLE_CHANNELS;
  const key = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0';
  return encodeSafetensors({
    [`${key}.lora_down.weight`]: { dtype: 'F32', shape: [4, C], data: new Float32Array(4 * C).fill(0.01) },
    [`${key}.lora_up.weight`]: { dtype: 'F32', shape: [C + 1, 4], data: new Float32Array((C + 1) * 4).fill(0.01) },
  });
}

async function buildInto(out: string, base: string, loras: { path: string; scale: number }[]): Promise<BuiltArtifact> {
  const report = await build({ base, loras, name: 'sample', out, store: null, shardSize: SHARD_SIZE });
  const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(report.manifest)), 'test', report.fingerprint));
  await writeTag(out, 'sample', report.fingerprint);
  return { dir: out, fingerprint: report.fingerprint, manifest, graphFile: join(out, 'blobs', 'sha256', digestHex(manifest.graph.digest)) };
}

export async function overlayArtifacts(cases: OverlayCase[] = CASES): Promise<OverlayArtifacts> {
  const work = await mkdtemp(join(tmpdir(), 'fuseload-overlay-'));
  const src = join(work, 'src');
  await writeGraphSample(src);
  await writeFile(join(src, 'misfit.safetensors'), misfitLora());
  const baseDir = join(work, 'base');
  const base = await buildInto(baseDir, join(src, 'model.onnx'), []);
  const loras = {} as OverlayArtifacts['loras'];
  for (const name of LORA_FILES) {
    const file = join(src, `${name}.safetensors`);
    const bytes = new Uint8Array(await readFile(file));
    const digest = await sha256(bytes);
    // Published as `fuseload publish` does: a blob beside the base's.
    await copyFile(file, join(baseDir, 'blobs', 'sha256', digestHex(digest)));
    loras[name] = { digest, size: bytes.length, file };
  }
  const coolAlpha = JSON.parse(await readFile(join(src, 'cool.adapter_config.json'), 'utf8')).lora_alpha as number;
  const merged = new Map<string, BuiltArtifact>();
  for (const [i, c] of cases.entries()) {
    merged.set(c.name, await buildInto(join(work, `merged-${i}`), join(src, 'model.onnx'), c.loras.map((l) => ({ path: loras[l.file].file, scale: l.scale }))));
  }
  return {
    dir: baseDir,
    base,
    loras,
    coolAlpha,
    merged,
    overlays: (c) => c.loras.map((l) => ({ digest: loras[l.file].digest, scale: l.scale, ...(l.file === 'cool' ? { alpha: coolAlpha } : {}) })),
    remove: () => rm(work, { recursive: true, force: true }),
  };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}
