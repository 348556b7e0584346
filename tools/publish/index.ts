/** Publishing entry points for programs; the CLI (tools/commands/publish.ts) is a thin layer over these. */
import { type BucketTargetOptions, BucketTarget } from '../s3/bucket-target.ts';
import { type S3Flags, resolveS3Target } from '../s3/config.ts';
import { type PublishOptions, type PublishReport, publishArtifact } from './publish.ts';

export { publishArtifact, type PublishOptions, type PublishReport } from './publish.ts';
export { publishLocal } from '../local-r2/index.ts';

/** Publishes `dir` to the bucket named by flags/env (B2_*, S3_ENDPOINT, R2_ACCOUNT_ID). */
export async function publishToBucket(
  dir: string,
  options: PublishOptions & BucketTargetOptions & { s3?: S3Flags; env?: NodeJS.ProcessEnv } = {},
): Promise<PublishReport> {
  const target = new BucketTarget(resolveS3Target(options.s3, options.env), options);
  try {
    return await publishArtifact(dir, target, options);
  } finally {
    await target.close();
  }
}
