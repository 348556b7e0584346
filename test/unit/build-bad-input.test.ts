/**
 * Every bad input: one line on stderr naming the input and what is wrong, a non-zero exit,
 * and nothing left in --out or the store.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { encodeSafetensors } from '../../common/safetensors.ts';
import { main } from '../../tools/cli.ts';
import { externalise, fixtureModel, LAYERS, loraFactors, loraFile, writeModel } from '../fixtures/models.ts';

let dir: string;
let base: string;
let lora: string;
let store: string;
const savedStore = process.env.PIPELINE_STORE;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-bad-'));
  base = await writeModel(dir, 'base.onnx', fixtureModel());
  lora = join(dir, 'good.safetensors');
  await writeFile(lora, loraFile('kohya', new Map(LAYERS.map((l, i) => [l.module, loraFactors(l, 2, i)])), 2));
  store = join(dir, 'store');
  process.env.PIPELINE_STORE = store;
});
afterAll(async () => {
  if (savedStore === undefined) delete process.env.PIPELINE_STORE;
  else process.env.PIPELINE_STORE = savedStore;
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => vi.restoreAllMocks());

/** Runs the CLI in-process; returns the exit code and what went to stderr. */
async function cli(args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  let stderr = '';
  let stdout = '';
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => ((stderr += String(chunk)), true));
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => ((stdout += String(chunk)), true));
  const code = await main(['node', 'fuseload', ...args]);
  vi.restoreAllMocks();
  return { code, stderr, stdout };
}

async function exists(path: string): Promise<boolean> {
  return readdir(path).then(
    () => true,
    () => false,
  );
}

async function expectRejected(args: string[], message: RegExp, out = join(dir, 'out')): Promise<void> {
  const r = await cli(['build', '--name', 'fixture', '--out', out, ...args]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(message);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack trace
  expect(await exists(out)).toBe(false);
  expect(await exists(store)).toBe(false);
  // nothing left beside --out either (the temp dir)
  expect((await readdir(dir)).filter((n) => n.includes('fuseload-'))).toEqual([]);
}

async function writeBytes(name: string, bytes: Uint8Array | string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  return path;
}

function header(json: unknown, dataBytes = 0, lengthOverride?: number): Uint8Array {
  const text = new TextEncoder().encode(typeof json === 'string' ? json : JSON.stringify(json));
  const out = new Uint8Array(8 + text.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(lengthOverride ?? text.length), true);
  out.set(text, 8);
  return out;
}

describe('bad input is one line, a non-zero exit, and nothing written', () => {
  it('a missing base or LoRA file', async () => {
    await expectRejected(['--base', join(dir, 'nope.onnx')], /nope\.onnx: no such file/);
    await expectRejected(['--base', base, '--lora', join(dir, 'nope.safetensors')], /nope\.safetensors: no such file/);
  });

  it('a truncated or corrupt ONNX model', async () => {
    const bytes = new Uint8Array(await readFile(base));
    await expectRejected(['--base', await writeBytes('trunc.onnx', bytes.subarray(0, bytes.length - 100))], /trunc\.onnx: not a valid ONNX model/);
    await expectRejected(['--base', await writeBytes('junk.onnx', 'this is not protobuf at all, just text\n')], /junk\.onnx: not a valid ONNX model/);
  });

  it('external data that is missing or shorter than the model says', async () => {
    const d = join(dir, 'ext');
    const model = fixtureModel();
    await externalise(model, d, 1);
    const path = await writeModel(d, 'base.onnx', model);
    await writeFile(join(d, 'weights-0.bin'), new Uint8Array(100));
    await expectRejected(['--base', path], /base\.onnx: initializer ".*" ends at byte \d+ of "weights-0\.bin" but the file has 100/);
    await rm(join(d, 'weights-0.bin'));
    await expectRejected(['--base', path], /base\.onnx: external data "weights-0\.bin": no such file/);
  });

  it('safetensors with a bad header, offsets out of range, a wrong byte length or an unsupported dtype', async () => {
    const f32 = (shape: number[], begin: number) => ({ dtype: 'F32', shape, data_offsets: [begin, begin + shape.reduce((a, b) => a * b, 1) * 4] });
    const cases: [string, Uint8Array, RegExp][] = [
      ['short.safetensors', new Uint8Array(5), /short\.safetensors: not a safetensors file/],
      ['hdr.safetensors', header({}, 0, 5000), /hdr\.safetensors: header ends at byte 5008 but the file has/],
      ['json.safetensors', header('{"a": [1,'), /json\.safetensors: header is not valid UTF-8 JSON/],
      ['dtype.safetensors', header({ 'x.lora_up.weight': { dtype: 'I8', shape: [2], data_offsets: [0, 2] } }, 2), /dtype\.safetensors: tensor "x\.lora_up\.weight" has unsupported dtype "I8"/],
      ['oob.safetensors', header({ 'x.lora_up.weight': f32([4], 0) }, 8), /oob\.safetensors: tensor "x\.lora_up\.weight" ends at byte \d+ but the file has \d+/],
      ['len.safetensors', header({ 'x.lora_up.weight': { dtype: 'F32', shape: [4], data_offsets: [0, 12] } }, 12), /len\.safetensors: tensor "x\.lora_up\.weight" spans 12 bytes but F32 \[4\] needs 16/],
      ['gap.safetensors', header({ a: f32([1], 0), b: f32([1], 8) }, 12), /gap\.safetensors: tensor "b" starts at byte \d+ but the previous tensor ends at \d+/],
    ];
    for (const [name, bytes, message] of cases) await expectRejected(['--base', base, '--lora', await writeBytes(name, bytes)], message);
  });

  it('a NaN, infinite or non-numeric scale', async () => {
    for (const scale of ['NaN', 'Infinity', 'abc', '']) {
      await expectRejected(['--base', base, '--lora', `${lora}:${scale}`], new RegExp(`--lora .*good\\.safetensors:${scale}: scale "${scale}" is not a finite number`));
    }
  });

  it('a LoRA whose up and down ranks differ, or whose shape does not fit its weight', async () => {
    const l = LAYERS[0];
    const f = loraFactors(l, 2, 1);
    const rank = encodeSafetensors({
      'lora_unet_blocks_0_attn1_to_q.lora_down.weight': { dtype: 'F32', shape: [2, l.in], data: f.down.data },
      'lora_unet_blocks_0_attn1_to_q.lora_up.weight': { dtype: 'F32', shape: [l.out, 1], data: new Float32Array(l.out) },
    });
    await expectRejected(['--base', base, '--lora', await writeBytes('rank.safetensors', rank)], /rank\.safetensors: "lora_unet_blocks_0_attn1_to_q\.lora_up\.weight" has rank 1 .* but its down matrix has rank 2/);
    const shape = encodeSafetensors({
      'lora_unet_blocks_0_attn1_to_q.lora_down.weight': { dtype: 'F32', shape: [2, 7], data: new Float32Array(14) },
      'lora_unet_blocks_0_attn1_to_q.lora_up.weight': { dtype: 'F32', shape: [l.out, 2], data: new Float32Array(l.out * 2) },
    });
    await expectRejected(['--base', base, '--lora', await writeBytes('shape.safetensors', shape)], /shape\.safetensors: "lora_unet_blocks_0_attn1_to_q\.lora_up\.weight": LoRA up \[12,2\] · down \[2,7\] does not fit weight "onnx::MatMul_100" \[16,12\]/);
  });

  it('--strict with a key that matches nothing', async () => {
    const extra = loraFile('kohya', new Map([['blocks.7.missing', loraFactors(LAYERS[0], 2, 1)]]), 1);
    await expectRejected(['--base', base, '--lora', await writeBytes('stray.safetensors', extra), '--strict'], /stray\.safetensors: 3 key\(s\) match no weight in base\.onnx \(--strict\), first "lora_unet_blocks_7_missing\.alpha"/);
  });

  it('an --out that exists and is not an artifact directory', async () => {
    const file = await writeBytes('a-file', 'x');
    const r1 = await cli(['build', '--base', base, '--name', 'fixture', '--out', file]);
    expect(r1.code).not.toBe(0);
    expect(r1.stderr).toMatch(/a-file: exists and is not an artifact directory/);
    expect(await readFile(file, 'utf8')).toBe('x');
    const other = join(dir, 'other');
    await mkdir(other);
    await writeFile(join(other, 'notes.txt'), 'mine');
    const r2 = await cli(['build', '--base', base, '--name', 'fixture', '--out', other]);
    expect(r2.stderr).toMatch(/other: exists and is not an artifact directory \(it holds "notes\.txt"\)/);
    expect(await readdir(other)).toEqual(['notes.txt']);
    expect(await exists(store)).toBe(false);
  });

  it('exits non-zero from the real binary too', async () => {
    const bin = new URL('../../bin/fuseload.js', import.meta.url).pathname;
    const err = await promisify(execFile)('node', [bin, 'build', '--base', join(dir, 'missing.onnx'), '--name', 'x', '--out', join(dir, 'out')]).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toMatch(/^fuseload: .*missing\.onnx: no such file\n$/);
  });
});
