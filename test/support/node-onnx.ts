/**
 * A tiny ONNX model with the sample's signature (latent [1,8,H,W] → image [1,3,H,W] in [0,1]),
 * written with protobufjs from a minimal slice of onnx.proto, and laid out as an artifact
 * (blobs, manifest, tag) the way `fuseload build` lays one out. For Node-runtime tests that must
 * not wait on the build tool, and for the bench's large artifact (padding shards).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { blobKey, manifestKey, tagKey } from '../../common/keys.ts';
import { encodeManifest, type Manifest, type TensorEntry } from '../../common/manifest.ts';

const ONNX_PROTO = `
syntax = "proto3";
package onnx;
message StringStringEntryProto { string key = 1; string value = 2; }
message OperatorSetIdProto { string domain = 1; int64 version = 2; }
message AttributeProto { string name = 1; float f = 2; int64 i = 3; repeated int64 ints = 8; int32 type = 20; }
message NodeProto { repeated string input = 1; repeated string output = 2; string name = 3; string op_type = 4; repeated AttributeProto attribute = 5; }
message TensorProto { repeated int64 dims = 1; int32 data_type = 2; string name = 8; bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13; int32 data_location = 14; }
message Dimension { int64 dim_value = 1; string dim_param = 2; }
message TensorShapeProto { repeated Dimension dim = 1; }
message TypeTensor { int32 elem_type = 1; TensorShapeProto shape = 2; }
message TypeProto { TypeTensor tensor_type = 1; }
message ValueInfoProto { string name = 1; TypeProto type = 2; }
message GraphProto { repeated NodeProto node = 1; string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12; }
message ModelProto { int64 ir_version = 1; string producer_name = 2; GraphProto graph = 7; repeated OperatorSetIdProto opset_import = 8; }
`;
const ModelProto = protobuf.parse(ONNX_PROTO).root.lookupType('onnx.ModelProto');

const FLOAT = 1;
const valueInfo = (name: string, dims: (number | string)[]) => ({
  name,
  type: { tensorType: { elemType: FLOAT, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
});

export interface TinyModel {
  graph: Uint8Array;
  shards: Uint8Array[];
  tensors: TensorEntry[];
}

/**
 * image = Sigmoid(Conv1x1(latent; W[3,8,1,1], B[3]) + Σ pad_i·0). W and B live in shard 0;
 * `padShards` extra shards of `padBytes` each hold constants that only add zeros, so a large
 * artifact still computes the same image.
 */
export async function tinyModel(opts: { seed?: number; padShards?: number; padBytes?: number } = {}): Promise<TinyModel> {
  let s = (opts.seed ?? 1) >>> 0;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
  const w = Float32Array.from({ length: 24 }, rand);
  const b = Float32Array.from({ length: 3 }, rand);
  const shard0 = new Uint8Array(128);
  shard0.set(new Uint8Array(w.buffer), 0);
  shard0.set(new Uint8Array(b.buffer), 96);
  const shards = [shard0];
  const pads = opts.padShards ?? 0;
  const padBytes = opts.padBytes ?? 0;
  for (let i = 0; i < pads; i++) {
    const pad = new Uint8Array(padBytes);
    // Non-zero content, so shards differ and compress poorly (a fair bench).
    for (let j = 0; j < pad.length; j += 4096) pad[j] = (i * 31 + j) & 0xff;
    shards.push(pad);
  }
  const hexes = await Promise.all(shards.map(async (x) => digestHex(await sha256(x))));
  const external = (name: string, dims: number[], shard: number, offset: number, length: number) => ({
    name,
    dims,
    dataType: shard === 0 ? FLOAT : 2 /* uint8 */,
    dataLocation: 1,
    externalData: [
      { key: 'location', value: hexes[shard] },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(length) },
    ],
  });
  const initializer = [external('conv.weight', [3, 8, 1, 1], 0, 0, 96), external('conv.bias', [3], 0, 96, 12)];
  const tensors: TensorEntry[] = [
    { name: 'conv.weight', shard: 0, offset: 0, length: 96, dtype: 'float32', shape: [3, 8, 1, 1], layout: 'oihw', module: 'conv' },
    { name: 'conv.bias', shard: 0, offset: 96, length: 12, dtype: 'float32', shape: [3], layout: 'none' },
  ];
  const node: object[] = [
    { input: ['latent', 'conv.weight', 'conv.bias'], output: ['conv_out'], opType: 'Conv', name: 'conv' },
  ];
  let sum = 'conv_out';
  for (let i = 1; i <= pads; i++) {
    initializer.push(external(`pad${i}`, [padBytes], i, 0, padBytes));
    tensors.push({ name: `pad${i}`, shard: i, offset: 0, length: padBytes, dtype: 'uint8', shape: [padBytes], layout: 'none' });
    // pad[0] → float → ×0 → added to the image: the bytes must load, the value changes nothing,
    // and constant folding stays cheap (one element, not the whole pad).
    node.push(
      { input: [`pad${i}`, 'index0'], output: [`pad${i}_e`], opType: 'Gather', name: `gather${i}` },
      { input: [`pad${i}_e`], output: [`pad${i}_f`], opType: 'Cast', name: `cast${i}`, attribute: [{ name: 'to', i: FLOAT, type: 2 }] },
      { input: [`pad${i}_f`, 'zero'], output: [`pad${i}_z`], opType: 'Mul', name: `mul${i}` },
      { input: [sum, `pad${i}_z`], output: [`sum${i}`], opType: 'Add', name: `add${i}` },
    );
    sum = `sum${i}`;
  }
  node.push({ input: [sum], output: ['image'], opType: 'Sigmoid', name: 'sigmoid' });
  const inlineInit: object[] = pads
    ? [
        { name: 'zero', dims: [], dataType: FLOAT, rawData: new Uint8Array(4) },
        { name: 'index0', dims: [], dataType: 7 /* int64 */, rawData: new Uint8Array(8) },
      ]
    : [];
  const model = ModelProto.create({
    irVersion: 8,
    producerName: 'fuseload-test',
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      name: 'tiny',
      node,
      initializer: [...initializer, ...inlineInit],
      input: [valueInfo('latent', [1, 8, 'H', 'W'])],
      output: [valueInfo('image', [1, 3, 'H', 'W'])],
    },
  });
  return { graph: ModelProto.encode(model).finish(), shards, tensors };
}

export interface WrittenArtifact {
  fingerprint: Digest;
  manifest: Manifest;
  manifestBytes: Uint8Array;
  /** Every blob the manifest names, by digest. */
  blobs: Map<Digest, Uint8Array>;
}

/** Writes blobs, manifest and `tags/<name>/<tag>.json` under `dir`, the bucket's layout. */
export async function writeTinyArtifact(
  dir: string,
  opts: { name?: string; tag?: string; seed?: number; padShards?: number; padBytes?: number } = {},
): Promise<WrittenArtifact> {
  const model = await tinyModel(opts);
  const graphDigest = await sha256(model.graph);
  const shardDigests = await Promise.all(model.shards.map((x) => sha256(x)));
  const manifest: Manifest = {
    schema: 'fuseload.artifact/1',
    name: opts.name ?? 'tiny',
    graph: { digest: graphDigest, size: model.graph.byteLength },
    shards: model.shards.map((x, i) => ({ digest: shardDigests[i], size: x.byteLength })),
    base: { digest: graphDigest, source: 'tiny.onnx' },
    loras: [],
    tensors: model.tensors,
    build: { tool: 'fuseload', version: '0.0.0-test', shardSize: 64 * 1024 * 1024, alignment: 64, strict: true },
  };
  const { bytes, fingerprint } = await encodeManifest(manifest);
  const blobs = new Map<Digest, Uint8Array>([[graphDigest, model.graph]]);
  model.shards.forEach((x, i) => blobs.set(shardDigests[i], x));
  const write = async (key: string, data: Uint8Array) => {
    await mkdir(join(dir, key, '..'), { recursive: true });
    await writeFile(join(dir, key), data);
  };
  for (const [digest, data] of blobs) await write(blobKey(digest), data);
  await write(manifestKey(fingerprint), bytes);
  await write(tagKey(manifest.name, opts.tag ?? 'latest'), new TextEncoder().encode(JSON.stringify({ manifest: fingerprint })));
  return { fingerprint, manifest, manifestBytes: bytes, blobs };
}
