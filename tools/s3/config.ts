/**
 * Where S3-compatible storage is and how to sign for it, from the environment names the
 * original service's users already have (B2_*), plus S3_ENDPOINT / R2_ACCOUNT_ID. Flags win.
 *
 * Endpoint, first that applies:
 *   --endpoint / S3_ENDPOINT               as given (MinIO, a test server, …)
 *   --r2-account / R2_ACCOUNT_ID           https://<account>.r2.cloudflarestorage.com, region `auto`
 *   B2_REGION                              https://s3.<region>.backblazeb2.com (Backblaze B2)
 *   none                                   AWS S3 in the region (default us-east-1)
 */
import { S3Client } from '@aws-sdk/client-s3';
import { FuseloadError } from '../../common/errors.ts';

// Node 20 is pinned by the project (DESIGN.md); the SDK's "upgrade Node" warning is noise on
// every CLI run, so it is silenced unless the user asked for it explicitly.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3Flags {
  bucket?: string;
  endpoint?: string;
  region?: string;
  r2Account?: string;
  keyId?: string;
  secretKey?: string;
}

export interface S3Target {
  bucket: string;
  /** Undefined means AWS S3's own endpoint for `region`. */
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  credentials: { accessKeyId: string; secretAccessKey: string };
}

export interface S3ClientOptions {
  /** Total attempts per request, first try included (the SDK backs off between them). Default 5. */
  maxAttempts?: number;
  /** Milliseconds without a response byte before a request is retried. Default 60 000. */
  requestTimeoutMs?: number;
}

/** Reads the target from flags and env; `needBucket: false` for `s3://bucket/key` inputs. */
export function resolveS3Target(flags: S3Flags = {}, env: NodeJS.ProcessEnv = process.env, needBucket = true): S3Target {
  const bucket = flags.bucket ?? env.B2_BUCKET ?? '';
  if (needBucket && !bucket) throw new FuseloadError('bad-input', 'publish: no bucket: pass --bucket or set B2_BUCKET');
  const r2Account = flags.r2Account ?? env.R2_ACCOUNT_ID;
  let endpoint = flags.endpoint ?? env.S3_ENDPOINT;
  let region = flags.region ?? env.B2_REGION;
  if (!endpoint && r2Account) {
    if (!/^[A-Za-z0-9]+$/.test(r2Account)) throw new FuseloadError('bad-input', 'R2_ACCOUNT_ID: must be the alphanumeric account id');
    endpoint = `https://${r2Account}.r2.cloudflarestorage.com`;
    region = flags.region ?? 'auto';
  } else if (!endpoint && region) {
    endpoint = `https://s3.${region}.backblazeb2.com`;
  }
  if (endpoint) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw new FuseloadError('bad-input', `S3_ENDPOINT: "${safeEndpoint(endpoint)}" is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new FuseloadError('bad-input', `S3_ENDPOINT: "${safeEndpoint(endpoint)}" must be http:// or https://`);
    }
    if (url.username || url.password) {
      throw new FuseloadError('bad-input', 'S3_ENDPOINT: must not carry credentials; use B2_KEY_ID and B2_SECRET_KEY');
    }
  }
  const accessKeyId = flags.keyId ?? env.B2_KEY_ID ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = flags.secretKey ?? env.B2_SECRET_KEY ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new FuseloadError('auth', `no credentials for ${describeTarget({ bucket, endpoint })}: set B2_KEY_ID and B2_SECRET_KEY`);
  }
  return {
    bucket,
    endpoint,
    region: region || 'us-east-1',
    // Custom endpoints (MinIO, B2, R2, test servers) are addressed by path: bucket names
    // need no DNS and TLS certificates need not cover <bucket>.<host>.
    forcePathStyle: Boolean(endpoint),
    credentials: { accessKeyId, secretAccessKey },
  };
}

export function createS3Client(target: S3Target, options: S3ClientOptions = {}): S3Client {
  return new S3Client({
    region: target.region,
    endpoint: target.endpoint,
    forcePathStyle: target.forcePathStyle,
    credentials: target.credentials,
    // The default streams aws-chunked bodies with trailing checksums, which R2 and other
    // S3-compatible stores reject or store corrupted (DESIGN.md, pinned toolchain).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: options.maxAttempts ?? 5,
    retryMode: 'standard',
    requestHandler: { requestTimeout: options.requestTimeoutMs ?? 60_000, connectionTimeout: 10_000 },
  });
}

/** An endpoint fit to print: scheme, host and path only (no userinfo, no query). */
export function safeEndpoint(endpoint: string | undefined): string {
  if (!endpoint) return 'AWS S3';
  try {
    const u = new URL(endpoint);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return '(invalid endpoint)';
  }
}

/** `bucket "x" at https://host` — how every S3 message names where it went; never a key. */
export function describeTarget(t: { bucket: string; endpoint?: string }): string {
  return `bucket "${t.bucket}" at ${safeEndpoint(t.endpoint)}`;
}
