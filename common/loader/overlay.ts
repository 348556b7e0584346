/**
 * Load-time LoRA overlays. This is the one place where overlays touch weights: they get
 * copies of the external-data files they change and never the base blobs, which stay
 * shared with the memory tier and every store.
 */
import type { Manifest } from '../manifest.ts';
import type { ExternalDataFile, LoraOverlay } from '../pipeline.ts';
import type { Digest } from '../digest.ts';
import { FuseloadError } from '../errors.ts';

export interface ResolvedOverlay {
  digest: Digest;
  scale: number;
}

/** Checks the requested overlays before anything is fetched. */
export function resolveOverlays(loras: LoraOverlay[] | undefined): ResolvedOverlay[] {
  if (!loras || loras.length === 0) return [];
  throw new FuseloadError('unsupported', `loras: load-time overlays are not supported yet (${loras.length} given); build a merged artifact with \`fuseload build --lora\``);
}

/** Stable text for the pipeline cache key: digests and scales, in the order applied. */
export function overlayKey(overlays: ResolvedOverlay[]): string {
  return overlays.map((o) => `${o.digest}*${o.scale}`).join('+');
}

/**
 * Returns the external data the engine gets: `files` itself when there are no overlays,
 * otherwise copies of the touched shards with the deltas applied.
 */
export async function applyOverlays(
  _manifest: Manifest,
  files: ExternalDataFile[],
  overlays: ResolvedOverlay[],
): Promise<{ files: ExternalDataFile[]; applied: { digest: Digest; scale: number; matched: number }[] }> {
  if (overlays.length === 0) return { files, applied: [] };
  throw new FuseloadError('unsupported', 'loras: load-time overlays are not supported yet');
}
