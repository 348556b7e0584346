/**
 * The graph sample (tools/sample/graph-sample.ts) built into an artifact by the real build
 * tool, with a `latest` tag, for the Node runtime's tests and bench.
 */
import { join } from 'node:path';
import type { Digest } from '../../common/digest.ts';
import { build } from '../../tools/build/build.ts';
import { writeGraphSample } from '../../tools/sample/graph-sample.ts';
import { writeTag } from './tag.ts';

export interface BuiltSample {
  dir: string;
  fingerprint: Digest;
  graph: Digest;
}

/** Writes the graph sample's sources under `<work>/src` and its artifact under `<work>/artifact`. */
export async function buildSampleArtifact(
  work: string,
  options: { name?: string; tag?: string; loras?: { file: string; scale: number }[] } = {},
): Promise<BuiltSample> {
  const src = join(work, 'src');
  const dir = join(work, 'artifact');
  await writeGraphSample(src);
  const name = options.name ?? 'sample';
  const report = await build({
    base: join(src, 'model.onnx'),
    loras: (options.loras ?? []).map((l) => ({ path: join(src, l.file), scale: l.scale })),
    name,
    out: dir,
    store: null,
  });
  await writeTag(dir, name, report.fingerprint, options.tag);
  return { dir, fingerprint: report.fingerprint, graph: report.graph.digest };
}
