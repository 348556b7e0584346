/**
 * Remote build inputs (`s3://`, `https://`, `http://` for local servers). Each file is
 * fetched by the shared input resolver (tools/fetch-input: hashed while it streams into the
 * content-addressed store, S3 configuration and HF_TOKEN handling in one place), then linked
 * under its own name into a temp dir, so the build only ever reads local files and a base's
 * external-data files sit beside it under the names its graph gives them.
 */
import { copyFile, link, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { resolveInput } from '../fetch-input/index.ts';
import { DiskStore } from '../store/disk-store.ts';
import { decodeModel, externalRef, isExternal } from '../onnx/model.ts';

export function isRemote(src: string): boolean {
  return /^(https?|s3):\/\//i.test(src);
}

export interface LocalCopy {
  path: string;
  source: string;
  dispose(): Promise<void>;
}

/** The URL of a file named relative to another remote file (an external-data sibling, a PEFT config). */
function sibling(url: string, name: string): string {
  if (url.startsWith('s3://')) {
    const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(url)!;
    return `s3://${m[1]}/${posix.join(posix.dirname(m[2]), name)}`;
  }
  return new URL(name, url).toString();
}

function fileName(url: string, fallback: string): string {
  const path = url.startsWith('s3://') ? url.replace(/^s3:\/\/[^/]+/, '') : new URL(url).pathname;
  return posix.basename(path) || fallback;
}

/**
 * Fetches a remote .onnx (with its external data) or LoRA (with a PEFT config beside it, if any).
 * `store` is where downloads land (the build cache); null means a throwaway store in the temp dir.
 */
export async function fetchInput(url: string, kind: 'base' | 'lora', store: DiskStore | null): Promise<LocalCopy> {
  if (kind === 'base' && isPipelineUrl(url)) return fetchPipelineDir(url, store);
  const dir = await mkdtemp(join(tmpdir(), 'fuseload-input-'));
  const dispose = () => rm(dir, { recursive: true, force: true });
  const blobs = store ?? new DiskStore(join(dir, '.store'));
  const place = async (source: string, name: string) => {
    const got = await resolveInput(source, { store: blobs });
    const target = join(dir, name);
    await link(got.path, target).catch(() => copyFile(got.path, target));
    return { path: target, source: got.source };
  };
  try {
    const name = fileName(url, kind === 'base' ? 'model.onnx' : 'lora.safetensors');
    const main = await place(url, name);
    if (kind === 'base') {
      const model = decodeModel(new Uint8Array(await readFile(main.path)), main.source);
      const locations = new Set<string>();
      for (const t of model.graph!.initializer ?? []) if (isExternal(t)) locations.add(externalRef(t, main.source).location);
      for (const location of locations) {
        if (location.includes('..') || location.startsWith('/')) continue; // readBase refuses it with a clear message
        await place(sibling(url, location), location);
      }
    } else {
      const config = name.replace(/\.safetensors$/, '.adapter_config.json');
      await place(sibling(url, config), config).catch(() => {}); // optional: only PEFT adapters have one
    }
    return { path: main.path, source: main.source, dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/** A remote diffusers ONNX directory: a URL ending in `/` or in `model_index.json`. */
export function isPipelineUrl(url: string): boolean {
  const path = url.startsWith('s3://') ? url.replace(/^s3:\/\/[^/]+/, '') : new URL(url).pathname;
  return path.endsWith('/') || posix.basename(path) === 'model_index.json';
}

/** Files a pipeline folder may hold; over HTTP nothing can be listed, so these are asked for by name. */
const OPTIONAL_FILES: Record<string, string[]> = {
  tokenizer: ['tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt', 'special_tokens_map.json'],
  tokenizer_2: ['tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt', 'special_tokens_map.json'],
  scheduler: ['scheduler_config.json'],
};
const COMPONENTS = new Set(['text_encoder', 'text_encoder_2', 'unet', 'transformer', 'vae_decoder', 'vae_encoder']);

/**
 * Fetches a remote diffusers ONNX directory into a local one of the same layout (every file
 * verified into the store as it streams), for `readPipelineDir` to read like any other.
 */
async function fetchPipelineDir(url: string, store: DiskStore | null): Promise<LocalCopy> {
  const root = url.endsWith('/') ? url : url.slice(0, url.length - 'model_index.json'.length);
  const dir = await mkdtemp(join(tmpdir(), 'fuseload-input-'));
  const dispose = () => rm(dir, { recursive: true, force: true });
  const blobs = store ?? new DiskStore(join(dir, '.store'));
  const at = (rel: string) => (root.startsWith('s3://') ? `${root}${rel}` : new URL(rel, root).toString());
  const place = async (rel: string) => {
    const got = await resolveInput(at(rel), { store: blobs });
    const target = join(dir, ...rel.split('/'));
    await mkdir(join(target, '..'), { recursive: true });
    await link(got.path, target).catch(() => copyFile(got.path, target));
    return target;
  };
  const optional = (rel: string) =>
    place(rel).catch((e) => {
      if ((e as { code?: string }).code !== 'not-found') throw e;
    });
  try {
    const index = JSON.parse(await readFile(await place('model_index.json'), 'utf8')) as Record<string, unknown>;
    for (const [key, value] of Object.entries(index)) {
      if (key.startsWith('_') || value === null || (Array.isArray(value) && value.every((v) => v === null))) continue;
      if (COMPONENTS.has(key)) {
        const model = await place(`${key}/model.onnx`);
        const decoded = decodeModel(new Uint8Array(await readFile(model)), `${key}/model.onnx`);
        const locations = new Set<string>();
        for (const t of decoded.graph!.initializer ?? []) if (isExternal(t)) locations.add(externalRef(t, `${key}/model.onnx`).location);
        for (const location of locations) {
          if (location.includes('..') || location.startsWith('/')) continue; // readBase refuses it with a clear message
          await place(`${key}/${location}`);
        }
        await optional(`${key}/config.json`);
      } else if (OPTIONAL_FILES[key]) {
        for (const name of OPTIONAL_FILES[key]) await optional(`${key}/${name}`);
      }
    }
    return { path: dir, source: root, dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}
