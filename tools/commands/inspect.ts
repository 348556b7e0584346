import type { Command } from 'commander';
import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { badInput } from '../../common/errors.ts';
import { readLora } from '../../common/lora/adapter.ts';
import { adapterRank } from '../../common/lora/adapter-types.ts';
import { isSgmModuleName, kohyaToDiffusersModule } from '../../common/lora/sdxl-names.ts';
import { componentEntries, decodeManifest, MANIFEST_SCHEMA } from '../../common/manifest.ts';
import { readPipelineDir } from '../build/pipeline-dir.ts';
import { parseSafetensors } from '../../common/safetensors.ts';
import { findTargets } from '../build/targets.ts';
import { decodeModel, isExternal, ONNX_DTYPES } from '../onnx/model.ts';

/** A summary of an ONNX model, a LoRA file or a manifest, as a plain object. */
export async function inspectFile(path: string): Promise<Record<string, unknown>> {
  const input = basename(path);
  if (await isDirectory(path)) return inspectPipelineDir(path);
  const bytes = new Uint8Array(await readFile(path));
  if (path.endsWith('.json') || bytes[0] === 0x7b) {
    const m = await decodeManifest(bytes, input);
    if (m.schema === MANIFEST_SCHEMA) {
      return {
        kind: 'manifest',
        schema: m.schema,
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
    return {
      kind: 'manifest',
      schema: m.schema,
      name: m.name,
      pipeline: m.kind,
      components: Object.fromEntries(
        componentEntries(m).map(([role, c]) => [
          role,
          { graph: c.graph.digest, shards: c.shards.length, bytes: c.shards.reduce((a, s) => a + s.size, 0), tensors: c.tensors.length, targets: c.tensors.filter((t) => t.module).length, base: c.base.source },
        ]),
      ),
      assets: Object.keys(m.assets).sort(),
      loras: m.loras,
      build: m.build,
    };
  }
  if (path.endsWith('.safetensors')) {
    const header = parseSafetensors(bytes, input);
    const lora = readLora(bytes, input);
    const modules = [...lora.modules.values()];
    // Each key's adapter type and the component its prefix routes it to (DESIGN.md, "Pipelines"); "any" when it names none.
    const componentOf = new Map(modules.flatMap((m) => m.keys.map((k) => [k, m.component ?? 'any'] as const)));
    const keys = header.tensors
      .map((t) => t.name)
      .sort()
      .map((key) => ({ key, type: lora.keyTypes.get(key) ?? 'unknown', component: componentOf.get(key) ?? (lora.unrecognised.includes(key) ? 'none' : 'any') }));
    return {
      kind: 'safetensors',
      tensors: header.tensors.length,
      metadata: header.metadata,
      format: lora.format,
      components: countBy(modules.map((m) => m.component ?? 'any')),
      types: countBy(keys.map((k) => k.type)),
      modules: modules.map((m) => ({
        component: m.component ?? 'any',
        module: m.module,
        type: lora.keyTypes.get(m.keys[0]) ?? 'unknown',
        ...(m.adapter?.type === 'unsupported' ? { unsupported: m.adapter.reason } : {}),
        // SDXL's kohya files name UNet modules after the original UNet: the module they land on.
        ...(m.component === 'unet' && isSgmModuleName(m.module) ? { diffusers: kohyaToDiffusersModule(m.module) ?? 'none' } : {}),
        rank: m.adapter && m.adapter.type !== 'unsupported' ? adapterRank(m.adapter) : undefined,
        alpha: m.adapter?.alpha,
        up: m.up?.shape,
        down: m.down?.shape,
      })),
      keys: keys.map((k) => `${k.key}: ${k.type} → ${k.component}`),
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

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw badInput(path, 'no such file or directory');
    throw e;
  }
}

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** A diffusers ONNX directory: its components (inputs, outputs, LoRA targets) and assets. */
async function inspectPipelineDir(dir: string): Promise<Record<string, unknown>> {
  const bases: Awaited<ReturnType<typeof readPipelineDir>>['components'][number]['base'][] = [];
  try {
    const p = await readPipelineDir(dir, () => {}, bases);
    return {
      kind: 'pipeline directory',
      pipeline: p.kind,
      components: Object.fromEntries(
        p.components.map(({ role, base }) => {
          const graph = base.model.graph!;
          return [
            role,
            {
              inputs: (graph.input ?? []).map((i) => i.name),
              outputs: (graph.output ?? []).map((o) => o.name),
              initializers: graph.initializer?.length ?? 0,
              external: [...base.external.keys()],
              loraTargets: findTargets(graph).size,
            },
          ];
        }),
      ),
      assets: [...p.assets.keys()],
      ignored: p.ignored,
    };
  } finally {
    for (const b of bases) await b.cancel();
  }
}

export function register(program: Command): void {
  program
    .command('inspect')
    .description('summarise an ONNX model, a diffusers ONNX directory, a LoRA safetensors file or an artifact manifest')
    .argument('<file>', 'model.onnx, a pipeline directory, lora.safetensors or manifest .json')
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
