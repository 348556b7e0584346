/**
 * For the LoRA switching tests: the tiny real-exporter text-to-image pipeline
 * (test/fixtures/generate/tiny-sd, tiny-sd-artifact.ts) with a kohya LoRA on every
 * LoRA-targetable weight of its text encoder and UNet (Linear and Conv, rank 4), published beside
 * it as a blob, and the artifact `fuseload build` merged with it — both in one origin directory.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { componentEntries, decodeManifest, pipelineView, type TensorEntry } from '../../common/manifest.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { mulberry32 } from '../../common/sample-input.ts';
import { build } from '../../tools/build/build.ts';
import { tinySdArtifact } from './tiny-sd-artifact.ts';

export interface TinySdLora {
  dir: string;
  model: string;
  base: string;
  /** The LoRA at `scale`, merged by the build. */
  merged: string;
  lora: Digest;
  scale: number;
}

const RANK = 4;
const PREFIX: Record<string, string> = { unet: 'lora_unet_', text_encoder: 'lora_te_' };

/** torch's [out, in·k] of a weight as the tensor index stores it. */
function torchDims(t: TensorEntry): { out: number; inner: number[] } {
  if (t.layout === 'io') return { out: t.shape[1], inner: [t.shape[0]] };
  return { out: t.shape[0], inner: t.shape.slice(1) };
}

export async function tinySdWithLora(work: string, scale = 0.7): Promise<TinySdLora> {
  const base = await tinySdArtifact({ work });
  const manifest = pipelineView(await decodeManifest(new Uint8Array(await readFile(join(base.dir, 'manifests', 'sha256', `${digestHex(base.fingerprint as Digest)}.json`))), 'tiny-sd', base.fingerprint as Digest));
  const rand = mulberry32(3);
  const tensors: Record<string, SafetensorsInput> = {};
  for (const [role, c] of componentEntries(manifest)) {
    const prefix = PREFIX[role];
    if (!prefix) continue;
    for (const t of c.tensors) {
      if (!t.module || t.layout === 'none') continue;
      const { out, inner } = torchDims(t);
      const k = inner.reduce((a, b) => a * b, 1);
      const key = `${prefix}${t.module.replace(/\./g, '_')}`;
      const down = Float32Array.from({ length: RANK * k }, () => (rand() - 0.5) * 2);
      const up = Float32Array.from({ length: out * RANK }, () => (rand() - 0.5) * 2);
      tensors[`${key}.lora_down.weight`] = { dtype: 'F32', shape: [RANK, ...inner], data: down };
      tensors[`${key}.lora_up.weight`] = { dtype: 'F32', shape: t.layout === 'oihw' ? [out, RANK, 1, 1] : [out, RANK], data: up };
      tensors[`${key}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
    }
  }
  const bytes = encodeSafetensors(tensors);
  const lora = await sha256(bytes);
  const file = join(work, 'every-layer.safetensors');
  await writeFile(file, bytes);
  await writeFile(join(base.dir, 'blobs', 'sha256', digestHex(lora)), bytes);
  const merged = await build({ base: join(work, 'diffusers'), loras: [{ path: file, scale }], name: base.model, out: base.dir, store: null });
  return { dir: base.dir, model: base.model, base: base.fingerprint, merged: merged.fingerprint, lora, scale };
}
