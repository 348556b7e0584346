import { describe, expect, it } from 'vitest';
import { decodeModel, encodeModel, externalRef, inlineBytes, setExternal } from '../../tools/onnx/model.ts';
import { findTargets } from '../../tools/build/targets.ts';
import { sampleModel } from '../../tools/sample/graph-sample.ts';
import { fixtureModel } from '../fixtures/models.ts';

describe('ONNX codec', () => {
  it('decodes and re-encodes a model to the same bytes', () => {
    const bytes = encodeModel(sampleModel());
    const model = decodeModel(bytes, 'sample.onnx');
    expect(model.opsetImport).toEqual([{ domain: '', version: 17 }]);
    expect(model.graph!.input![0].name).toBe('latent');
    expect(encodeModel(model)).toEqual(bytes);
  });

  it('reads weights from raw_data or float_data and writes external data references', () => {
    const model = decodeModel(encodeModel(fixtureModel()), 'f.onnx');
    const t = model.graph!.initializer![0];
    const raw = inlineBytes(t, 'f.onnx');
    const values = Array.from(new Float32Array(new Uint8Array(raw).buffer));
    const asFloatData = { name: 'w', dims: t.dims, dataType: 1, floatData: values };
    expect(inlineBytes(asFloatData, 'f.onnx')).toEqual(new Uint8Array(Float32Array.from(values).buffer));
    setExternal(t, { location: 'abc', offset: 128, length: raw.length });
    const again = decodeModel(encodeModel(model), 'f.onnx').graph!.initializer![0];
    expect(again.rawData?.length ?? 0).toBe(0);
    expect(externalRef(again, 'f.onnx')).toEqual({ location: 'abc', offset: 128, length: raw.length });
    expect(() => externalRef({ ...again, externalData: [{ key: 'location', value: 'abc' }, { key: 'length', value: '7' }] }, 'f.onnx')).toThrow(/has 7 bytes of external data/);
  });

  it('refuses bytes that are not a model, naming the input', () => {
    const bytes = encodeModel(sampleModel());
    expect(() => decodeModel(bytes.subarray(0, bytes.length / 2), 'half.onnx')).toThrow(/^half\.onnx: not a valid ONNX model/);
    expect(() => decodeModel(new TextEncoder().encode('hello'), 'text.onnx')).toThrow(/^text\.onnx: not a valid ONNX model/);
  });

  it('finds LoRA targets by node path and initializer name, through Transpose and Cast', () => {
    const targets = [...findTargets(fixtureModel({ dtype: 'float16' }).graph!).values()].map((t) => [t.module, t.initializer, t.layout]);
    expect(targets).toEqual([
      ['blocks.0.attn1.to_q', 'onnx::MatMul_100', 'io'],
      ['blocks.0.ff.net.0.proj', 'blocks.0.ff.net.0.proj.weight', 'io'],
      ['blocks.0.ff.net.2', 'blocks.0.ff.net.2.weight', 'oi'],
      ['blocks.1.attn1.to_k', 'onnx::MatMul_103', 'oi'],
      ['blocks.1.proj_in', 'blocks.1.proj_in.weight', 'oihw'],
      ['conv_out', 'conv_out.weight', 'oihw'],
    ]);
  });
});
