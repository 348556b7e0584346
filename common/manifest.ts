/**
 * The artifact manifest (DESIGN.md, "The artifact"): canonical JSON whose SHA-256 is the
 * artifact's fingerprint. Validated strictly on read; nothing in it depends on the host.
 */
import { z } from 'zod';
import { canonicalJsonBytes } from './canonical-json.ts';
import { type Digest, isDigest, sha256 } from './digest.ts';
import { FuseloadError } from './errors.ts';
import { isName } from './keys.ts';
import { componentEntries, manifestBlobs, PIPELINE_SCHEMA, pipelineView, type Role, ROLES, uniqueRefs } from './manifest-walk.ts';

// Walking a manifest needs no validation, and lives apart from these schemas (manifest-walk.ts).
export { componentEntries, manifestBlobs, PIPELINE_SCHEMA, pipelineView, type Role, ROLES };

export const MANIFEST_SCHEMA = 'fuseload.artifact/1';

export const KINDS = ['text-to-image', 'graph'] as const;
export type PipelineKind = (typeof KINDS)[number];

const digest = z.string().refine(isDigest, 'must be sha256:<64 lowercase hex>') as unknown as z.ZodType<Digest>;
const size = z.number().int().nonnegative();

export const DTYPES = ['float32', 'float16', 'bfloat16', 'int64', 'int32', 'int8', 'uint8', 'bool', 'float64'] as const;
export type TensorDtype = (typeof DTYPES)[number];

/**
 * How a LoRA delta lands on a weight:
 * - `oi`:   [out, in] (PyTorch Linear, Gemm with transB=1): W += s·B·A
 * - `io`:   [in, out] (MatMul, Gemm with transB=0):          W += s·(B·A)ᵀ
 * - `oihw`: convolution [out, in/groups, kh, kw]:            W += s·reshape(B·A)
 * - `none`: not a LoRA target (norms, biases, …)
 */
export const LAYOUTS = ['oi', 'io', 'oihw', 'none'] as const;
export type TensorLayout = (typeof LAYOUTS)[number];

export const BlobRefSchema = z.strictObject({ digest, size });

export const TensorEntrySchema = z.strictObject({
  /** Initializer name in the graph. */
  name: z.string().min(1),
  /** Index into `shards`. */
  shard: z.number().int().nonnegative(),
  offset: size,
  length: size,
  dtype: z.enum(DTYPES),
  shape: z.array(z.number().int().nonnegative()),
  layout: z.enum(LAYOUTS),
  /**
   * The module path LoRA keys resolve to, dotted as diffusers names it
   * (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); absent when not a target.
   */
  module: z.string().min(1).optional(),
});

export const LoraRecordSchema = z.strictObject({
  digest,
  scale: z.number().finite(),
  matched: z.number().int().nonnegative(),
  unmatched: z.number().int().nonnegative(),
  /** Key naming convention detected: kohya, peft or diffusers. */
  format: z.enum(['kohya', 'peft', 'diffusers']),
  /** Where it came from (file name or URL without credentials), for people; not a host path. */
  source: z.string(),
});

export const ManifestSchema = z.strictObject({
  schema: z.literal(MANIFEST_SCHEMA),
  name: z.string().refine(isName, 'must be a model name ([A-Za-z0-9][A-Za-z0-9._-]*)'),
  graph: BlobRefSchema,
  shards: z.array(BlobRefSchema),
  base: z.strictObject({ digest, source: z.string() }),
  loras: z.array(LoraRecordSchema),
  tensors: z.array(TensorEntrySchema),
  build: z.strictObject({
    tool: z.literal('fuseload'),
    version: z.string(),
    shardSize: z.number().int().positive(),
    alignment: z.number().int().positive(),
    strict: z.boolean(),
  }),
});

/** One graph of a pipeline: exactly what schema 1 has for its one graph. */
export const ComponentSchema = z.strictObject({
  graph: BlobRefSchema,
  shards: z.array(BlobRefSchema),
  tensors: z.array(TensorEntrySchema),
  base: z.strictObject({ digest, source: z.string() }),
});

const counts = z.strictObject({ matched: z.number().int().nonnegative(), unmatched: z.number().int().nonnegative() });

export const PipelineLoraRecordSchema = z.strictObject({
  digest,
  /** The LoRA file's size, so runtimes fetch it like any other blob. */
  size,
  scale: z.number().finite(),
  /** Totals over the pipeline; `components` says where each matched key landed. */
  matched: z.number().int().nonnegative(),
  unmatched: z.number().int().nonnegative(),
  components: z.partialRecord(z.enum(ROLES), counts),
  format: z.enum(['kohya', 'peft', 'diffusers']),
  source: z.string(),
});

/** A relative path in the diffusers layout (`tokenizer/vocab.json`): no `..`, no leading `/`. */
export const ASSET_PATH_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*(\/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$/;

export const BuildInfoSchema = z.strictObject({
  tool: z.literal('fuseload'),
  version: z.string(),
  shardSize: z.number().int().positive(),
  alignment: z.number().int().positive(),
  strict: z.boolean(),
});

export const PipelineManifestSchema = z.strictObject({
  schema: z.literal(PIPELINE_SCHEMA),
  name: z.string().refine(isName, 'must be a model name ([A-Za-z0-9][A-Za-z0-9._-]*)'),
  kind: z.enum(KINDS),
  components: z.partialRecord(z.enum(ROLES), ComponentSchema),
  assets: z.record(z.string().regex(ASSET_PATH_RE, 'asset paths are relative, without ".."'), BlobRefSchema),
  loras: z.array(PipelineLoraRecordSchema),
  build: BuildInfoSchema,
});

export type BlobRef = z.infer<typeof BlobRefSchema>;
export type Component = z.infer<typeof ComponentSchema>;
export type PipelineLoraRecord = z.infer<typeof PipelineLoraRecordSchema>;
export type PipelineManifest = z.infer<typeof PipelineManifestSchema>;
export type BuildInfo = z.infer<typeof BuildInfoSchema>;
export type TensorEntry = z.infer<typeof TensorEntrySchema>;
export type LoraRecord = z.infer<typeof LoraRecordSchema>;
/** Schema 1: one graph. */
export type Manifest = z.infer<typeof ManifestSchema>;
/** Either schema, as read from bytes. */
export type AnyManifest = Manifest | PipelineManifest;

export interface EncodedManifest {
  bytes: Uint8Array;
  fingerprint: Digest;
}

/** Canonical bytes and fingerprint of a manifest. Validates first: we never write a bad one. */
export async function encodeManifest(manifest: AnyManifest): Promise<EncodedManifest> {
  const checked = parseManifestObject(manifest, 'manifest');
  const bytes = canonicalJsonBytes(checked);
  return { bytes, fingerprint: await sha256(bytes) };
}

/**
 * Reads manifest bytes. With `expected`, the bytes must hash to it (a manifest is
 * self-verifying by its own digest), so a stale or tampered copy is refused.
 */
export async function decodeManifest(bytes: Uint8Array, input: string, expected?: Digest): Promise<AnyManifest> {
  if (expected) {
    const actual = await sha256(bytes);
    if (actual !== expected) {
      throw new FuseloadError('digest-mismatch', `${input}: manifest bytes hash to ${actual}, expected ${expected}`);
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new FuseloadError('bad-input', `${input}: manifest is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  return parseManifestObject(json, input);
}

export function parseManifestObject(json: unknown, input: string): AnyManifest {
  const schema = (json as { schema?: unknown } | null)?.schema;
  const result = (schema === PIPELINE_SCHEMA ? PipelineManifestSchema : ManifestSchema).safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue.path.length ? issue.path.join('.') : '(root)';
    throw new FuseloadError('bad-input', `${input}: manifest field ${where}: ${issue.message}`);
  }
  const m = result.data;
  for (const [role, c] of Object.entries(pipelineView(m).components)) checkComponent(c, m.schema === PIPELINE_SCHEMA ? `${input}: ${role}` : input);
  if (m.schema === PIPELINE_SCHEMA) {
    const roles = Object.keys(m.components);
    if (roles.length === 0) throw new FuseloadError('bad-input', `${input}: a pipeline needs at least one component`);
    if (m.kind === 'graph' && (roles.length !== 1 || !m.components.model)) throw new FuseloadError('bad-input', `${input}: a "graph" pipeline has exactly one component, "model"`);
    if (m.kind === 'text-to-image') {
      for (const role of ['text_encoder', 'vae_decoder'] as const) if (!m.components[role]) throw new FuseloadError('bad-input', `${input}: a text-to-image pipeline needs a ${role}`);
      if (!m.components.unet && !m.components.transformer) throw new FuseloadError('bad-input', `${input}: a text-to-image pipeline needs a unet or a transformer`);
    }
  }
  return m;
}

function checkComponent(c: Component, input: string): void {
  for (const t of c.tensors) {
    const shard = c.shards[t.shard];
    if (!shard) throw new FuseloadError('bad-input', `${input}: tensor "${t.name}" names shard ${t.shard}, but there are ${c.shards.length}`);
    if (t.offset + t.length > shard.size) {
      throw new FuseloadError('bad-input', `${input}: tensor "${t.name}" ends at byte ${t.offset + t.length} but shard ${t.shard} has ${shard.size}`);
    }
  }
}

/**
 * Every blob an artifact directory (or bucket) holds for a manifest: what the runtime needs
 * (`manifestBlobs`) plus the LoRA files it was built with, which load-time overlays fetch.
 * Schema 1 does not record LoRA sizes.
 */
export function artifactBlobs(m: AnyManifest): { digest: Digest; size?: number }[] {
  const loras = m.schema === PIPELINE_SCHEMA ? m.loras.map((l) => ({ digest: l.digest, size: l.size })) : m.loras.map((l) => ({ digest: l.digest }));
  return uniqueRefs([...manifestBlobs(m), ...loras]);
}

/** A tag: the only mutable object, a pointer to a manifest. */
export const TagSchema = z.strictObject({ manifest: digest });
export type Tag = z.infer<typeof TagSchema>;

export function parseTag(bytes: Uint8Array, input: string): Tag {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new FuseloadError('bad-input', `${input}: tag is not valid JSON`);
  }
  const result = TagSchema.safeParse(json);
  if (!result.success) throw new FuseloadError('bad-input', `${input}: tag must be {"manifest":"sha256:<hex>"}`);
  return result.data;
}

/** A manifest that must be schema 1 (one graph): for code and tests that speak of one graph. */
export function schema1(m: AnyManifest, input = 'manifest'): Manifest {
  if (m.schema !== MANIFEST_SCHEMA) throw new FuseloadError('bad-input', `${input}: is a ${m.schema} pipeline, not a ${MANIFEST_SCHEMA} graph`);
  return m;
}
