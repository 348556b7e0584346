/**
 * A tag file in an artifact directory, as `fuseload publish` writes it (canonical JSON
 * `{"manifest": "<fingerprint>"}` at `tags/<model>/<tag>.json`), for tests and benches that
 * serve a built artifact straight from disk.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { canonicalJsonBytes } from '../../common/canonical-json.ts';
import type { Digest } from '../../common/digest.ts';
import { tagKey } from '../../common/keys.ts';

export async function writeTag(dir: string, model: string, fingerprint: Digest | string, tag = 'latest'): Promise<void> {
  const path = join(dir, tagKey(model, tag));
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, canonicalJsonBytes({ manifest: fingerprint }));
}
