import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { badInput } from '../../common/errors.ts';
import { readLora } from '../../common/lora/adapter.ts';
import { decodeManifest } from '../../common/manifest.ts';
import { parseSafetensors } from '../../common/safetensors.ts';
import { findTargets } from '../build/targets.ts';
import { decodeModel, isExternal, ONNX_DTYPES } from '../onnx/model.ts';

/** A summary of an ONNX model, a LoRA file or a manifest, as a plain object. */
export async function inspectFile(path: string): Promise<Record<string, unknown>> {
  const input = basename(path);
  const bytes = new Uint8Array(await readFile(path));
  if (path.endsWith('.json') || bytes[0] === 0x7b) {
    const m = await decodeManifest(bytes, input);
    return {
      kind: 'manifest',
      name: m.name,
      graph: m.graph,
      shards: m.shards.length,
      bytes: m.shards.reduce((a, s) => a + s.size, 0),
      base: m.base,
      loras: m.loras,
      tensors: m.tensors.length,
      modules: m.tensors.filter((t) => t.module).map((t) => `${t.module} (${t.layout} ${t.dtype} [${t.shape.join(',')}])`),
      build: m.build,
    };
  }
  if (path.endsWith('.safetensors')) {
    const header = parseSafetensors(bytes, input);
    const lora = readLora(bytes, input);
    return {
      kind: 'safetensors',
      tensors: header.tensors.length,
      metadata: header.metadata,
      format: lora.format,
      modules: [...lora.modules.values()].map((m) => ({ module: m.module, rank: m.down?.shape[0], alpha: m.alpha, up: m.up?.shape, down: m.down?.shape })),
      unrecognised: lora.unrecognised,
    };
  }
  if (path.endsWith('.onnx') || bytes.length) {
    const model = decodeModel(bytes, input);
    const graph = model.graph!;
    const targets = findTargets(graph);
    const inits = graph.initializer ?? [];
    return {
      kind: 'onnx',
      producer: model.producerName,
      opset: model.opsetImport,
      inputs: (graph.input ?? []).map((i) => i.name),
      outputs: (graph.output ?? []).map((o) => o.name),
      nodes: graph.node?.length ?? 0,
      initializers: inits.length,
      external: inits.filter(isExternal).length,
      dtypes: [...new Set(inits.map((t) => ONNX_DTYPES[t.dataType ?? 0]?.dtype ?? `type ${t.dataType}`))],
      loraTargets: [...targets.values()].map((t) => `${t.module} → ${t.initializer} (${t.layout})`),
    };
  }
  throw badInput(input, 'is empty');
}

export function register(program: Command): void {
  program
    .command('inspect')
    .description('summarise an ONNX model, a LoRA safetensors file or an artifact manifest')
    .argument('<file>', 'model.onnx, lora.safetensors or manifest .json')
    .option('--json', 'print JSON', false)
    .action(async (file: string, opts: { json: boolean }) => {
      const summary = await inspectFile(file);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
        return;
      }
      for (const [k, v] of Object.entries(summary)) {
        if (Array.isArray(v) && v.length > 3) {
          process.stdout.write(`${k}:\n${v.map((x) => `  ${typeof x === 'string' ? x : JSON.stringify(x)}`).join('\n')}\n`);
        } else process.stdout.write(`${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}\n`);
      }
    });
}
