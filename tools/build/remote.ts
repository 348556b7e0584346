/**
 * https:// (and http://) build inputs: fetched into a local temp dir first, so the build
 * itself only ever reads files. A base's external data files are fetched relative to its URL.
 * HF_TOKEN, when set, is sent to huggingface.co only, and never appears in a message.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FuseloadError } from '../../common/errors.ts';
import { decodeModel, externalRef, isExternal } from '../onnx/model.ts';

export function isRemote(src: string): boolean {
  return /^https?:\/\//i.test(src);
}

/** A URL fit for a manifest or a message: no credentials, no query, no fragment. */
export function publicUrl(src: string): string {
  const u = new URL(src);
  u.username = '';
  u.password = '';
  u.search = '';
  u.hash = '';
  return u.toString();
}

async function download(url: string, path: string): Promise<void> {
  const u = new URL(url);
  const headers: Record<string, string> = {};
  // fetch() refuses URLs with credentials: send them as Basic auth instead.
  if (u.username || u.password) {
    headers.authorization = `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`;
    u.username = '';
    u.password = '';
  } else if (process.env.HF_TOKEN && (u.hostname === 'huggingface.co' || u.hostname.endsWith('.huggingface.co'))) {
    headers.authorization = `Bearer ${process.env.HF_TOKEN}`;
  }
  let res: Response;
  try {
    res = await fetch(u, { headers, redirect: 'follow' });
  } catch (e) {
    // Only the error code: the message may quote the URL with its query.
    const code = ((e as Error).cause as { code?: string } | undefined)?.code ?? 'network error';
    throw new FuseloadError('network', `${publicUrl(url)}: fetch failed (${code})`);
  }
  if (!res.ok || !res.body) throw new FuseloadError(res.status === 404 ? 'not-found' : 'network', `${publicUrl(url)}: HTTP ${res.status}`);
  await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(path));
}

export interface LocalCopy {
  path: string;
  source: string;
  dispose(): Promise<void>;
}

/** Fetches a remote .onnx (with its external data) or LoRA (with a PEFT config beside it, if any). */
export async function fetchInput(url: string, kind: 'base' | 'lora'): Promise<LocalCopy> {
  const dir = await mkdtemp(join(tmpdir(), 'fuseload-input-'));
  const dispose = () => rm(dir, { recursive: true, force: true });
  try {
    const name = posix.basename(new URL(url).pathname) || (kind === 'base' ? 'model.onnx' : 'lora.safetensors');
    const path = join(dir, name);
    await download(url, path);
    if (kind === 'base') {
      const model = decodeModel(new Uint8Array(await readFile(path)), publicUrl(url));
      const locations = new Set<string>();
      for (const t of model.graph!.initializer ?? []) if (isExternal(t)) locations.add(externalRef(t, publicUrl(url)).location);
      for (const location of locations) {
        if (location.includes('..') || location.startsWith('/')) continue; // readBase refuses it with a clear message
        await download(new URL(location, url).toString(), join(dir, location));
      }
    } else {
      const config = name.replace(/\.safetensors$/, '.adapter_config.json');
      await download(new URL(config, url).toString(), join(dir, config)).catch(() => {}); // optional
    }
    return { path, source: publicUrl(url), dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}
