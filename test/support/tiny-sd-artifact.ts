/**
 * The tiny real-exporter pipeline of test/fixtures/generate/tiny-sd (make_tiny_sd.py) built by
 * `build()` into a served artifact, tagged `latest`. The fixture has no model_index.json (its
 * extra UNet variants are for the unit tests), so a diffusers layout of it is made first.
 * A `dir` in the diffusers ONNX layout (tools/sample/pipeline) is built as it is.
 */
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from '../../tools/build/build.ts';
import { writeTag } from './tag.ts';

export const TINY_SD = new URL('../fixtures/generate/tiny-sd/', import.meta.url).pathname;

export interface TinySdArtifact {
  /** The served root: blobs/, manifests/, tags/. */
  dir: string;
  model: string;
  fingerprint: string;
}

const MODEL_INDEX = {
  _class_name: 'OnnxStableDiffusionPipeline',
  scheduler: ['diffusers', 'EulerDiscreteScheduler'],
  text_encoder: ['onnxruntime', 'OnnxRuntimeModel'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['onnxruntime', 'OnnxRuntimeModel'],
  vae_decoder: ['onnxruntime', 'OnnxRuntimeModel'],
};

/** Builds `source` (default: the tiny fixture) as `model` under `work` (a fresh temp dir when absent). */
export async function tinySdArtifact(options: { source?: string; model?: string; work?: string } = {}): Promise<TinySdArtifact> {
  const work = options.work ?? (await mkdtemp(join(tmpdir(), 'fuseload-tiny-sd-')));
  const model = options.model ?? 'tiny-sd';
  let base = options.source;
  if (!base) {
    base = join(work, 'diffusers');
    for (const folder of ['text_encoder', 'unet', 'vae_decoder', 'tokenizer', 'scheduler']) await cp(join(TINY_SD, folder), join(base, folder), { recursive: true });
    await writeFile(join(base, 'model_index.json'), JSON.stringify(MODEL_INDEX, null, 1));
  }
  const dir = join(work, 'origin');
  const report = await build({ base, name: model, out: dir, store: null });
  await writeTag(dir, model, report.fingerprint);
  return { dir, model, fingerprint: report.fingerprint };
}

/** The fixture's torch reference of one generation (make_tiny_sd.py). */
export async function tinySdReference(): Promise<{
  prompt: string;
  width: number;
  height: number;
  steps: number;
  guidance_scale: number;
  noise: number[];
  image_rgba_base64: string;
}> {
  return JSON.parse(await readFile(join(TINY_SD, 'reference.json'), 'utf8'));
}
