/**
 * Which weights a LoRA lands on: the one mapping the build tool and the load-time overlays
 * share. A target is anything with a module path, a layout and a shape — a manifest's
 * tensor index entry will do.
 */
import type { Role, TensorLayout } from '../manifest.ts';
import type { LoraAdapter, LoraModule } from './adapter.ts';
import { checkLoraDelta } from './delta.ts';
import { moduleMatchKey } from './keys.ts';

export interface LoraTargetEntry {
  name: string;
  module?: string;
  layout: TensorLayout;
  shape: readonly number[];
}

export interface LoraMatch<T extends LoraTargetEntry> {
  /** Target → the LoRA module that lands on it. */
  applications: { target: T; module: LoraModule }[];
  matchedKeys: string[];
  unmatchedKeys: string[];
}

/**
 * Pairs each complete module (up and down) of `adapter` with the target whose module path
 * has the same moduleMatchKey; checks shapes (throws naming the key and both shapes).
 * Keys that reach no target, incomplete modules and unknown keys are unmatched.
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
  const byKey = new Map<string, T>();
  for (const t of targets) {
    if (!t.module || t.layout === 'none') continue;
    const key = moduleMatchKey(t.module);
    if (!byKey.has(key)) byKey.set(key, t);
  }
  const applications: LoraMatch<T>['applications'] = [];
  const matchedKeys: string[] = [];
  const unmatchedKeys: string[] = withUnrecognised ? [...adapter.unrecognised] : [];
  for (const module of modules) {
    const target = byKey.get(module.match);
    if (!target || !module.up || !module.down) {
      unmatchedKeys.push(...module.keys);
      continue;
    }
    checkLoraDelta(target, module.up.shape, module.down.shape, `${source}: "${module.label}"`);
    matchedKeys.push(...module.keys);
    applications.push({ target, module });
  }
  matchedKeys.sort();
  unmatchedKeys.sort();
  return { applications, matchedKeys, unmatchedKeys };
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
