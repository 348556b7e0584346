/** Seeding the R2 binding and calling the worker inside workerd, waiting for its waitUntil work. */
import { createExecutionContext, waitOnExecutionContext } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { sha256, digestHex } from '../../common/digest.ts';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import app, { type EdgeEnv } from '../../edge/index.ts';

export const ORIGIN = 'https://edge.test';

export interface Fetched {
  res: Response;
  body: Uint8Array;
}

/** Sends one request through the worker and waits for everything it scheduled (cache puts). */
export async function send(path: string, init: RequestInit = {}, overrides: Partial<EdgeEnv> = {}): Promise<Fetched> {
  const ctx = createExecutionContext();
  const res = await app.fetch(new Request(`${ORIGIN}${path}`, init), { ...env, ...overrides }, ctx);
  const body = new Uint8Array(await res.arrayBuffer());
  await waitOnExecutionContext(ctx);
  return { res, body };
}

/** Deterministic bytes that differ at every offset a test looks at. */
export function patternBytes(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
  return out;
}

export interface SeededBlob {
  bytes: Uint8Array;
  hex: string;
  key: string;
  path: string;
  etag: string;
}

/** Puts bytes under their real digest, as `fuseload publish` would. */
export async function seedBlob(bytes: Uint8Array): Promise<SeededBlob> {
  const hex = digestHex(await sha256(bytes));
  const key = blobKey(`sha256:${hex}`);
  await env.ARTIFACTS.put(key, bytes);
  return { bytes, hex, key, path: `/${key}`, etag: `"${hex}"` };
}

export async function seedManifest(json: string): Promise<SeededBlob> {
  const bytes = new TextEncoder().encode(json);
  const hex = digestHex(await sha256(bytes));
  const key = manifestKey(`sha256:${hex}`);
  await env.ARTIFACTS.put(key, bytes);
  return { bytes, hex, key, path: `/${key}`, etag: `"${hex}"` };
}

export async function seedTag(model: string, tag: string, manifestHex: string): Promise<{ key: string; path: string; httpEtag: string }> {
  const key = tagKey(model, tag);
  const object = await env.ARTIFACTS.put(key, JSON.stringify({ manifest: `sha256:${manifestHex}` }));
  if (!object) throw new Error(`put ${key} returned null`);
  return { key, path: `/${key}`, httpEtag: object.httpEtag };
}

/** All response headers, for comparing HEAD with GET. */
export function headerMap(res: Response): Record<string, string> {
  return Object.fromEntries(res.headers);
}
