/**
 * Signed URLs for private artifacts: HMAC-SHA256 over the path and an expiry, with
 * WebCrypto only, so the CLI (Node) signs exactly what the worker (workerd) checks.
 *
 *   https://edge.example/blobs/sha256/<hex>?exp=<unix seconds>&sig=<64 hex>
 */

/** How a signature check came out; `missing` is 401, `expired` and `invalid` are 403. */
export type SignatureCheck = 'valid' | 'missing' | 'expired' | 'invalid';

const encoder = new TextEncoder();

function hmacKey(secret: string, usage: 'sign' | 'verify'): Promise<CryptoKey> {
  return crypto.subtle.importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
}

/** The signed message: the path as requested (`/` + key) and the expiry, newline-separated. */
function message(path: string, exp: number): Uint8Array<ArrayBuffer> {
  return encoder.encode(`${path}\n${exp}`) as Uint8Array<ArrayBuffer>;
}

function toHex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(hex: string): Uint8Array<ArrayBuffer> | null {
  if (!/^(?:[0-9a-f]{2})+$/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Lower-case hex HMAC-SHA256 of `path` and `exp` (unix seconds). */
export async function signPath(path: string, exp: number, secret: string): Promise<string> {
  const key = await hmacKey(secret, 'sign');
  return toHex(await crypto.subtle.sign('HMAC', key, message(path, exp)));
}

export interface SignUrlOptions {
  /** Origin of the edge worker, e.g. `https://artifacts.example.com`. */
  origin: string;
  /** Object key, e.g. `blobs/sha256/<hex>`. */
  key: string;
  /** Lifetime in seconds from `now`. */
  ttlSeconds: number;
  secret: string;
  /** Clock, for tests; default Date.now(). */
  now?: number;
}

/** A URL for `key` that the worker accepts until now + ttl. */
export async function signUrl(options: SignUrlOptions): Promise<string> {
  const exp = Math.floor((options.now ?? Date.now()) / 1000) + Math.floor(options.ttlSeconds);
  const url = new URL(`/${options.key}`, options.origin);
  url.searchParams.set('exp', String(exp));
  url.searchParams.set('sig', await signPath(url.pathname, exp, options.secret));
  return url.href;
}

/**
 * Checks `exp` and `sig` for `path`. crypto.subtle.verify compares in constant time,
 * so a forger learns nothing from how long a wrong guess took.
 */
export async function verifySignature(
  path: string,
  exp: string | null,
  sig: string | null,
  secret: string,
  now: number = Date.now(),
): Promise<SignatureCheck> {
  if (exp === null && sig === null) return 'missing';
  if (exp === null || sig === null || !/^\d{1,12}$/.test(exp)) return 'invalid';
  const signature = fromHex(sig);
  if (!signature || signature.length !== 32) return 'invalid';
  const key = await hmacKey(secret, 'verify');
  const ok = await crypto.subtle.verify('HMAC', key, signature, message(path, Number(exp)));
  if (!ok) return 'invalid';
  return Number(exp) * 1000 < now ? 'expired' : 'valid';
}
