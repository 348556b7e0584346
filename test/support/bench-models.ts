/**
 * Synthetic bases for the build benches (test/bench/build.ts, adapters.ts): `layers` fp16
 * MatMul weights [hidden, hidden] named as torch.onnx.export names them
 * (`/layers.<i>/mlp/proj/MatMul` over `onnx::MatMul_<n>`), all in one external file
 * `base.weights` beside `base.onnx`, filled with random finite values (|w| < 0.5).
 */
import { randomFillSync } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { DTYPE_CODES, encodeModel, setExternal } from '../../tools/onnx/model.ts';

/** Writes `<dir>/base.onnx` and `<dir>/base.weights`; returns the graph's path. */
export async function writeMatMulBase(dir: string, layers: number, hidden: number): Promise<string> {
  const tensorBytes = hidden * hidden * 2;
  const g = new GraphBuilder();
  let x = g.input('x', { dtype: 'float16', dims: [1, hidden] });
  const data = await open(join(dir, 'base.weights'), 'w');
  const chunk = new Uint16Array(hidden * hidden);
  for (let i = 0; i < layers; i++) {
    randomFillSync(chunk);
    for (let j = 0; j < chunk.length; j++) chunk[j] &= 0xa7ff; // finite, |w| < 0.5
    await data.write(new Uint8Array(chunk.buffer));
    const name = `onnx::MatMul_${1000 + i}`;
    g.initializers.push({ name, dims: [hidden, hidden], dataType: DTYPE_CODES.float16 });
    setExternal(g.initializers[i], { location: 'base.weights', offset: i * tensorBytes, length: tensorBytes });
    x = g.op('MatMul', [x, name], {}, `/layers.${i}/mlp/proj/MatMul`);
  }
  await data.close();
  g.rename(x, 'y');
  g.output('y', { dtype: 'float16', dims: [1, hidden] });
  const path = join(dir, 'base.onnx');
  await writeFile(path, encodeModel(g.model()));
  return path;
}
