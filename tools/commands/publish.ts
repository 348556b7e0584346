/**
 * `fuseload publish <dir> [--tag <tag>]`: blobs, then manifests, then the tag, to an
 * S3-compatible bucket (B2_* / S3_ENDPOINT / R2_ACCOUNT_ID) or, with --local, to the R2
 * state `wrangler dev` serves.
 */
import { SingleBar } from 'cli-progress';
import { type Command } from 'commander';
import { positiveInt } from '../cli-options.ts';
import { toDigest } from '../../common/digest.ts';
import { userFacingError } from '../../common/errors.ts';
import { readArtifactDir } from '../publish/artifact.ts';
import type { PublishOptions, PublishReport } from '../publish/publish.ts';
import type { PublishTarget } from '../publish/target.ts';
import type { BucketTargetOptions } from '../s3/bucket-target.ts';

type CommandOptions = PublishOptions & BucketTargetOptions;

interface PublishFlags {
  tag?: string;
  fingerprint?: string;
  dryRun?: boolean;
  json?: boolean;
  local?: boolean;
  persistTo?: string;
  bucket?: string;
  endpoint?: string;
  region?: string;
  r2Account?: string;
  concurrency: number;
  partSize: number;
  attempts: number;
}


export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** A bytes-and-rate bar on stderr, only for a person watching (a TTY, no --json). */
function progressBar(enabled: boolean): { onProgress?: PublishOptions['onProgress']; stop(): void } {
  if (!enabled) return { stop() {} };
  const started = Date.now();
  const bar = new SingleBar(
    { stream: process.stderr, format: 'publish [{bar}] {percentage}% {done}/{all} {rate}', hideCursor: true, clearOnComplete: true },
  );
  let begun = false;
  return {
    onProgress({ loaded, total }) {
      const rate = `${formatBytes(loaded / Math.max(0.001, (Date.now() - started) / 1000))}/s`;
      const payload = { done: formatBytes(loaded), all: formatBytes(total), rate };
      if (!begun) {
        bar.start(total, loaded, payload);
        begun = true;
      } else bar.update(loaded, payload);
    },
    stop() {
      if (begun) bar.stop();
    },
  };
}

/**
 * Where `--dry-run` compares when no bucket (or no credentials) is configured: nothing is
 * there, so everything is listed. A dry run needs no bucket, endpoint or key.
 */
class NothingThere implements PublishTarget {
  readonly description = 'no bucket (none configured: everything is listed)';
  async check() {}
  async head() {
    return null;
  }
  async get() {
    return null;
  }
  async put(): Promise<void> {
    throw new Error('a dry run uploads nothing');
  }
  async putStream(): Promise<void> {
    throw new Error('a dry run uploads nothing');
  }
  async close() {}
}

/** True when flags and env name a bucket and the keys to it (else a dry run lists everything). */
function bucketConfigured(flags: PublishFlags, env: NodeJS.ProcessEnv = process.env): boolean {
  const bucket = flags.bucket ?? env.B2_BUCKET;
  const keyId = env.B2_KEY_ID ?? env.AWS_ACCESS_KEY_ID;
  const secret = env.B2_SECRET_KEY ?? env.AWS_SECRET_ACCESS_KEY;
  return Boolean(bucket && keyId && secret);
}

async function publish(dir: string, flags: PublishFlags, options: CommandOptions): Promise<PublishReport> {
  // The directory first: `publish ./nodir` says so before asking about buckets or keys.
  await readArtifactDir(dir);
  // The S3 SDK loads only when publishing (it is most of the CLI's start-up otherwise).
  const { publishArtifact, publishLocal, publishToBucket } = await import('../publish/index.ts');
  if (flags.local) return publishLocal(dir, { ...options, persistTo: flags.persistTo });
  if (options.dryRun && !bucketConfigured(flags)) return publishArtifact(dir, new NothingThere(), options);
  return publishToBucket(dir, {
    ...options,
    s3: { bucket: flags.bucket, endpoint: flags.endpoint, region: flags.region, r2Account: flags.r2Account },
  });
}

function printReport(report: PublishReport): void {
  const out = process.stdout;
  if (report.dryRun) {
    for (const key of report.uploaded) out.write(`would upload ${key}\n`);
    out.write(`dry run: ${report.uploaded.length} to upload (${formatBytes(report.bytesUploaded)}), ${report.skipped.length} already in ${report.target}\n`);
  } else {
    out.write(`uploaded ${report.uploaded.length} (${formatBytes(report.bytesUploaded)}), skipped ${report.skipped.length} already in ${report.target}\n`);
  }
  for (const f of report.fingerprints) out.write(`fingerprint ${f}\n`);
  if (report.tag) out.write(`tag ${report.tag.key} -> ${report.tag.manifest}\n`);
}

export function register(program: Command): void {
  program
    .command('publish')
    .description('upload an artifact directory: blobs, then manifests, then the tag')
    .argument('<dir>', 'artifact directory written by `fuseload build`')
    .option('--tag <tag>', 'point tags/<model>/<tag>.json at the manifest')
    .option('--fingerprint <digest>', 'publish only this manifest of the directory (needed with --tag when it holds several)')
    .option('--dry-run', 'list what would be uploaded; upload nothing')
    .option('--json', 'print a JSON report instead of text (no progress bar)')
    .option('--local', "write into wrangler dev's local R2 state instead of a bucket")
    .option('--persist-to <dir>', 'with --local: the state directory, as `wrangler dev --persist-to` (default .wrangler/state beside wrangler.toml)')
    .option('--bucket <name>', 'bucket (default $B2_BUCKET)')
    .option('--endpoint <url>', 'S3 endpoint (default $S3_ENDPOINT)')
    .option('--region <region>', 'region (default $B2_REGION, `auto` for R2)')
    .option('--r2-account <id>', 'Cloudflare account id for R2 (default $R2_ACCOUNT_ID)')
    .option('--concurrency <n>', 'blobs uploaded at once', positiveInt('--concurrency'), 4)
    .option('--part-size <MiB>', 'multipart part size; larger blobs go in parts', positiveInt('--part-size'), 16)
    .option('--attempts <n>', 'attempts per request, with backoff, on 5xx and timeouts', positiveInt('--attempts'), 5)
    .action(async (dir: string, flags: PublishFlags) => {
      const bar = progressBar(Boolean(process.stderr.isTTY) && !flags.json);
      let report: PublishReport;
      try {
        report = await publish(dir, flags, {
          tag: flags.tag,
          fingerprint: flags.fingerprint ? toDigest(flags.fingerprint, '--fingerprint') : undefined,
          dryRun: flags.dryRun,
          concurrency: flags.concurrency,
          streamThreshold: flags.partSize * 1024 * 1024,
          partSize: Math.max(5, flags.partSize) * 1024 * 1024,
          maxAttempts: flags.attempts,
          onProgress: bar.onProgress,
        });
      } catch (e) {
        if (!flags.json) throw e;
        // --json: the failure is JSON too, on stdout where the report would have been.
        const user = userFacingError(e);
        process.stdout.write(`${JSON.stringify({ error: user?.code ?? 'internal', message: user?.message ?? `internal error: ${(e as Error)?.message ?? String(e)}` })}\n`);
        process.exitCode = user ? 1 : 70;
        return;
      } finally {
        bar.stop();
      }
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else printReport(report);
    });
}
