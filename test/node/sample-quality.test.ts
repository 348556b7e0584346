/**
 * The sample draws what you ask: the committed pipeline (tools/sample/pipeline, trained by
 * tools/sample/train) built, served and generated through exactly the path a real SD pipeline
 * takes, then measured with plain pixel statistics (test/support/image-measure.ts): for
 * prompts and seeds not used in training, the shape's colour, the background colour and the
 * shape itself must match the prompt; each LoRA moves its own measure with its scale.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Pipeline } from '../../common/pipeline.ts';
import { build } from '../../tools/build/build.ts';
import { createNodeRuntime, type NodeRuntime } from '../../tools/runtime/index.ts';
import { startCountingOrigin, type CountingOrigin } from '../support/node-origin.ts';
import { measureImage, type Palette } from '../support/image-measure.ts';
import { writeTag } from '../support/tag.ts';

const SAMPLE = new URL('../../tools/sample/pipeline/', import.meta.url).pathname;
const palette = JSON.parse(await readFile(join(SAMPLE, 'sample_palette.json'), 'utf8')) as Palette & {
  shapes: string[];
  sizes: Record<string, number>;
  positions: Record<string, number[]>;
  held_out: { shape: string; color: string; background: string }[];
  loras: Record<string, { file: string }>;
};
const RUN = { steps: 20, guidanceScale: 5, scheduler: 'euler' as const };
/** Seeds from here on were never used in training (the trainer's noise is torch's, not ours, anyway). */
const SEED0 = 100_000;

interface Spec {
  shape: string;
  color: string;
  background: string;
  size: string;
  position: string;
}

function caption(s: Spec): string {
  return ['a', s.size, s.color, s.shape, s.position, 'on a', s.background, 'background'].filter(Boolean).join(' ');
}

/** Every held-out (shape, colour, background), then seeded random specs. */
function specs(n: number): Spec[] {
  let state = 0x9e3779b9;
  const rand = (k: number) => {
    state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return state % k;
  };
  const colors = Object.keys(palette.colors);
  const sizes = Object.keys(palette.sizes).map((s) => (s === 'default' ? '' : s));
  const positions = Object.keys(palette.positions).map((p) => (p === 'center' ? '' : p));
  const out: Spec[] = palette.held_out.map((h, i) => ({ ...h, size: sizes[i % sizes.length], position: positions[i % positions.length] }));
  while (out.length < n) {
    const color = colors[rand(colors.length)];
    let background = colors[rand(colors.length)];
    while (background === color) background = colors[rand(colors.length)];
    out.push({ shape: palette.shapes[rand(palette.shapes.length)], color, background, size: sizes[rand(sizes.length)], position: positions[rand(positions.length)] });
  }
  return out;
}

let work: string;
let origin: CountingOrigin;
let runtime: NodeRuntime;
let fingerprint: string;
const loraDigests: Record<string, string> = {};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fuseload-sample-quality-'));
  const dir = join(work, 'origin');
  // The base, and one build per LoRA so its file travels as a blob: loaded below as overlays on the base.
  const base = await build({ base: SAMPLE, name: 'sample', out: dir, store: null });
  fingerprint = base.fingerprint;
  for (const [name, l] of Object.entries(palette.loras)) {
    const merged = await build({ base: SAMPLE, loras: [{ path: join(SAMPLE, l.file), scale: 1 }], name: 'sample', out: dir, store: null });
    loraDigests[name] = merged.loras[0].digest;
  }
  await writeTag(dir, 'sample', fingerprint);
  origin = await startCountingOrigin(dir);
  runtime = createNodeRuntime({ storeRoot: join(work, 'store'), warn: () => {} });
}, 120_000);
afterAll(async () => {
  await origin?.close();
  await rm(work, { recursive: true, force: true });
});

async function image(p: Pipeline, prompt: string, seed: number) {
  const { image } = await p.generate({ prompt, seed, ...RUN });
  const rgb = new Uint8Array(image.width * image.height * 3);
  for (let i = 0; i < image.width * image.height; i++) rgb.set(image.data.subarray(i * 4, i * 4 + 3), i * 3);
  return measureImage(rgb, image.width, image.height, palette);
}

describe('the sample draws what you ask', () => {
  // The committed model measures 93 / 100 / 83 % here (tools/sample/train/README.md has the
  // trainer's own figures); the bounds are the project's targets, and the figures print every run.
  it('colour ≥ 90 %, background ≥ 90 %, shape ≥ 70 % on prompts and seeds not used in training', async () => {
    const p = await runtime.loadPipeline({ origin: origin.url, model: 'sample', fingerprint });
    const all = specs(60);
    let color = 0;
    let background = 0;
    let shape = 0;
    const misses: string[] = [];
    for (const [i, s] of all.entries()) {
      const m = await image(p, caption(s), SEED0 + i);
      color += Number(m.color === s.color);
      background += Number(m.background === s.background);
      shape += Number(m.shape === s.shape);
      if (m.color !== s.color || m.background !== s.background || m.shape !== s.shape) misses.push(`"${caption(s)}" → ${m.color} ${m.shape} on ${m.background}`);
    }
    const n = all.length;
    console.log(`sample quality over ${n} images (20 Euler steps, guidance 5): colour ${((100 * color) / n).toFixed(0)} %, background ${((100 * background) / n).toFixed(0)} %, shape ${((100 * shape) / n).toFixed(0)} %`);
    if (misses.length) console.log(`misses:\n  ${misses.slice(0, 12).join('\n  ')}`);
    expect(color / n).toBeGreaterThanOrEqual(0.9);
    expect(background / n).toBeGreaterThanOrEqual(0.9);
    expect(shape / n).toBeGreaterThanOrEqual(0.7);
    await p.dispose();
  });

  const MEASURE = { outline: 'interior', pastel: 'saturation', stripes: 'bgVar' } as const;
  const DIRECTION = { outline: -1, pastel: -1, stripes: 1 } as const;
  for (const name of Object.keys(MEASURE) as (keyof typeof MEASURE)[]) {
    it(`${name} moves its measure (${MEASURE[name]}) monotonically with its scale; scale 0 is the base`, async () => {
      const prompts = specs(14).slice(6).map(caption);
      const byScale: number[] = [];
      let baseline: number[] | null = null;
      for (const scale of [0, 0.5, 1]) {
        const p = await runtime.loadPipeline({ origin: origin.url, model: 'sample', fingerprint, loras: [{ digest: loraDigests[name], scale }] });
        const values: number[] = [];
        for (const [i, prompt] of prompts.entries()) values.push((await image(p, prompt, SEED0 + 500 + i))[MEASURE[name]]);
        if (scale === 0) baseline = values;
        byScale.push(values.reduce((a, b) => a + b, 0) / values.length);
        await p.dispose();
      }
      console.log(`${name}: mean ${MEASURE[name]} at scale 0 / 0.5 / 1 = ${byScale.map((v) => v.toFixed(3)).join(' / ')}`);
      const base = await runtime.loadPipeline({ origin: origin.url, model: 'sample', fingerprint });
      const plain: number[] = [];
      for (const [i, prompt] of prompts.entries()) plain.push((await image(base, prompt, SEED0 + 500 + i))[MEASURE[name]]);
      expect(baseline).toEqual(plain);
      await base.dispose();
      for (let k = 1; k < byScale.length; k++) expect(DIRECTION[name] * (byScale[k] - byScale[k - 1]), `${name} ${byScale.join(' → ')}`).toBeGreaterThan(0);
    });
  }
});
