/**
 * Private models: with SIGNING_SECRET set, a request needs a valid signed URL
 * (common/signed-url.ts) or `Authorization: Bearer <ACCESS_TOKEN>`. Without the
 * secret the middleware lets everything through.
 */
import type { MiddlewareHandler } from 'hono';
import { verifySignature } from '../common/signed-url.ts';
import type { EdgeBindings } from './env.ts';

const encoder = new TextEncoder();

/** Constant-time equality: compares SHA-256 digests so neither length nor prefix leaks. */
export async function tokensEqual(a: string, b: string): Promise<boolean> {
  const [da, db] = await Promise.all([
    crypto.subtle.digest('SHA-256', encoder.encode(a)),
    crypto.subtle.digest('SHA-256', encoder.encode(b)),
  ]);
  const x = new Uint8Array(da);
  const y = new Uint8Array(db);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

function bearerToken(header: string | undefined): string | null {
  const m = header ? /^Bearer[ ]+(\S+)\s*$/i.exec(header) : null;
  return m ? m[1] : null;
}

/** 401 when no credentials came, 403 when they came but are wrong or expired. */
export function requireSignature(): MiddlewareHandler<EdgeBindings> {
  return async (c, next) => {
    const secret = c.env.SIGNING_SECRET;
    if (!secret) return next();
    const authorization = c.req.header('Authorization');
    if (authorization !== undefined) {
      const token = bearerToken(authorization);
      const expected = c.env.ACCESS_TOKEN;
      if (token !== null && expected && (await tokensEqual(token, expected))) return next();
      return c.text('Forbidden: bearer token not accepted\n', 403);
    }
    const url = new URL(c.req.url);
    const check = await verifySignature(url.pathname, url.searchParams.get('exp'), url.searchParams.get('sig'), secret);
    if (check === 'valid') return next();
    if (check === 'missing') {
      c.header('WWW-Authenticate', 'Bearer');
      return c.text('Unauthorized: this artifact needs a signed URL or a bearer token\n', 401);
    }
    return c.text(`Forbidden: signature ${check}\n`, 403);
  };
}
