/**
 * Reading build inputs: the base model (and its external data files) and each LoRA, with
 * their digests. Everything that can be wrong with an input is found here, before a byte
 * is written anywhere.
 */
import { open, readFile, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize } from 'node:path';
import { canonicalJsonBytes } from '../../common/canonical-json.ts';
import { type Digest, sha256 } from '../../common/digest.ts';
import { badInput } from '../../common/errors.ts';
import { type LoraAdapter, type PeftConfig, readLora } from '../../common/lora/adapter.ts';
import { readPeftConfig } from '../lora-source.ts';
import { type FileHashing, hashFilesInWorker } from './hash-worker.ts';
import { decodeModel, EXTERNAL, type ExternalRef, externalRef, isExternal, type ModelProto } from '../onnx/model.ts';
import { readSkeleton } from '../onnx/skeleton.ts';

/** An .onnx larger than this is read without its inline weights (default 32 MiB). */
export const STREAM_ABOVE = 32 * 1024 * 1024;
/** The `location` inline weights get while a build reads them from the .onnx itself (never written out). */
const SELF_LOCATION = '\u0000self';

export interface BaseModel {
  path: string;
  /** For the manifest: a basename, never a host path. */
  source: string;
  /** Resolves once the base (and its external data) is hashed. */
  digest: Promise<Digest>;
  /** Stops hashing, when the build ends early. */
  cancel(): Promise<void>;
  model: ModelProto;
  /** External data files in first-use order: location → absolute path and size. */
  external: Map<string, { path: string; size: number }>;
  refs: Map<string, ExternalRef>;
}

export async function fileSize(path: string, input: string): Promise<number> {
  try {
    const s = await stat(path);
    if (!s.isFile()) throw badInput(input, 'is not a file');
    return s.size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw badInput(input, 'no such file');
    throw e;
  }
}

/**
 * base.digest: sha256 of the .onnx bytes; with external data, sha256 of the canonical JSON
 * `{"external":[<digest of each external file, first-use order>],"graph":<digest of .onnx>}`.
 */
export async function readBase(path: string, onHash?: (bytes: number) => void, options: { streamAbove?: number } = {}): Promise<BaseModel> {
  const input = basename(path);
  const size = await fileSize(path, path);
  const external = new Map<string, { path: string; size: number }>();
  const refs = new Map<string, ExternalRef>();
  // A large .onnx holds its weights inline: read its structure only, and treat each
  // initializer's raw_data as external data in the .onnx itself (tools/onnx/skeleton.ts), so
  // peak memory stays at one tensor whatever the model's size.
  if (size > (options.streamAbove ?? STREAM_ABOVE)) {
    const fh = await open(path, 'r');
    let skeleton;
    try {
      skeleton = await readSkeleton(fh, size, input);
    } finally {
      await fh.close();
    }
    const model = decodeModel(skeleton.bytes, input);
    const location = SELF_LOCATION;
    external.set(location, { path, size });
    (model.graph!.initializer ?? []).forEach((t, i) => {
      const span = skeleton.spans[i];
      if (!span) return;
      delete t.rawData;
      t.dataLocation = EXTERNAL;
      t.externalData = [
        { key: 'location', value: location },
        { key: 'offset', value: String(span.offset) },
        { key: 'length', value: String(span.length) },
      ];
      refs.set(t.name!, externalRef(t, input));
    });
    for (const t of model.graph!.initializer ?? []) {
      if (!isExternal(t) || refs.has(t.name!)) continue;
      throw badInput(input, `initializer "${t.name}" has external data besides inline weights; fuseload reads one or the other`);
    }
    // The digest is the .onnx file's, as when it is read whole; hashed on a worker thread.
    const hashing = hashFilesInWorker([path], onHash);
    const digest = hashing.digests.then((d) => d[0]);
    digest.catch(() => {});
    return { path, source: input, digest, cancel: async () => hashing.cancel(), model, external, refs };
  }
  const bytes = await readFile(path);
  const model = decodeModel(bytes, input);
  const graphDigest = await sha256(bytes);
  for (const t of model.graph!.initializer ?? []) {
    if (!isExternal(t)) continue;
    const ref = externalRef(t, input);
    if (isAbsolute(ref.location) || normalize(ref.location).startsWith('..')) {
      throw badInput(input, `initializer "${t.name}" has external data at "${ref.location}", outside the model's directory`);
    }
    let file = external.get(ref.location);
    if (!file) {
      const p = join(dirname(path), ref.location);
      file = { path: p, size: await fileSize(p, `${input}: external data "${ref.location}"`) };
      external.set(ref.location, file);
    }
    if (ref.offset + ref.length > file.size) {
      throw badInput(input, `initializer "${t.name}" ends at byte ${ref.offset + ref.length} of "${ref.location}" but the file has ${file.size}`);
    }
    refs.set(t.name!, ref);
  }
  // External data is hashed on a worker thread while the build pass runs (see build.ts).
  let hashing: FileHashing | undefined;
  let digest: Promise<Digest>;
  if (external.size) {
    hashing = hashFilesInWorker([...external.values()].map((f) => f.path), onHash);
    const files = hashing.digests;
    digest = files.then((digests) => sha256(canonicalJsonBytes({ graph: graphDigest, external: digests })));
    digest.catch(() => {});
  } else digest = Promise.resolve(graphDigest);
  return { path, source: input, digest, cancel: async () => hashing?.cancel(), model, external, refs };
}

export interface LoraInput {
  path: string;
  source: string;
  scale: number;
  bytes: Uint8Array;
  digest: Digest;
  adapter: LoraAdapter;
  /** The PEFT config that was applied, if any (it changes the math, so the cache key has it). */
  config?: PeftConfig;
  configSource?: string;
}

export async function readLoraInput(path: string, scale: number): Promise<LoraInput> {
  const input = basename(path);
  await fileSize(path, path);
  const bytes = new Uint8Array(await readFile(path));
  const digest = await sha256(bytes);
  const peft = readPeftConfig(path);
  const config = peft?.config;
  const adapter = readLora(bytes, input, config);
  return { path, source: input, scale, bytes, digest, adapter, config, configSource: peft && basename(peft.file) };
}
