/** Bindings of the edge worker (wrangler.toml) and per-request variables. */
import type { ObjectRoute } from './routes.ts';

export interface EdgeEnv {
  /** The artifact bucket: blobs, manifests and tags (DESIGN.md). */
  ARTIFACTS: R2Bucket;
  /** HMAC key for signed URLs (`wrangler secret put SIGNING_SECRET`); unset = public. */
  SIGNING_SECRET?: string;
  /** Bearer token accepted instead of a signed URL, when SIGNING_SECRET is set. */
  ACCESS_TOKEN?: string;
}

export type EdgeBindings = {
  Bindings: EdgeEnv;
  Variables: { route: ObjectRoute };
};
