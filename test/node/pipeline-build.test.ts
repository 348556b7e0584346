/**
 * `fuseload build` on real exporter output (test/fixtures/pipeline, torch.onnx.export):
 * diffusers ONNX directories become schema-2 pipeline artifacts, each LoRA key is routed to
 * the component it names, and the merged weights and outputs equal independent numpy/torch
 * references computed by make_fixtures.py (never values taken from our own output).
 */
import { mkdtemp, readFile, rm, truncate, cp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestHex } from '../../common/digest.ts';
import { type Component, decodeManifest, PIPELINE_SCHEMA, type PipelineManifest, type Role } from '../../common/manifest.ts';
import { build, type BuildReport } from '../../tools/build/build.ts';
import { runCli } from '../support/cli.ts';

const FIX = new URL('../fixtures/pipeline/', import.meta.url).pathname;
interface FixModule {
  component: Role;
  module: string;
  ref?: string;
  shape: number[];
  transposed: boolean;
  matched: boolean;
  initializer: string;
}
interface FixLora {
  file: string;
  pipeline: string;
  scale: number;
  modules: FixModule[];
  unmatched_keys: string[];
  outputs: Partial<Record<Role, Record<string, string>>>;
}
interface FixComponent {
  inputs: { name: string; dtype: string; shape: number[] }[];
  inputs_data: Record<string, string>;
  base_outputs: Record<string, string>;
  shared_initializers: Record<string, { module: string }[]>;
}
const fixtures = JSON.parse(await readFile(join(FIX, 'fixtures.json'), 'utf8')) as {
  loras: Record<string, FixLora>;
  pipelines: Record<string, { components: Record<string, FixComponent> }>;
};

const f32 = async (rel: string) => {
  const b = await readFile(join(FIX, rel));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const i32 = async (rel: string) => {
  const b = await readFile(join(FIX, rel));
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-pipeline-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function buildFixture(pipeline: string, lora: string | null, out: string, extra: { strict?: boolean } = {}) {
  const scale = lora ? fixtures.loras[lora].scale : 1;
  const report = await build({
    base: join(FIX, pipeline),
    loras: lora ? [{ path: join(FIX, fixtures.loras[lora].file), scale }] : [],
    name: pipeline,
    out: join(work, out),
    store: null,
    ...extra,
  });
  const manifest = (await decodeManifest(new Uint8Array(await readFile(report.manifest)), out, report.fingerprint)) as PipelineManifest;
  return { report, manifest, dir: join(work, out) };
}

const blobPath = (dir: string, digest: string) => join(dir, 'blobs', 'sha256', digestHex(digest as `sha256:${string}`));

/** The stored weight of a module, as fp32 in the graph's layout. */
async function storedWeight(dir: string, c: Component, module: string): Promise<{ data: Float32Array; layout: string }> {
  const entry = c.tensors.find((t) => t.module === module);
  if (!entry) throw new Error(`no tensor for module ${module}`);
  const shard = await readFile(blobPath(dir, c.shards[entry.shard].digest));
  const bytes = shard.subarray(entry.offset, entry.offset + entry.length);
  return { data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)), layout: entry.layout };
}

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  return worst;
}

function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
  return t;
}

/** Runs one component of a built artifact in onnxruntime-node on the fixture's inputs. */
async function runComponent(dir: string, c: Component, pipeline: string, role: Role) {
  const fx = fixtures.pipelines[pipeline].components[role];
  const session = await ort.InferenceSession.create(blobPath(dir, c.graph.digest), { logSeverityLevel: 3 });
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of fx.inputs) {
    const rel = fx.inputs_data[input.name];
    feeds[input.name] = input.dtype === 'int32' ? new ort.Tensor('int32', await i32(rel), input.shape) : new ort.Tensor('float32', await f32(rel), input.shape);
  }
  const out = await session.run(feeds);
  await session.release();
  return out;
}

describe('a diffusers ONNX directory builds into one pipeline artifact', () => {
  let base: Awaited<ReturnType<typeof buildFixture>>;
  beforeAll(async () => {
    base = await buildFixture('sd-tiny', null, 'sd-base');
  });

  it('names components by role, carries tokenizer, scheduler and model_index as assets', () => {
    const m = base.manifest;
    expect(m.schema).toBe(PIPELINE_SCHEMA);
    expect(m.kind).toBe('text-to-image');
    expect(Object.keys(m.components).sort()).toEqual(['text_encoder', 'unet', 'vae_decoder']);
    expect(Object.keys(m.assets)).toEqual(expect.arrayContaining(['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt']));
    // Each component's base is its own graph (the UNet's external data is in two files).
    expect(new Set(Object.values(m.components).map((c) => c!.base.digest)).size).toBe(3);
  });

  it('runs each component as it is and equals torch on the base weights', async () => {
    for (const role of ['text_encoder', 'unet', 'vae_decoder'] as const) {
      const fx = fixtures.pipelines['sd-tiny'].components[role];
      const out = await runComponent(base.dir, base.manifest.components[role]!, 'sd-tiny', role);
      for (const [name, rel] of Object.entries(fx.base_outputs)) {
        expect(maxRelDiff(out[name].data as Float32Array, await f32(rel)), `${role}.${name}`).toBeLessThan(1e-5);
      }
    }
  });

  it('is deterministic: a second build in another directory gives the same fingerprint', async () => {
    const again = await buildFixture('sd-tiny', null, 'sd-base-2');
    expect(again.report.fingerprint).toBe(base.report.fingerprint);
  });
});

describe('LoRA keys route to the component they name', () => {
  for (const name of ['kohya-te-unet', 'diffusers', 'peft', 'sdxl-te1-te2'] as const) {
    it(`${name}: merged weights equal the numpy reference and outputs equal torch's merged model`, async () => {
      const lora = fixtures.loras[name];
      const { manifest, report, dir } = await buildFixture(lora.pipeline, name, `${name}-merged`);
      expect(report.loras[0].unmatched).toBe(0);
      const roles = [...new Set(lora.modules.map((m) => m.component))];
      for (const role of roles) expect(report.loras[0].components[role]?.matched, role).toBeGreaterThan(0);
      for (const mod of lora.modules.filter((m) => m.ref)) {
        const c = manifest.components[mod.component]!;
        const stored = await storedWeight(dir, c, mod.module);
        const ref = await f32(mod.ref!);
        const expected = stored.layout === 'io' ? transpose(ref, mod.shape[0], ref.length / mod.shape[0]) : ref;
        expect(maxRelDiff(stored.data, expected), `${mod.component} ${mod.module}`).toBeLessThan(1e-5);
      }
      for (const [role, outputs] of Object.entries(lora.outputs) as [Role, Record<string, string>][]) {
        const out = await runComponent(dir, manifest.components[role]!, lora.pipeline, role);
        for (const [output, rel] of Object.entries(outputs)) expect(maxRelDiff(out[output].data as Float32Array, await f32(rel)), `${role}.${output}`).toBeLessThan(1e-4);
      }
    });
  }

  it('SDXL te1 and te2 keys with the same module path land on different encoders', async () => {
    const { report } = await buildFixture('sdxl-tiny', 'sdxl-te1-te2', 'sdxl-routes');
    const c = report.loras[0].components;
    expect(c.text_encoder?.matched).toBeGreaterThan(0);
    expect(c.text_encoder_2?.matched).toBeGreaterThan(0);
    expect(c.text_encoder?.matched).toBe(fixtures.loras['sdxl-te1-te2'].modules.filter((m) => m.component === 'text_encoder').length * 3);
  });

  it('a LoRA on one user of a shared initializer changes that layer only', async () => {
    const { manifest, dir } = await buildFixture('sd-tiny', 'kohya-te-unet', 'shared');
    const unet = manifest.components.unet!;
    const shared = fixtures.pipelines['sd-tiny'].components.unet.shared_initializers;
    const plain = await buildFixture('sd-tiny', null, 'shared-base');
    const baseDir = plain.dir;
    const baseUnet = plain.manifest.components.unet!;
    for (const [init, users] of Object.entries(shared)) {
      if (init.endsWith('.bias')) continue;
      const targeted = fixtures.loras['kohya-te-unet'].modules.filter((m) => m.component === 'unet').map((m) => m.module);
      const [hit, other] = [users.find((u) => targeted.includes(u.module))!, users.find((u) => !targeted.includes(u.module))!];
      expect(hit && other, init).toBeTruthy();
      // Each user has its own tensor now; the untargeted one still holds the base values.
      const mine = unet.tensors.find((t) => t.module === hit.module)!;
      const theirs = unet.tensors.find((t) => t.module === other.module)!;
      expect(mine.name).not.toBe(theirs.name);
      expect(Array.from((await storedWeight(dir, unet, other.module)).data)).toEqual(Array.from((await storedWeight(baseDir, baseUnet, other.module)).data));
      expect(Array.from((await storedWeight(dir, unet, hit.module)).data)).not.toEqual(Array.from((await storedWeight(baseDir, baseUnet, hit.module)).data));
    }
  });

  it('a key for a component the pipeline lacks is reported, and is an error under --strict', async () => {
    const { report } = await buildFixture('sd-tiny', 'routed-missing', 'missing');
    expect(report.loras[0].unmatchedKeys).toEqual(expect.arrayContaining(fixtures.loras['routed-missing'].unmatched_keys));
    expect(report.loras[0].components.unet?.matched).toBeGreaterThan(0);
    await expect(buildFixture('sd-tiny', 'routed-missing', 'missing-strict', { strict: true })).rejects.toThrow(/is for text_encoder_2, which the pipeline does not have \(--strict\)/);
  });
});

describe('bad pipeline directories: one line naming the input, exit ≠ 0, nothing left behind', () => {
  async function badCopy(name: string, damage: (dir: string) => Promise<void>) {
    const dir = join(work, name);
    await cp(join(FIX, 'sd-tiny'), dir, { recursive: true });
    await damage(dir);
    return dir;
  }
  async function expectFails(dir: string, pattern: RegExp) {
    const out = join(work, `${dir.split('/').pop()}-out`);
    const r = await runCli(['build', '--base', dir, '--name', 'bad', '--out', out], { PIPELINE_STORE: join(work, 'store-bad') });
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(pattern);
    await expect(readFile(out)).rejects.toThrow();
  }

  it('a component named in model_index.json is missing', async () => {
    const dir = await badCopy('no-unet', (d) => rm(join(d, 'unet'), { recursive: true }));
    await expectFails(dir, /model_index\.json: names component "unet", but unet\/model\.onnx is missing/);
  });
  it('an external-data file is truncated', async () => {
    const dir = await badCopy('short-data', (d) => truncate(join(d, 'unet', 'weights_1.pb'), 100));
    await expectFails(dir, /model\.onnx: initializer ".+" ends at byte \d+ of "weights_1\.pb" but the file has 100/);
  });
  it('model_index.json is not JSON', async () => {
    const dir = await badCopy('bad-index', (d) => writeFile(join(d, 'model_index.json'), '{ nope'));
    await expectFails(dir, /model_index\.json: is not valid JSON/);
  });
});
