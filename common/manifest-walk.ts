/**
 * Walking a manifest without validating one (manifest.ts validates, and re-exports these): the
 * component roles in their fixed order, either schema as a pipeline, the blobs a runtime needs.
 * Apart from manifest.ts's zod schemas, so a page that only shows a loaded pipeline's details (the
 * demo's main thread, whose loader runs in a worker) does not build them: that module evaluation
 * was one main-thread task of 50–80 ms when the demo page opened, and over 200 ms on a busy CPU.
 */
import type { Digest } from './digest.ts';
import type { AnyManifest, BlobRef, Component, PipelineManifest } from './manifest.ts';

/** A whole pipeline, by component (docs/artifact.md, "Schema 2"). */
export const PIPELINE_SCHEMA = 'fuseload.pipeline/2';

/** Component roles, diffusers' folder names; `model` is the one graph of a `graph` pipeline. */
export const ROLES = ['text_encoder', 'text_encoder_2', 'unet', 'transformer', 'vae_decoder', 'vae_encoder', 'model'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Either schema as a pipeline: schema 1 reads as a `graph` pipeline whose one component is
 * `model` (DESIGN.md: "Schema-1 manifests stay readable as a graph pipeline of one component").
 */
export function pipelineView(m: AnyManifest): PipelineManifest {
  if (m.schema === PIPELINE_SCHEMA) return m;
  return {
    schema: PIPELINE_SCHEMA,
    name: m.name,
    kind: 'graph',
    components: { model: { graph: m.graph, shards: m.shards, tensors: m.tensors, base: m.base } },
    assets: {},
    loras: m.loras.map((l) => ({ ...l, size: 0, components: { model: { matched: l.matched, unmatched: l.unmatched } } })),
    build: m.build,
  };
}

/** The components in a fixed order (ROLES'), so every walk over them is deterministic. */
export function componentEntries(m: PipelineManifest): [Role, Component][] {
  return ROLES.filter((r) => m.components[r]).map((r) => [r, m.components[r]!]);
}

/** The refs with each digest once, the first of each kept. */
export function uniqueRefs<T extends { digest: Digest }>(refs: T[]): T[] {
  const seen = new Set<string>();
  return refs.filter((r) => !seen.has(r.digest) && !!seen.add(r.digest));
}

/** Every blob a runtime needs for a manifest (each component's graph then shards, then assets), without duplicates. */
export function manifestBlobs(m: AnyManifest): BlobRef[] {
  const p = pipelineView(m);
  const refs: BlobRef[] = [];
  for (const [, c] of componentEntries(p)) refs.push(c.graph, ...c.shards);
  for (const path of Object.keys(p.assets).sort()) refs.push(p.assets[path]);
  return uniqueRefs(refs);
}
