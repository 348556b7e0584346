/**
 * The loop's math as small ONNX graphs, run on the engine's device so the tensors never leave it:
 *
 * - the step graph: classifier-free guidance, one scheduler step in the coefficient form of
 *   schedulers/linear.ts, then the next UNet input (or, after the last step, the VAE's input);
 * - the concat graph: text embeddings batched for the UNet ([uncond; cond]), SDXL's two encoders
 *   side by side, a cast where the UNet's dtype differs from the encoder's.
 *
 * A step's numbers come in as small float32 inputs (scalars `k`, per-row weights `w`, the next
 * input's scale per batch row `s`), so one graph (one session) serves every step of every image
 * whose step has the same structure (`StepGraphSpec`). Each node is a GPU dispatch, so the linear
 * parts are folded on the CPU first: without clipping, and when no later step reads this one's
 * data prediction, x' = a·x + b·(p·x + q·ε) + c·ε is one product per tensor,
 * x' = (a + b·p)·x + Σᵣ wᵣ·uᵣ, the guidance inside the row weights wᵣ.
 */
import type { LinearStep } from '../schedulers/linear.ts';
import { OnnxGraphBuilder } from './onnx-graph.ts';

export type FloatType = 'float32' | 'float16';

/**
 * How the UNet's output comes in. `none`: no UNet (the first graph, which scales the initial
 * noise); `one`: one [1,…] output; `first`: row 0 of a [2,…] output (a batch-2 graph run without
 * guidance); `pair`: one [2,…] output, rows (uncond, cond); `two`: two [1,…] outputs (uncond, cond).
 */
export type UnetRows = 'none' | 'one' | 'first' | 'pair' | 'two';

export interface StepGraphSpec {
  unet: UnetRows;
  /** Element type of the UNet's output. */
  unetType: FloatType;
  /** How many earlier data predictions the step reads (inputs h0…). */
  history: number;
  noise: boolean;
  clip: boolean;
  /** Outputs: the new sample, this step's data prediction (for later steps), the next UNet input, the VAE input. */
  keepSample: boolean;
  keepDenoised: boolean;
  next?: { batch: number; type: FloatType };
  vae?: { type: FloatType };
}

/** The step graph's input and output names. */
export const STEP = {
  sample: 'x',
  /** `u` for one UNet output, `u0`/`u1` for two. */
  unet: ['u', 'u0', 'u1'],
  history: (j: number) => `h${j}`,
  noise: 'n',
  /** Scalars, in `StepGraph.scalars` order. */
  scalars: 'k',
  /** [R, 1, 1, 1]: one weight per UNet output row. */
  rows: 'w',
  /** [batch, 1, 1, 1]: the next UNet input's scale, per batch row. */
  nextScale: 's',
  out: { sample: 'x_next', denoised: 'denoised', next: 'model_in', vae: 'vae_in' },
} as const;

/** The scalars a graph reads: the sample's, the data prediction's (p, q, clip, b, c), each earlier step's, the noise's. */
export type Scalar = 'a' | 'p' | 'q' | 'clip' | 'b' | 'c' | 'e' | `h${number}`;

export interface StepGraph {
  spec: StepGraphSpec;
  graph: Uint8Array;
  /** k[i] is the value of scalars[i]. */
  scalars: Scalar[];
  /** Whether the graph forms the data prediction d (clipped, or kept), else the folded form. */
  denoises: boolean;
}

const ELEM_TO: Record<FloatType, number> = { float32: 1, float16: 10 };
const LATENT = [1, 'C', 'H', 'W'] as const;

/** A spec's key for caching its graph and session. */
export function stepGraphKey(spec: StepGraphSpec): string {
  return `step:${JSON.stringify(spec)}`;
}

/**
 *   ε  = Σᵣ wᵣ·uᵣ                                  (w: the guidance [1 − g, g], or [1] / [1, 0])
 *   d  = clip(p·x + q·ε)
 *   y  = a·x + b·d + c·ε + Σⱼ hⱼ·Hⱼ + e·n
 * or, folded (no clip, d not kept): y = a·x + Σᵣ wᵣ·uᵣ + Σⱼ hⱼ·Hⱼ + e·n with a and w pre-combined.
 *   x_next = y, model_in = cast(s ⊙ y) ([batch, …] by broadcasting), vae_in = cast(y) (its scale folded in).
 */
export function stepGraph(spec: StepGraphSpec): StepGraph {
  const g = new OnnxGraphBuilder('fuseload_step');
  const scalars: Scalar[] = [];
  const names = new Map<Scalar, string>();
  const scalar = (name: Scalar): string => {
    let s = names.get(name);
    if (!s) {
      names.set(name, (s = `k_${name}`));
      scalars.push(name);
    }
    return s;
  };
  const mul = (t: string, c: Scalar) => g.op('Mul', [t, scalar(c)]);
  const sum = (terms: string[]) => terms.reduce((acc, t) => g.op('Add', [acc, t]));
  const toFloat = (t: string) => (spec.unetType === 'float32' ? t : g.op('Cast', [t], { to: ELEM_TO.float32 }));

  const x = g.input(STEP.sample, 'float32', LATENT);
  let rows: string | undefined;
  if (spec.unet === 'two') {
    const u = toFloat(g.input(STEP.unet[1], spec.unetType, LATENT));
    const c = toFloat(g.input(STEP.unet[2], spec.unetType, LATENT));
    rows = g.op('Concat', [u, c], { axis: 0 });
  } else if (spec.unet !== 'none') {
    rows = toFloat(g.input(STEP.unet[0], spec.unetType, [spec.unet === 'one' ? 1 : 2, 'C', 'H', 'W']));
  }
  // Σᵣ wᵣ·uᵣ: one product, and a sum over the batch axis where there are two rows.
  const product = rows && g.op('Mul', [rows, g.input(STEP.rows, 'float32', [spec.unet === 'one' ? 1 : 2, 1, 1, 1])]);
  const weighted = product && (spec.unet === 'one' ? product : g.op('ReduceSum', [product, g.int64([0])], { keepdims: 1 }));

  const denoises = !!weighted && (spec.clip || spec.keepDenoised);
  const terms = [mul(x, 'a')];
  let denoised: string | undefined;
  if (denoises) {
    const eps = weighted!;
    denoised = g.op('Add', [mul(x, 'p'), mul(eps, 'q')], {}, spec.keepDenoised && !spec.clip ? STEP.out.denoised : undefined);
    if (spec.clip) {
      const r = scalar('clip');
      denoised = g.op('Max', [g.op('Min', [denoised, r]), g.op('Neg', [r])], {}, spec.keepDenoised ? STEP.out.denoised : undefined);
    }
    terms.push(mul(denoised, 'b'), mul(eps, 'c'));
  } else if (weighted) {
    terms.push(weighted);
  }
  for (let j = 0; j < spec.history; j++) terms.push(mul(g.input(STEP.history(j), 'float32', LATENT), `h${j}`));
  if (spec.noise) terms.push(mul(g.input(STEP.noise, 'float32', LATENT), 'e'));

  // The sum's last node is named for the output it is, where no cast follows.
  const direct = spec.keepSample ? STEP.out.sample : spec.vae?.type === 'float32' && !spec.next ? STEP.out.vae : undefined;
  const last = terms.pop()!;
  const y = terms.length ? g.op('Add', [sum(terms), last], {}, direct) : direct ? g.op('Identity', [last], {}, direct) : last;
  if (spec.keepSample) g.output(STEP.out.sample, 'float32', LATENT);
  if (spec.keepDenoised) {
    if (!denoised) throw new RangeError('step graph: no data prediction without a UNet output');
    g.output(STEP.out.denoised, 'float32', LATENT);
  }
  if (spec.next) {
    const batch = [spec.next.batch, 'C', 'H', 'W'];
    const scaled = g.op('Mul', [y, g.input(STEP.nextScale, 'float32', [spec.next.batch, 1, 1, 1])], {}, spec.next.type === 'float32' ? STEP.out.next : undefined);
    if (spec.next.type !== 'float32') g.op('Cast', [scaled], { to: ELEM_TO[spec.next.type] }, STEP.out.next);
    g.output(STEP.out.next, spec.next.type, batch);
  }
  if (spec.vae) {
    if (spec.next || spec.keepSample) throw new RangeError('step graph: the VAE input is the last step\'s only output');
    if (spec.vae.type !== 'float32') g.op('Cast', [y], { to: ELEM_TO[spec.vae.type] }, STEP.out.vae);
    g.output(STEP.out.vae, spec.vae.type, LATENT);
  }

  const k = g.input(STEP.scalars, 'float32', [scalars.length]);
  if (scalars.length === 1) g.node('Identity', [k], [names.get(scalars[0])!], {}, true);
  else g.node('Split', [k], scalars.map((c) => names.get(c)!), { axis: 0 }, true);
  return { spec, graph: g.encode(), scalars, denoises };
}

/** What a step's graph is fed besides its tensors. */
export interface StepValues {
  /** The scheduler's step (absent for the first graph, which only scales the noise by `initScale`). */
  step?: LinearStep;
  initScale?: number;
  /** The guidance scale g (`pair`, `two`). */
  guidance: number;
  /** The next UNet input's scale (with `next`). */
  nextScale?: number;
  /** y is divided by this (with `vae`: the VAE's scaling factor). */
  outScale?: number;
}

/** The feeds `k`, `w` and `s` of a step, folding the linear parts as the graph expects. */
export function stepInputs(graph: StepGraph, v: StepValues): Record<string, { type: 'float32'; dims: number[]; data: Float32Array }> {
  const { spec } = graph;
  const out = 1 / (v.outScale ?? 1);
  const values: Partial<Record<Scalar, number>> = {};
  let rows: number[] | undefined;
  // The guidance as row weights: ε = Σᵣ wᵣ·uᵣ.
  const guide = spec.unet === 'pair' || spec.unet === 'two' ? [1 - v.guidance, v.guidance] : spec.unet === 'first' ? [1, 0] : [1];
  const c = v.step;
  if (!c) {
    if (spec.unet !== 'none') throw new RangeError('step graph: a UNet output needs a scheduler step');
    values.a = (v.initScale ?? 1) * out;
  } else if (graph.denoises) {
    Object.assign(values, { p: c.denoise.sample, q: c.denoise.model, a: c.sample * out, b: c.denoised * out, c: c.model * out });
    if (c.clip !== undefined) values.clip = c.clip;
    rows = guide;
  } else {
    // y = (a + b·p)·x + (b·q + c)·ε
    values.a = (c.sample + c.denoised * c.denoise.sample) * out;
    const m = (c.denoised * c.denoise.model + c.model) * out;
    rows = guide.map((r) => r * m);
  }
  if (c) {
    c.history.forEach((h, j) => (values[`h${j}`] = h * out));
    if (spec.noise) values.e = c.noise * out;
  }
  const k = Float32Array.from(graph.scalars, (name) => {
    const value = values[name];
    if (value === undefined || !Number.isFinite(value)) throw new RangeError(`step graph: scalar ${name} is ${value}`);
    return value;
  });
  const feeds: Record<string, { type: 'float32'; dims: number[]; data: Float32Array }> = { [STEP.scalars]: { type: 'float32', dims: [k.length], data: k } };
  if (spec.unet !== 'none') feeds[STEP.rows] = { type: 'float32', dims: [rows!.length, 1, 1, 1], data: Float32Array.from(rows!) };
  if (spec.next) {
    if (v.nextScale === undefined) throw new RangeError('step graph: the next input needs its scale');
    feeds[STEP.nextScale] = { type: 'float32', dims: [spec.next.batch, 1, 1, 1], data: new Float32Array(spec.next.batch).fill(v.nextScale) };
  }
  return feeds;
}

export const CONCAT = { input: (i: number) => `t${i}`, output: 'y' } as const;

/** y = concat(cast(t0), cast(t1), …; axis) in `type`: batching and joining text embeddings on the device. */
export function concatGraph(types: readonly FloatType[], rank: number, axis: number, type: FloatType): Uint8Array {
  const g = new OnnxGraphBuilder('fuseload_concat');
  const dims = (i: number) => Array.from({ length: rank }, (_, d) => `d${i}_${d}`);
  const inputs = types.map((t, i) => {
    const name = g.input(CONCAT.input(i), t, dims(i));
    return t === type ? name : g.op('Cast', [name], { to: ELEM_TO[type] });
  });
  if (inputs.length === 1) g.op('Identity', inputs, {}, CONCAT.output);
  else g.op('Concat', inputs, { axis }, CONCAT.output);
  g.output(CONCAT.output, type, Array.from({ length: rank }, (_, d) => `y${d}`));
  return g.encode();
}
