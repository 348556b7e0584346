/**
 * `fuseload sign <key> --ttl <seconds> [--origin <url>]`: a signed URL for a private
 * artifact, checked by the edge worker against the same SIGNING_SECRET.
 */
import { type Command } from 'commander';
import { positiveInt } from '../cli-options.ts';
import { badInput } from '../../common/errors.ts';
import { parseObjectKey } from '../../common/keys.ts';
import { signUrl } from '../../common/signed-url.ts';

interface SignFlags {
  ttl: number;
  origin: string;
}

const ttlSeconds = positiveInt('--ttl');

/** Signs `key` (an object key, with or without a leading `/`) for `ttl` seconds from now. */
export async function signKey(key: string, flags: SignFlags, secret: string | undefined): Promise<string> {
  if (!secret) throw badInput('FUSELOAD_SIGNING_SECRET', 'not set (use the value given to `wrangler secret put SIGNING_SECRET`)');
  const bare = key.replace(/^\/+/, '');
  if (!parseObjectKey(bare)) {
    throw badInput(key, 'not an artifact key (want blobs/sha256/<hex>, manifests/sha256/<hex>.json or tags/<model>/<tag>.json)');
  }
  let origin: string;
  try {
    origin = new URL(flags.origin).origin;
  } catch {
    throw badInput('--origin', `"${flags.origin}" is not a URL`);
  }
  return signUrl({ origin, key: bare, ttlSeconds: flags.ttl, secret });
}

export function register(program: Command): void {
  program
    .command('sign')
    .description('print a signed URL for a private artifact (secret from $FUSELOAD_SIGNING_SECRET)')
    .argument('<key>', 'object key, e.g. manifests/sha256/<hex>.json')
    .requiredOption('--ttl <seconds>', 'how long the URL stays valid', ttlSeconds)
    .option('--origin <url>', 'the edge worker origin', 'http://127.0.0.1:8787')
    .action(async (key: string, flags: SignFlags) => {
      process.stdout.write(`${await signKey(key, flags, process.env.FUSELOAD_SIGNING_SECRET)}\n`);
    });
}
