/**
 * Which initializers a LoRA can land on, with their stored layout and module path:
 * the weight input of MatMul / Gemm / Conv, directly or through a Transpose or Cast.
 */
import { moduleFromInitializerName, moduleFromNodeName } from '../../common/lora/keys.ts';
import type { TensorLayout } from '../../common/manifest.ts';
import { attr, type GraphProto, type NodeProto } from '../onnx/model.ts';

export interface WeightTarget {
  initializer: string;
  layout: Exclude<TensorLayout, 'none'>;
  /** Dotted module path (diffusers naming). */
  module: string;
}

/** Targets keyed by initializer name; the first consuming node in graph order wins. */
export function findTargets(graph: GraphProto): Map<string, WeightTarget> {
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]));
  const producer = new Map<string, NodeProto>();
  for (const node of graph.node ?? []) for (const out of node.output ?? []) producer.set(out, node);
  const targets = new Map<string, WeightTarget>();
  for (const node of graph.node ?? []) {
    const op = node.opType;
    if ((op !== 'MatMul' && op !== 'Gemm' && op !== 'Conv') || (node.domain ?? '') !== '') continue;
    const weightName = node.input?.[1];
    if (!weightName) continue;
    // Walk back through Transpose (2-D) and Cast (fp16 weights used in fp32) to an initializer.
    let name = weightName;
    let transposed = false;
    let ok = true;
    for (let hops = 0; !inits.has(name) && ok && hops < 4; hops++) {
      const t = producer.get(name);
      if (t?.opType === 'Transpose') {
        const perm = attr(t, 'perm')?.ints;
        if (perm && !(perm.length === 2 && perm[0] === 1 && perm[1] === 0)) ok = false;
        transposed = !transposed;
      } else if (t?.opType !== 'Cast') ok = false;
      name = t?.input?.[0] ?? '';
    }
    if (!ok || !inits.has(name)) continue;
    const init = inits.get(name)!;
    const rank = init.dims?.length ?? 0;
    let layout: WeightTarget['layout'];
    if (op === 'Conv') {
      if (transposed || rank < 3) continue;
      layout = 'oihw';
    } else {
      if (rank !== 2) continue;
      const transB = op === 'Gemm' && (attr(node, 'transB')?.i ?? 0) === 1;
      layout = transB !== transposed ? 'oi' : 'io';
    }
    const module = moduleFromInitializerName(name) ?? moduleFromNodeName(node.name);
    if (!module || targets.has(name)) continue;
    targets.set(name, { initializer: name, layout, module });
  }
  return targets;
}
