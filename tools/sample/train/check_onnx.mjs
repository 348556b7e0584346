// node tools/sample/train/check_onnx.mjs <pipeline dir> <dir written by verify_onnx.py>
// Loads every component with onnxruntime-node and compares with the torch outputs (max abs diff <= 1e-4).
import ort from 'onnxruntime-node';
import fs from 'node:fs';
import path from 'node:path';

const [pipe, tmp] = process.argv.slice(2);
const cases = JSON.parse(fs.readFileSync(path.join(tmp, 'cases.json'), 'utf8'));
const read = (f, dtype) => {
  const b = fs.readFileSync(path.join(tmp, f));
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return dtype === 'int32' ? new Int32Array(ab) : new Float32Array(ab);
};
let worst = 0;
const sessions = {};
for (const c of cases) {
  const s = sessions[c.component] ??= await ort.InferenceSession.create(path.join(pipe, c.component, 'model.onnx'));
  const feeds = {};
  for (const [k, v] of Object.entries(c.inputs)) feeds[k] = new ort.Tensor(v.dtype, read(v.file, v.dtype), v.shape);
  const out = await s.run(feeds);
  for (const [k, v] of Object.entries(c.outputs)) {
    const want = read(v.file, v.dtype);
    const got = out[k];
    if (JSON.stringify(got.dims) !== JSON.stringify(v.shape)) throw new Error(`${c.component}.${k}: dims ${got.dims} != ${v.shape}`);
    let d = 0;
    for (let i = 0; i < want.length; i++) d = Math.max(d, Math.abs(want[i] - got.data[i]));
    worst = Math.max(worst, d);
    console.log(`${c.component} ${k} [${v.shape}] max|diff| ${d.toExponential(2)}`);
  }
}
for (const [n, s] of Object.entries(sessions)) console.log(n, 'inputs', s.inputNames, 'outputs', s.outputNames);
console.log(worst <= 1e-4 ? 'OK' : 'FAIL', 'worst', worst);
process.exit(worst <= 1e-4 ? 0 : 1);
