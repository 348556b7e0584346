/**
 * Which weights a LoRA lands on: the one mapping the build tool and the load-time overlays
 * share. A target is anything with a module path, a layout and a shape — a manifest's
 * tensor index entry will do.
 */
import type { Role, TensorLayout } from '../manifest.ts';
import { hasWeightDelta, torchShape } from './adapter-delta.ts';
import { type AdapterDescription, checkAdapterTarget, fmtShape } from './adapter-types.ts';
import { isPlainLora, type LoraAdapter, type LoraModule } from './adapter.ts';
import { checkLoraDelta } from './delta.ts';
import { moduleMatchKey } from './keys.ts';
import { FuseloadError } from '../errors.ts';

export interface LoraTargetEntry {
  name: string;
  module?: string;
  layout: TensorLayout;
  shape: readonly number[];
}

/** What a module does to one tensor: its weight formula, or its bias delta (`diff_b`, `b_norm`). */
export type LoraPartTarget = 'weight' | 'bias';

export interface LoraApplication<T extends LoraTargetEntry> {
  target: T;
  module: LoraModule;
  part: LoraPartTarget;
}

export interface LoraMatch<T extends LoraTargetEntry> {
  /** Target → the LoRA module that lands on it (a module with a bias delta lands twice). */
  applications: LoraApplication<T>[];
  matchedKeys: string[];
  unmatchedKeys: string[];
}

/** Types whose delta is a whole tensor of the target's shape: they may land on any tensor (norm weights, layout `none`). */
const ANY_TENSOR: ReadonlySet<AdapterDescription['type']> = new Set(['diff', 'norm', 'set']);

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function stripSuffix(name: string, suffix: string): string | undefined {
  return name.endsWith(suffix) && name.length > suffix.length ? name.slice(0, -suffix.length) : undefined;
}

/**
 * Pairs each module of `adapter` with the tensor it lands on and checks shapes (throws a
 * one-line error naming the key and both shapes):
 * - the weight: the target whose module path has the module's moduleMatchKey (MatMul, Gemm,
 *   Conv weights); diff / norm / set modules may also land on any indexed `<module>.weight`
 *   (a norm's weight, layout `none`);
 * - the bias delta (`diff_b`, `b_norm`): the indexed `<module>.bias`. Small biases stay inline
 *   in the graph and are not in the tensor index: then the bias key is unmatched.
 * Keys that reach no tensor, unsupported types (OFT, BOFT) and unknown keys are unmatched.
 */
export function matchLora<T extends LoraTargetEntry>(
  adapter: LoraAdapter,
  targets: readonly T[],
  source = 'lora',
  /** Which modules to consider (default all): routing hands each component its own. */
  modules: Iterable<LoraModule> = adapter.modules.values(),
  /** Whether the file's unrecognised keys count as unmatched here (once per file, not per component). */
  withUnrecognised = true,
): LoraMatch<T> {
  const byModule = new Map<string, T>();
  const byWeight = new Map<string, T>();
  const byBias = new Map<string, T>();
  const first = (map: Map<string, T>, key: string | undefined, t: T) => {
    if (key !== undefined && !map.has(key)) map.set(key, t);
  };
  for (const t of targets) {
    if (t.module && t.layout !== 'none') first(byModule, moduleMatchKey(t.module), t);
    const weight = stripSuffix(t.name, '.weight');
    if (weight) first(byWeight, moduleMatchKey(weight), t);
    const bias = stripSuffix(t.name, '.bias');
    if (bias) first(byBias, moduleMatchKey(bias), t);
  }
  const applications: LoraMatch<T>['applications'] = [];
  const matchedKeys: string[] = [];
  const unmatchedKeys: string[] = withUnrecognised ? [...adapter.unrecognised] : [];
  for (const module of modules) {
    const a = module.adapter;
    if (!a || a.type === 'unsupported') {
      unmatchedKeys.push(...module.keys);
      continue;
    }
    const biasKey = a.biasDiff?.key;
    const weightKeys = biasKey ? module.keys.filter((k) => k !== biasKey) : module.keys;
    const bias = biasKey ? byBias.get(module.match) : undefined;
    if (hasWeightDelta(a)) {
      const target = byModule.get(module.match) ?? (ANY_TENSOR.has(a.type) ? byWeight.get(module.match) : undefined);
      if (target) {
        checkTarget(module, a, target, source);
        applications.push({ target, module, part: 'weight' });
      }
      (target ? matchedKeys : unmatchedKeys).push(...weightKeys);
    } else {
      // Bias only (`diff_b` alone): its other keys (an alpha) follow the bias.
      (bias ? matchedKeys : unmatchedKeys).push(...weightKeys);
    }
    if (biasKey) {
      if (bias) {
        if (numel(bias.shape) !== numel(a.biasDiff!.shape)) {
          throw new FuseloadError('shape-mismatch', `${source}: bias delta ${fmtShape(a.biasDiff!.shape)} ("${biasKey}") does not fit bias "${bias.name}" ${fmtShape(bias.shape)}`);
        }
        applications.push({ target: bias, module, part: 'bias' });
      }
      (bias ? matchedKeys : unmatchedKeys).push(biasKey);
    }
  }
  matchedKeys.sort();
  unmatchedKeys.sort();
  return { applications, matchedKeys, unmatchedKeys };
}

/** Throws naming the key unless the module's weight delta fits `target` (plain LoRA keeps its old message). */
function checkTarget(module: LoraModule, a: AdapterDescription, target: LoraTargetEntry, source: string): void {
  if (isPlainLora(module)) {
    checkLoraDelta(target, module.up.shape, module.down.shape, `${source}: "${module.label}"`);
    if (!a.doraScale) return;
  }
  if (target.layout === 'none' && !ANY_TENSOR.has(a.type)) {
    throw new FuseloadError('shape-mismatch', `${source}: "${module.label}": a ${a.type} delta cannot land on "${target.name}" (not a MatMul, Gemm or Conv weight)`);
  }
  checkAdapterTarget(a, torchShape(target), undefined, source);
}

/** The order components are tried in for a module whose keys name none (PEFT `base_model.model.`). */
const UNROUTED_ORDER: readonly Role[] = ['unet', 'transformer', 'model', 'text_encoder', 'text_encoder_2', 'vae_decoder', 'vae_encoder'];

export interface RoutedLora<T extends LoraTargetEntry> {
  /** Per component present: what landed there. */
  components: Map<Role, LoraMatch<T>>;
  /** Keys routed to a component the pipeline does not have, with the component. */
  missing: { key: string; component: Role }[];
  matchedKeys: string[];
  unmatchedKeys: string[];
}

/**
 * Routes every module of a LoRA to its component, then matches it there only
 * (DESIGN.md, "Pipelines (schema 2)"): a key's prefix names the component; a DiT's kohya
 * `lora_unet_` keys go to its `transformer`; a single-graph artifact (`model`) takes every key;
 * a module with no prefix goes to the first component (UNROUTED_ORDER) that has its module.
 */
export function routeLora<T extends LoraTargetEntry>(adapter: LoraAdapter, targets: ReadonlyMap<Role, readonly T[]>, source = 'lora'): RoutedLora<T> {
  const byRole = new Map<Role, LoraModule[]>();
  const missing: RoutedLora<T>['missing'] = [];
  const keysOf = new Map<Role, Set<string>>();
  const has = (role: Role, match: string) => {
    let keys = keysOf.get(role);
    if (!keys) keysOf.set(role, (keys = new Set((targets.get(role) ?? []).filter((t) => t.module && t.layout !== 'none').map((t) => moduleMatchKey(t.module!)))));
    return keys.has(match);
  };
  for (const module of adapter.modules.values()) {
    let role: Role | undefined;
    if (targets.has('model') && targets.size === 1) role = 'model';
    else if (module.component) {
      role = targets.has(module.component) ? module.component : module.component === 'unet' && targets.has('transformer') ? 'transformer' : undefined;
      if (!role) {
        for (const key of module.keys) missing.push({ key, component: module.component });
        continue;
      }
    } else {
      role = UNROUTED_ORDER.find((r) => targets.has(r) && has(r, module.match)) ?? UNROUTED_ORDER.find((r) => targets.has(r));
    }
    if (!role) continue;
    const list = byRole.get(role) ?? [];
    list.push(module);
    byRole.set(role, list);
  }
  const components = new Map<Role, LoraMatch<T>>();
  const matchedKeys: string[] = [];
  const unmatchedKeys: string[] = [...adapter.unrecognised, ...missing.map((m) => m.key)];
  for (const [role, list] of targets) {
    const found = matchLora(adapter, list, source, byRole.get(role) ?? [], false);
    components.set(role, found);
    matchedKeys.push(...found.matchedKeys);
    unmatchedKeys.push(...found.unmatchedKeys);
  }
  matchedKeys.sort();
  unmatchedKeys.sort();
  return { components, missing, matchedKeys, unmatchedKeys };
}
