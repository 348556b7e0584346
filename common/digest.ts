/** Digests are written `sha256:<64 lowercase hex>` everywhere (DESIGN.md). */
import { badInput } from './errors.ts';

export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const HEX_RE = /^[0-9a-f]{64}$/;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && DIGEST_RE.test(value);
}

export function isHex(value: unknown): boolean {
  return typeof value === 'string' && HEX_RE.test(value);
}

/** Accepts `sha256:<hex>` or bare `<hex>`; returns the canonical `sha256:<hex>`. */
export function toDigest(value: string, input = 'digest'): Digest {
  if (isDigest(value)) return value;
  if (isHex(value)) return `sha256:${value}`;
  throw badInput(input, `"${value.slice(0, 80)}" is not a sha256 digest (want sha256:<64 lowercase hex>)`);
}

/** The bare hex of a digest: the file name under `blobs/sha256/`. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

function toHex(buffer: ArrayBuffer): string {
  const bytes = new Uint8Array(buffer);
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, '0');
  return out;
}

/** SHA-256 with WebCrypto, so the same code runs in Node, browsers and workerd. */
export async function sha256(bytes: Uint8Array | ArrayBuffer): Promise<Digest> {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const hash = await crypto.subtle.digest('SHA-256', view as Uint8Array<ArrayBuffer>);
  return `sha256:${toHex(hash)}`;
}
