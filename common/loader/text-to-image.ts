/**
 * The `text-to-image` kind: a pipeline's sessions and assets handed to the generation loop
 * (common/generate). Owned by the kind, not by the loader or the server.
 */
import { FuseloadError } from '../errors.ts';
import type { Role } from '../manifest.ts';
import type { EngineSession, GenerateOptions, GenerateResult } from '../pipeline.ts';

export interface Generator {
  generate(options: GenerateOptions): Promise<GenerateResult>;
}

export function createGenerator(model: string, sessions: Partial<Record<Role, EngineSession>>, assets: Map<string, Uint8Array>): Generator {
  void sessions;
  void assets;
  return {
    async generate() {
      throw new FuseloadError('unsupported', `${model}: generation is not wired yet`);
    },
  };
}
