/**
 * Which initializers a LoRA can land on, with their stored layout and module path:
 * the weight input of MatMul / Gemm / Conv, directly or through Identity, Transpose or Cast.
 *
 * torch.onnx.export shares one initializer between tied or equal-valued weights (zero-initialised
 * convs, tied projections) and feeds the other users through `Identity`. A LoRA on one of them
 * must change that layer only, so `unshareTargets` gives every module its own initializer first
 * (docs/artifact.md, "Shared initializers"). It depends on the base alone, so the shard layout
 * still does too, and load-time overlays see the same per-module tensors the build merged.
 */
import { moduleFromInitializerName, moduleFromNodeName } from '../../common/lora/keys.ts';
import type { TensorLayout } from '../../common/manifest.ts';
import { attr, type GraphProto, type NodeProto, type TensorProto } from '../onnx/model.ts';

export interface WeightTarget {
  initializer: string;
  layout: Exclude<TensorLayout, 'none'>;
  /** Dotted module path (diffusers naming). */
  module: string;
}

/** One consumer of a weight: the op, the module it belongs to, and the node that reads the initializer itself. */
interface WeightUse {
  initializer: string;
  layout: Exclude<TensorLayout, 'none'>;
  module: string;
  /** The module of the node that uses it (differs from `module` for a shared initializer's other users). */
  user: string;
  /** The node whose input is the initializer (the op itself, or the last Identity/Transpose/Cast before it). */
  reader: NodeProto;
  readerInput: number;
}

function weightUses(graph: GraphProto): WeightUse[] {
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]));
  const producer = new Map<string, NodeProto>();
  for (const node of graph.node ?? []) for (const out of node.output ?? []) producer.set(out, node);
  const uses: WeightUse[] = [];
  for (const node of graph.node ?? []) {
    const op = node.opType;
    if ((op !== 'MatMul' && op !== 'Gemm' && op !== 'Conv') || (node.domain ?? '') !== '') continue;
    const weightName = node.input?.[1];
    if (!weightName) continue;
    // Walk back through Identity, Transpose (2-D) and Cast (fp16 weights used in fp32) to an initializer.
    let name = weightName;
    let reader = node;
    let readerInput = 1;
    let transposed = false;
    let ok = true;
    for (let hops = 0; !inits.has(name) && ok && hops < 4; hops++) {
      const t = producer.get(name);
      if (t?.opType === 'Transpose') {
        const perm = attr(t, 'perm')?.ints;
        if (perm && !(perm.length === 2 && perm[0] === 1 && perm[1] === 0)) ok = false;
        transposed = !transposed;
      } else if (t?.opType !== 'Cast' && t?.opType !== 'Identity') ok = false;
      name = t?.input?.[0] ?? '';
      if (t) {
        reader = t;
        readerInput = 0;
      }
    }
    if (!ok || !inits.has(name)) continue;
    const init = inits.get(name)!;
    const rank = init.dims?.length ?? 0;
    let layout: WeightUse['layout'];
    if (op === 'Conv') {
      if (transposed || rank < 3) continue;
      layout = 'oihw';
    } else {
      if (rank !== 2) continue;
      const transB = op === 'Gemm' && (attr(node, 'transB')?.i ?? 0) === 1;
      layout = transB !== transposed ? 'oi' : 'io';
    }
    // The initializer's name says its module, unless it is shared: then only the node path
    // tells its users apart (and unshareTargets names each copy for its module).
    const module = moduleFromInitializerName(name) ?? moduleFromNodeName(node.name);
    const user = moduleFromNodeName(node.name) ?? module;
    if (!module || !user) continue;
    uses.push({ initializer: name, layout, module, user, reader, readerInput });
  }
  return uses;
}

/**
 * Gives each module that reads a shared targetable initializer its own copy, named
 * `<module>.weight` (or with a `#n` suffix if taken), rewiring the node that read it.
 * `copy` makes the new initializer (with its bytes or external reference); returns how many were made.
 */
export function unshareTargets(graph: GraphProto, copy: (from: TensorProto, name: string) => TensorProto): number {
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]));
  const taken = new Set<string>([...inits.keys(), ...(graph.node ?? []).flatMap((n) => n.output ?? [])]);
  const byInit = new Map<string, WeightUse[]>();
  for (const use of weightUses(graph)) {
    const list = byInit.get(use.initializer) ?? [];
    list.push(use);
    byInit.set(use.initializer, list);
  }
  let made = 0;
  for (const [name, uses] of byInit) {
    const modules = [...new Set(uses.map((u) => u.user))];
    if (modules.length < 2) continue;
    // The initializer's own name stays with the module it is named for (or the first user).
    const owner = modules.find((m) => moduleFromInitializerName(name) === m) ?? modules[0];
    for (const module of modules) {
      if (module === owner) continue;
      let fresh = `${module}.weight`;
      for (let n = 2; taken.has(fresh); n++) fresh = `${module}.weight#${n}`;
      taken.add(fresh);
      const clone = copy(inits.get(name)!, fresh);
      graph.initializer!.push(clone);
      for (const use of uses) if (use.user === module) use.reader.input![use.readerInput] = fresh;
      made++;
    }
  }
  return made;
}

/** Targets keyed by initializer name; the first consuming node in graph order wins. */
export function findTargets(graph: GraphProto): Map<string, WeightTarget> {
  const targets = new Map<string, WeightTarget>();
  for (const use of weightUses(graph)) {
    if (targets.has(use.initializer)) continue;
    targets.set(use.initializer, { initializer: use.initializer, layout: use.layout, module: use.module });
  }
  return targets;
}
