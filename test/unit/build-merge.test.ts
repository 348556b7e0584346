/**
 * The merged model, run in onnxruntime-node, equals the base model with the LoRA path made
 * explicit in the graph (W·x + s·B(A·x)) for every target kind, dtype and key format.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { decodeManifest, schema1 } from '../../common/manifest.ts';
import { build } from '../../tools/build/build.ts';
import { encodeModel } from '../../tools/onnx/model.ts';
import {
  BATCH,
  type ExplicitLora,
  fixtureModel,
  IMAGE,
  LAYERS,
  type LoraFactors,
  type LoraFormat,
  loraFactors,
  loraFile,
  random,
  type WeightDtype,
  writeModel,
} from '../fixtures/models.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-merge-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const feeds = {
  x: new ort.Tensor('float32', random(11, BATCH * 16), [BATCH, 16]),
  img: new ort.Tensor('float32', random(12, 4 * IMAGE * IMAGE), [1, 4, IMAGE, IMAGE]),
};

async function run(model: Uint8Array | string): Promise<Float32Array[]> {
  const session = await ort.InferenceSession.create(model as string);
  const out = await session.run(feeds);
  await session.release();
  return LAYERS.map((_, i) => out[`y${i}`].data as Float32Array);
}

function maxDiff(a: Float32Array[], b: Float32Array[]): number {
  let d = 0;
  a.forEach((x, i) => x.forEach((v, j) => (d = Math.max(d, Math.abs(v - b[i][j])))));
  return d;
}

/** Runs the artifact's graph blob from its blobs dir, as a runtime would (shards are siblings). */
async function runArtifact(out: string, manifestPath: string): Promise<Float32Array[]> {
  const manifest = schema1(await decodeManifest(new Uint8Array(await readFile(manifestPath)), 'manifest'));
  return run(join(out, 'blobs', 'sha256', digestHex(manifest.graph.digest)));
}

const TOLERANCE: Record<WeightDtype, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1.5e-2 };

interface Case {
  dtype: WeightDtype;
  format: LoraFormat;
  /** Which merge runs: the shared JavaScript math, or onnxruntime's kernels (used for large tensors). */
  engine: 'js' | 'ort';
}

const cases: Case[] = [
  { dtype: 'float32', format: 'kohya', engine: 'js' },
  { dtype: 'float32', format: 'peft', engine: 'js' },
  { dtype: 'float32', format: 'diffusers', engine: 'js' },
  { dtype: 'float16', format: 'kohya', engine: 'js' },
  { dtype: 'float16', format: 'peft', engine: 'js' },
  { dtype: 'float16', format: 'diffusers', engine: 'js' },
  { dtype: 'bfloat16', format: 'kohya', engine: 'js' },
  { dtype: 'float32', format: 'peft', engine: 'ort' },
  { dtype: 'float16', format: 'kohya', engine: 'ort' },
];
const ORT_ALWAYS = 0;
const ORT_NEVER = Number.MAX_SAFE_INTEGER;

describe('merged weights equal the explicit LoRA path in onnxruntime', () => {
  it.each(cases)('$dtype weights, $format keys, $engine merge: MatMul, MatMul via Transpose, Gemm transB 0/1, Conv 1×1 and 3×3', async ({ dtype, format, engine }) => {
    const rank = 3;
    const scale = 0.7;
    const fileAlpha = format === 'kohya' ? 3 : undefined; // kohya carries alpha in the file
    const configAlpha = format === 'peft' ? 6 : undefined; // PEFT: in adapter_config.json
    const factors = new Map<string, LoraFactors>(LAYERS.map((l, i) => [l.module, loraFactors(l, rank, 100 + i)]));
    const caseDir = join(dir, `${dtype}-${format}-${engine}`);
    const base = await writeModel(caseDir, 'base.onnx', fixtureModel({ dtype }));
    await writeFile(join(caseDir, 'lora.safetensors'), loraFile(format, factors, fileAlpha));
    if (configAlpha) await writeFile(join(caseDir, 'lora.adapter_config.json'), JSON.stringify({ r: rank, lora_alpha: configAlpha }));

    const report = await build({ base, loras: [{ path: join(caseDir, 'lora.safetensors'), scale }], name: 'fixture', out: join(caseDir, 'out'), store: null, ortMergeMinElements: engine === 'ort' ? ORT_ALWAYS : ORT_NEVER });
    expect(report.loras[0]).toMatchObject({ format, unmatched: 0, matched: LAYERS.length * (fileAlpha ? 3 : 2) });

    const alpha = fileAlpha ?? configAlpha ?? rank; // diffusers here: no alpha, so alpha = rank
    const explicit = new Map<string, ExplicitLora[]>([...factors].map(([m, f]) => [m, [{ ...f, factor: (scale * alpha) / rank }]]));
    const reference = await run(encodeModel(fixtureModel({ dtype, explicit })) as unknown as string);
    const merged = await runArtifact(join(caseDir, 'out'), report.manifest);
    const baseOut = await run(base);

    expect(maxDiff(merged, reference)).toBeLessThan(TOLERANCE[dtype]);
    // The LoRA moved every output by far more than the tolerance, so the check above can fail.
    for (let i = 0; i < LAYERS.length; i++) expect(maxDiff([merged[i]], [baseOut[i]])).toBeGreaterThan(5 * TOLERANCE[dtype]);
  });

  it('applies several LoRAs on the same weights, each with its own scale, in any order', async () => {
    const caseDir = join(dir, 'several');
    const base = await writeModel(caseDir, 'base.onnx', fixtureModel());
    const a = new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, 300 + i)]));
    const b = new Map(LAYERS.slice(0, 4).map((l, i) => [l.module, loraFactors(l, 4, 400 + i)]));
    await writeFile(join(caseDir, 'a.safetensors'), loraFile('kohya', a, 1));
    await writeFile(join(caseDir, 'b.safetensors'), loraFile('diffusers', b));
    const la = { path: join(caseDir, 'a.safetensors'), scale: 0.5 };
    const lb = { path: join(caseDir, 'b.safetensors'), scale: -1.25 };
    const one = await build({ base, loras: [la, lb], name: 'fixture', out: join(caseDir, 'out1'), store: null, ortMergeMinElements: ORT_NEVER });
    const two = await build({ base, loras: [lb, la], name: 'fixture', out: join(caseDir, 'out2'), store: null, ortMergeMinElements: ORT_NEVER });
    expect(two.fingerprint).toBe(one.fingerprint);
    const viaOrt = await build({ base, loras: [lb, la], name: 'fixture', out: join(caseDir, 'out3'), store: null, ortMergeMinElements: ORT_ALWAYS });
    const viaOrtAgain = await build({ base, loras: [la, lb], name: 'fixture', out: join(caseDir, 'out4'), store: null, ortMergeMinElements: ORT_ALWAYS });
    expect(viaOrtAgain.fingerprint).toBe(viaOrt.fingerprint);

    const explicit = new Map<string, ExplicitLora[]>();
    for (const l of LAYERS) {
      const list: ExplicitLora[] = [{ ...a.get(l.module)!, factor: (0.5 * 1) / 2 }];
      if (b.has(l.module)) list.push({ ...b.get(l.module)!, factor: -1.25 });
      explicit.set(l.module, list);
    }
    const reference = await run(encodeModel(fixtureModel({ explicit })) as unknown as string);
    expect(maxDiff(await runArtifact(join(caseDir, 'out1'), one.manifest), reference)).toBeLessThan(1e-5);
    expect(maxDiff(await runArtifact(join(caseDir, 'out3'), viaOrt.manifest), reference)).toBeLessThan(1e-5);
  });
});
