/** `fuseload publish --local`: an artifact directory into wrangler dev's local R2 state. */
import { type PublishOptions, type PublishReport, publishArtifact } from '../publish/publish.ts';
import { type LocalR2Options, LocalR2Target } from './local-target.ts';

export * from './local-target.ts';

export async function publishLocal(dir: string, options: PublishOptions & LocalR2Options = {}): Promise<PublishReport> {
  const target = new LocalR2Target(options);
  try {
    return await publishArtifact(dir, target, options);
  } finally {
    await target.close();
  }
}
