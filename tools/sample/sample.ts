/**
 * The sample `fuseload sample` and `npm start` use: a small, real Stable Diffusion pipeline
 * trained on synthetic shapes ("a red circle on a blue background", "a small yellow triangle at
 * the top left on a purple background"; 64×64 images), committed in the diffusers ONNX layout
 * under tools/sample/pipeline (trained and exported by tools/sample/train), with three LoRAs,
 * one per key layout:
 *
 *   model_index.json  text_encoder/ unet/ vae_decoder/ vae_encoder/   model.onnx + model.onnx_data
 *   tokenizer/  scheduler/scheduler_config.json  sample_palette.json
 *   loras/outline.safetensors (kohya)  loras/pastel.safetensors + pastel.adapter_config.json (PEFT)
 *   loras/stripes.safetensors (diffusers)
 *
 * `sample_palette.json` says what the model knows (colours, shapes, sizes, positions, the
 * combinations held out of training) and lists the LoRAs. Writing the sample copies the files.
 */
import { copyFile, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { badInput } from '../../common/errors.ts';

/** The committed pipeline. */
export const SAMPLE_PIPELINE_DIR = resolve(import.meta.dirname, 'pipeline');
export const SAMPLE_PALETTE_FILE = 'sample_palette.json';

export interface SamplePalette {
  /** Side of the square training images, in pixels. */
  image_size: number;
  /** Colour name → the RGB it was drawn in. */
  colors: Record<string, [number, number, number]>;
  shapes: string[];
  /** Size word (`default` for none) → half extent in pixels. */
  sizes: Record<string, number>;
  /** Position words (`center` for none) → the shape's centre (x, y) in pixels. */
  positions: Record<string, [number, number]>;
  caption_grammar: string;
  /** (shape, colour, background) combinations never shown in training. */
  held_out: { shape: string; color: string; background: string }[];
  /** LoRA name → what it does to the picture. */
  styles: Record<string, string>;
  /** LoRA name → its file (relative to the pipeline), key layout, rank and alpha. */
  loras: Record<string, { file: string; format: string; rank?: number; alpha?: number }>;
}

export interface SampleLora {
  name: string;
  /** Path relative to the sample directory (`loras/outline.safetensors`). */
  file: string;
  /** Key layout: kohya, peft or diffusers. */
  format: string;
  /** What it does, from the palette's `styles`. */
  style?: string;
}

export interface WrittenSample {
  dir: string;
  palette: SamplePalette;
  loras: SampleLora[];
  /** Every file written, relative to `dir`, sorted. */
  files: string[];
}

/**
 * Copies the sample pipeline (`from`, default the committed one) into `dir`: the diffusers ONNX
 * directory `fuseload build --base <dir>` reads, and its LoRAs under `loras/`.
 */
export async function writeSample(dir: string, options: { from?: string } = {}): Promise<WrittenSample> {
  const from = resolve(options.from ?? SAMPLE_PIPELINE_DIR);
  const to = resolve(dir);
  const shown = relative(process.cwd(), from) || from;
  if (!(await isFile(join(from, 'model_index.json')))) {
    throw badInput(shown, 'the trained sample pipeline is not there (no model_index.json); it is committed under tools/sample/pipeline, made by tools/sample/train');
  }
  if (to === from || to.startsWith(from + sep)) throw badInput(dir, `is inside the sample pipeline itself (${shown}); write the sample somewhere else`);
  const palette = await readSamplePalette(from);
  const files = (await listFiles(from)).sort();
  const loras = sampleLoras(palette);
  for (const l of loras) {
    if (!files.includes(l.file)) throw badInput(join(shown, SAMPLE_PALETTE_FILE), `names LoRA "${l.name}" at ${l.file}, which is not there`);
  }
  // A copy without its weights (a package that left them out) should fail here, not in the build.
  for (const role of await componentsOf(from)) {
    if (!files.includes(`${role}/model.onnx`)) throw badInput(shown, `is incomplete: model_index.json names ${role}, but ${role}/model.onnx is not there`);
  }
  for (const file of files) {
    await mkdir(dirname(join(to, file)), { recursive: true });
    await copyFile(join(from, file), join(to, file));
  }
  return { dir: to, palette, loras, files };
}

/** Reads and checks `sample_palette.json` in a sample directory. */
export async function readSamplePalette(dir: string): Promise<SamplePalette> {
  const file = join(dir, SAMPLE_PALETTE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw badInput(file, code === 'ENOENT' ? 'is missing (every sample pipeline carries one)' : `is not valid JSON (${(e as Error).message})`);
  }
  const p = json as Partial<SamplePalette>;
  const fail = (what: string) => badInput(file, what);
  if (!p || typeof p !== 'object') throw fail('is not a JSON object');
  if (!Number.isInteger(p.image_size) || p.image_size! < 8) throw fail('image_size must be an integer ≥ 8');
  if (!p.colors || typeof p.colors !== 'object' || Object.values(p.colors).some((c) => !Array.isArray(c) || c.length !== 3 || c.some((v) => typeof v !== 'number'))) {
    throw fail('colors must map each colour name to [r, g, b]');
  }
  if (!Array.isArray(p.shapes) || p.shapes.length === 0) throw fail('shapes must be a list of shape names');
  if (!p.loras || typeof p.loras !== 'object') throw fail('loras must map each LoRA name to {file, format}');
  for (const [name, l] of Object.entries(p.loras)) {
    if (!l || typeof l.file !== 'string' || typeof l.format !== 'string') throw fail(`loras.${name} must have a file and a format`);
  }
  return { sizes: {}, positions: {}, caption_grammar: '', held_out: [], styles: {}, ...p } as SamplePalette;
}

/** The palette's LoRAs, in its order. */
export function sampleLoras(palette: SamplePalette): SampleLora[] {
  return Object.entries(palette.loras).map(([name, l]) => ({
    name,
    file: l.file,
    format: l.format,
    ...(palette.styles[name] ? { style: palette.styles[name] } : {}),
  }));
}

/** A caption in the training grammar: `a [size] <colour> <shape> [position] on a <background> background`. */
export function sampleCaption(c: { shape: string; color: string; background: string; size?: string; position?: string }): string {
  return ['a', c.size, c.color, c.shape, c.position, 'on a', c.background, 'background'].filter(Boolean).join(' ');
}

/** A few prompts to try: two the model was trained on, and one held-out combination. */
export function examplePrompts(palette: SamplePalette): string[] {
  const colors = Object.keys(palette.colors);
  const pick = (want: string, i: number) => (colors.includes(want) ? want : colors[i % colors.length]);
  const shape = (want: string, i: number) => (palette.shapes.includes(want) ? want : palette.shapes[i % palette.shapes.length]);
  const known = (want: string, table: Record<string, unknown>) => (want in table ? want : undefined);
  const prompts = [
    sampleCaption({ color: pick('red', 0), shape: shape('circle', 0), background: pick('blue', 2) }),
    sampleCaption({ size: known('small', palette.sizes), color: pick('yellow', 3), shape: shape('triangle', 2), position: known('at the top left', palette.positions), background: pick('red', 0) }),
    sampleCaption({ size: known('large', palette.sizes), color: pick('white', 6), shape: shape('square', 1), background: pick('black', 7) }),
  ];
  const held = palette.held_out[0];
  if (held) prompts.push(sampleCaption(held));
  return [...new Set(prompts)];
}

/** The component folders model_index.json names (each holds a model.onnx in the diffusers ONNX layout). */
async function componentsOf(dir: string): Promise<string[]> {
  let index: Record<string, unknown>;
  try {
    index = JSON.parse(await readFile(join(dir, 'model_index.json'), 'utf8'));
  } catch (e) {
    throw badInput(join(dir, 'model_index.json'), `is not valid JSON (${(e as Error).message})`);
  }
  return Object.entries(index)
    .filter(([key, v]) => /^(text_encoder(_\d)?|unet|transformer|vae_decoder|vae_encoder)$/.test(key) && Array.isArray(v) && v.some((x) => x !== null))
    .map(([key]) => key);
}

async function listFiles(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(path, base)));
    else if (entry.isFile()) out.push(relative(base, path).split(sep).join('/'));
  }
  return out;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
