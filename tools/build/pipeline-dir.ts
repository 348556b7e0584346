/**
 * Reading a diffusers ONNX directory, the layout exporters and hub repos publish
 * (docs/artifact.md, "Build input"): `model_index.json`, one folder per component with
 * `model.onnx` (and its external data beside it), and the small files the pipeline needs
 * (`tokenizer/…`, `scheduler/scheduler_config.json`, `<component>/config.json`).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, sha256 } from '../../common/digest.ts';
import { badInput } from '../../common/errors.ts';
import { ASSET_PATH_RE, type PipelineKind, ROLES, type Role } from '../../common/manifest.ts';
import { type BaseModel, readBase } from './inputs.ts';

export interface PipelineAsset {
  digest: Digest;
  bytes: Uint8Array;
}

export interface PipelineDir {
  kind: PipelineKind;
  components: { role: Role; base: BaseModel }[];
  /** By path in the diffusers layout, sorted. */
  assets: Map<string, PipelineAsset>;
  /** model_index.json entries we do not carry (safety_checker, feature_extractor, …). */
  ignored: string[];
}

/** Folders of small files a pipeline carries whole. */
const ASSET_FOLDERS = new Set(['tokenizer', 'tokenizer_2', 'tokenizer_3', 'scheduler']);
/** An asset is a config or vocabulary, never weights. */
const MAX_ASSET_BYTES = 32 * 1024 * 1024;

/**
 * Reads and validates the whole directory before anything is written. Each component's base is
 * pushed onto `bases` as soon as it is open, so the caller can stop its hashing on any failure.
 */
export async function readPipelineDir(dir: string, onHash: (bytes: number) => void, bases: BaseModel[], streamAbove?: number): Promise<PipelineDir> {
  const indexPath = join(dir, 'model_index.json');
  let indexBytes: Uint8Array;
  try {
    indexBytes = new Uint8Array(await readFile(indexPath));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw badInput(dir, 'is a directory without model_index.json (expected a diffusers ONNX pipeline, or pass a .onnx file)');
    throw badInput(indexPath, `cannot be read (${code ?? (e as Error).message})`);
  }
  let index: Record<string, unknown>;
  try {
    index = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(indexBytes));
  } catch (e) {
    throw badInput(indexPath, `is not valid JSON (${(e as Error).message})`);
  }
  if (!index || typeof index !== 'object' || Array.isArray(index)) throw badInput(indexPath, 'is not a JSON object');

  const components: PipelineDir['components'] = [];
  const assets = new Map<string, PipelineAsset>();
  const ignored: string[] = [];
  const addAsset = async (path: string, file: string) => {
    if (!ASSET_PATH_RE.test(path)) return;
    const s = await stat(file);
    if (!s.isFile()) return;
    if (s.size > MAX_ASSET_BYTES) throw badInput(file, `is ${s.size} bytes; a pipeline asset must be at most ${MAX_ASSET_BYTES}`);
    const bytes = new Uint8Array(await readFile(file));
    assets.set(path, { digest: await sha256(bytes), bytes });
  };
  await addAsset('model_index.json', indexPath);

  for (const [key, value] of Object.entries(index).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (key.startsWith('_')) continue;
    // diffusers writes [library, class]; [null, null] (or null) marks a component left out.
    if (value === null || (Array.isArray(value) && value.every((v) => v === null))) continue;
    if ((ROLES as readonly string[]).includes(key) && key !== 'model') {
      const role = key as Role;
      const model = join(dir, key, 'model.onnx');
      if (!(await isFile(model))) throw badInput(indexPath, `names component "${key}", but ${key}/model.onnx is missing`);
      const base = await readBase(model, onHash, { streamAbove });
      base.source = `${key}/model.onnx`;
      bases.push(base);
      components.push({ role, base });
      const config = join(dir, key, 'config.json');
      if (await isFile(config)) await addAsset(`${key}/config.json`, config);
    } else if (ASSET_FOLDERS.has(key)) {
      let names: string[];
      try {
        names = (await readdir(join(dir, key))).sort();
      } catch {
        throw badInput(indexPath, `names "${key}", but the folder ${key}/ is missing`);
      }
      for (const name of names) await addAsset(`${key}/${name}`, join(dir, key, name));
    } else {
      ignored.push(key);
    }
  }
  if (components.length === 0) throw badInput(indexPath, 'names no component fuseload can build (text_encoder, unet, transformer, vae_decoder, …)');
  const roles = new Set(components.map((c) => c.role));
  const denoiser = roles.has('unet') || roles.has('transformer');
  const kind: PipelineKind = 'text-to-image';
  for (const [need, ok] of [
    ['text_encoder', roles.has('text_encoder')],
    ['unet or transformer', denoiser],
    ['vae_decoder', roles.has('vae_decoder')],
  ] as const) {
    if (!ok) throw badInput(indexPath, `a text-to-image pipeline needs a ${need}, and this one has none`);
  }
  if (roles.has('text_encoder') && !assets.has('tokenizer/tokenizer.json') && !assets.has('tokenizer/vocab.json')) {
    throw badInput(dir, 'has a text_encoder but no tokenizer (tokenizer/tokenizer.json, or tokenizer/vocab.json + merges.txt)');
  }
  return { kind, components, assets: new Map([...assets].sort(([a], [b]) => (a < b ? -1 : 1))), ignored };
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
