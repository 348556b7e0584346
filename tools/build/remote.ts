/**
 * Remote build inputs (`s3://`, `https://`, `http://` for local servers). Each file is
 * fetched by the shared input resolver (tools/fetch-input: hashed while it streams into the
 * content-addressed store, S3 configuration and HF_TOKEN handling in one place), then linked
 * under its own name into a temp dir, so the build only ever reads local files and a base's
 * external-data files sit beside it under the names its graph gives them.
 */
import { copyFile, link, mkdtemp, readFile, rm } from 'node:fs/promises';
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
