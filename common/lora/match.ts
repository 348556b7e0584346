/**
 * Which weights a LoRA lands on: the one mapping the build tool and the load-time overlays
 * share. A target is anything with a module path, a layout and a shape — a manifest's
 * tensor index entry will do.
 */
import type { TensorLayout } from '../manifest.ts';
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
export function matchLora<T extends LoraTargetEntry>(adapter: LoraAdapter, targets: readonly T[], source = 'lora'): LoraMatch<T> {
  const byKey = new Map<string, T>();
  for (const t of targets) {
    if (!t.module || t.layout === 'none') continue;
    const key = moduleMatchKey(t.module);
    if (!byKey.has(key)) byKey.set(key, t);
  }
  const applications: LoraMatch<T>['applications'] = [];
  const matchedKeys: string[] = [];
  const unmatchedKeys: string[] = [...adapter.unrecognised];
  for (const module of adapter.modules.values()) {
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
