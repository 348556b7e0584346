/**
 * The one merge recipe for a tensor, called by `fuseload build` (tools/build/build.ts, merge())
 * and by load-time overlays (common/loader/overlay.ts, mergeTensor()), so a build-time merge
 * and an overlay give the same bytes:
 *
 * - order: applications in (LoRA digest, scale) order, stable for ties; scale 0 adds nothing
 *   (the base bytes come back as they are);
 * - dtype guard: only fp32 / fp16 / bf16 tensors are merged;
 * - math: fp32 from the stored dtype, every application in turn, cast back once;
 * - engine: a large fp32/fp16 weight goes through onnxruntime (`ort`: merge-ort.ts at build,
 *   EngineMerger at load) when its applications are all plain LoRA (one Gemm over the stacked
 *   factors) or one LoHa or one LoKr (no Tucker core, no DoRA); everything else (bf16, small
 *   tensors, LoCon with a core, GLoRA, DoRA, diff/norm/set, bias deltas, mixtures) through the
 *   shared JavaScript math (delta.ts for plain LoRA, adapter-delta.ts for the rest). The
 *   choice depends only on the tensor and its applications, never on timing.
 */
import { FuseloadError } from '../errors.ts';
import type { TensorLayout } from '../manifest.ts';
import { adapterDelta, addAdapterDelta, biasDelta, mergedWeight, needsBaseWeight, toTorchLayout, torchShape } from './adapter-delta.ts';
import { isPlainLora, type LoraModule } from './adapter.ts';
import { applyLoraDelta } from './delta.ts';
import { bytesToF32, f32ToBytes, type FloatDtype } from './dtype.ts';
import type { LoraPartTarget } from './match.ts';
import { lohaInputs, lokrInputs, loraInputs, type MergeDtype, type MergeInputs } from './overlay-merge.ts';

/** Tensors with at least this many elements merge on onnxruntime by default. */
export const DEFAULT_ORT_MIN_ELEMENTS = 1 << 16;

/** Bumped whenever the recipe would merge the same inputs differently: build caches key on it. */
export const MERGE_RECIPE_VERSION = 2;

/** The tensor a merge writes: a tensor index entry will do. */
export interface MergeTarget {
  name: string;
  dtype: string;
  shape: readonly number[];
  layout: TensorLayout;
}

/** One module of one LoRA file landing on the tensor, at the user's scale. */
export interface MergeApplication {
  module: LoraModule;
  /** The module's weight formula, or its bias delta. */
  part: LoraPartTarget;
  scale: number;
  /** The LoRA file's digest: with the scale, the order applications are applied in. */
  digest: string;
  /** The LoRA file, for messages. */
  source: string;
}

/**
 * An onnxruntime merge of a weight (little-endian `dtype`, stored [inputs.rows, inputs.cols]):
 * new bytes of the same dtype, or null when no engine can run it (the recipe then does the
 * math in JavaScript).
 */
export type OrtMerge = (bytes: Uint8Array, dtype: MergeDtype, inputs: MergeInputs) => Promise<Uint8Array | null>;

export interface MergeRecipeOptions {
  /** Tensors with at least this many elements go through `ort` (default DEFAULT_ORT_MIN_ELEMENTS). */
  ortMinElements?: number;
  /** The onnxruntime merge; without one, every merge is JavaScript. */
  ort?: OrtMerge;
}

/** The dtype guard: the tensor's dtype, or an 'unsupported' error naming the LoRA, the weight and `where` it is. */
export function checkMergeDtype(target: Pick<MergeTarget, 'name' | 'dtype'>, lora: string, where?: string): FloatDtype {
  const { dtype } = target;
  if (dtype !== 'float32' && dtype !== 'float16' && dtype !== 'bfloat16') {
    throw new FuseloadError('unsupported', `${lora}: weight "${target.name}"${where ? ` of ${where}` : ''} is ${dtype}, not fp32/fp16/bf16`);
  }
  return dtype;
}

/** (digest, scale) order, stable for equal keys. */
export function orderApplications<A extends Pick<MergeApplication, 'digest' | 'scale'>>(apps: readonly A[]): A[] {
  return [...apps].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : a.scale - b.scale));
}

/**
 * The onnxruntime form of a tensor's (non-zero-scale, ordered) applications, or undefined when
 * they have none: all plain LoRA, or exactly one LoHa / LoKr weight delta without Tucker or DoRA.
 */
export function ortInputs(target: MergeTarget, apps: readonly MergeApplication[]): MergeInputs | undefined {
  if (target.layout === 'none' || apps.length === 0 || apps.some((a) => a.part !== 'weight')) return undefined;
  const layout = target.layout;
  if (apps.every((a) => isPlainLora(a.module))) {
    return loraInputs(
      apps.map(({ module, scale }) => ({ up: module.up!, down: module.down!, alpha: module.alpha, scale })),
      target.shape,
      layout,
    );
  }
  if (apps.length !== 1) return undefined;
  const a = apps[0].module.adapter;
  if (!a || a.doraScale) return undefined;
  if (a.type === 'loha' && !a.t1) return lohaInputs(a, apps[0].scale, target.shape, layout);
  if (a.type === 'lokr') return lokrInputs(a, apps[0].scale, layout);
  return undefined;
}

/** Which engine the recipe uses for a tensor: `none` when no application changes it. */
export function mergeEngine(target: MergeTarget, applications: readonly MergeApplication[], options: MergeRecipeOptions = {}): 'none' | 'ort' | 'js' {
  const apps = applications.filter((a) => a.scale !== 0);
  if (apps.length === 0) return 'none';
  return ortEligible(target, options) && ortInputs(target, apps) ? 'ort' : 'js';
}

function ortEligible(target: MergeTarget, options: MergeRecipeOptions): boolean {
  const count = target.shape.reduce((a, b) => a * b, 1);
  return options.ort !== undefined && (target.dtype === 'float32' || target.dtype === 'float16') && count >= (options.ortMinElements ?? DEFAULT_ORT_MIN_ELEMENTS);
}

/**
 * Merges every application into a tensor's bytes (little-endian, `target.dtype`); returns bytes
 * of the same dtype and length: `bytes` itself when nothing changes it, else new bytes
 * (onnxruntime's, or a fresh array).
 */
export async function mergeTensorBytes(bytes: Uint8Array, target: MergeTarget, applications: readonly MergeApplication[], options: MergeRecipeOptions = {}): Promise<Uint8Array> {
  const apps = orderApplications(applications).filter((a) => a.scale !== 0);
  const dtype = checkMergeDtype(target, apps[0]?.source ?? 'lora');
  if (apps.length === 0) return bytes;
  const inputs = ortEligible(target, options) ? ortInputs(target, apps) : undefined;
  if (inputs) {
    const merged = await options.ort!(bytes, dtype as MergeDtype, inputs);
    if (merged) return merged;
  }
  const weight = bytesToF32(bytes, dtype);
  for (const app of apps) applyToWeight(weight, target, app);
  return f32ToBytes(weight, dtype);
}

/** One application on the fp32 tensor, in place. */
export function applyToWeight(weight: Float32Array, target: MergeTarget, app: MergeApplication): void {
  const { module, scale, source } = app;
  const a = module.adapter;
  if (!a) throw new FuseloadError('bad-input', `${source}: module "${module.module}" has no adapter to merge`);
  if (app.part === 'bias') {
    const d = biasDelta(a, target.shape, source);
    if (!d) throw new FuseloadError('bad-input', `${source}: module "${module.module}" has no bias delta`);
    for (let i = 0; i < weight.length; i++) weight[i] += scale * d[i];
    return;
  }
  if (isPlainLora(module)) {
    applyLoraDelta(weight, target, module.up, module.down, module.alpha, scale, `${source}: "${module.label}"`);
    return;
  }
  const shape = torchShape(target);
  if (!needsBaseWeight(a)) {
    addAdapterDelta(weight, target, adapterDelta(a, shape, undefined, source), scale);
    return;
  }
  // GLoRA, DoRA, set: the delta depends on the weight as it is now (after earlier applications).
  const merged = mergedWeight(a, toTorchLayout(weight, target), shape, scale, source);
  if (target.layout !== 'io') {
    weight.set(merged);
    return;
  }
  const [inDim, outDim] = target.shape;
  for (let i = 0; i < inDim; i++) for (let o = 0; o < outDim; o++) weight[i * outDim + o] = merged[o * inDim + i];
}
