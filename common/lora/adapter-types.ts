/**
 * The key grammar of every common adapter type: the tensors of one module (its name prefix
 * split off: `lora_up.weight`, `hada_w1_a`, `lokr_w2`, `diff_b`, …) → a typed description
 * that says which formula applies and with which factors. Covers what ComfyUI's
 * `comfy/lora.py::load_lora` and `comfy/weight_adapter/*` load (LoRA/LoCon, LoHa, LoKr,
 * GLoRA, full diffs, norm diffs, set) and names OFT/BOFT so they are reported rather than
 * silently dropped. Shapes are checked here; the math lives in adapter-delta.ts.
 */
import { FuseloadError } from '../errors.ts';
import { bf16ToF32, f16ToF32 } from './dtype.ts';

/** One tensor of a module as read from the file: fp32 values, or fp16/bf16 bits. */
export interface AdapterTensorInput {
  shape: readonly number[];
  data: Float32Array | Uint16Array;
  /** Needed when `data` holds 16-bit values; `F32` (the default) otherwise. */
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** A factor in fp32, with the full tensor name it came from (for messages). */
export interface AdapterFactor {
  key: string;
  shape: readonly number[];
  data: Float32Array;
}

/** One LoKr side: a full matrix, a low-rank pair a·b, or a Tucker triple (conv w2 only). */
export type LokrFactor =
  | { kind: 'full'; w: AdapterFactor }
  | { kind: 'low-rank'; a: AdapterFactor; b: AdapterFactor }
  | { kind: 'tucker'; a: AdapterFactor; b: AdapterFactor; t: AdapterFactor };

interface AdapterBase {
  /** The module as the file names it (the prefix of every key). */
  module: string;
  /** Every tensor name of the module this description accounts for, sorted. */
  keys: string[];
  /** The `alpha` tensor's value; scaling is alpha/rank where the type has a rank. */
  alpha?: number;
  /** DoRA magnitude: [out, 1, …] (normalise per output row) or [1, in, …] (per input column). */
  doraScale?: AdapterFactor;
  /** `diff_b` or `b_norm`: a delta on the module's bias, added as scale × biasDiff. */
  biasDiff?: AdapterFactor;
}

export type AdapterDescription =
  /** ΔW = up·down · alpha/rank; up [out, r(,1,1)], down [r, in(, kh, kw)]. */
  | (AdapterBase & { type: 'lora'; up: AdapterFactor; down: AdapterFactor })
  /** LoCon with a Tucker core: ΔW[o,i,k,l] = Σ up[o,m]·mid[m,n,k,l]·down[n,i] · alpha/rank. */
  | (AdapterBase & { type: 'locon-mid'; up: AdapterFactor; down: AdapterFactor; mid: AdapterFactor })
  /** ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha/rank, or the Tucker form with t1/t2. */
  | (AdapterBase & {
      type: 'loha';
      w1a: AdapterFactor;
      w1b: AdapterFactor;
      w2a: AdapterFactor;
      w2b: AdapterFactor;
      t1?: AdapterFactor;
      t2?: AdapterFactor;
    })
  /** ΔW = kron(w1, w2) · alpha/rank when a side is decomposed, × 1 otherwise. */
  | (AdapterBase & { type: 'lokr'; w1: LokrFactor; w2: LokrFactor })
  /** GLoRA: ΔW = W·A + B in ComfyUI's old or new factor layout (told apart by shape). */
  | (AdapterBase & { type: 'glora'; a1: AdapterFactor; a2: AdapterFactor; b1: AdapterFactor; b2: AdapterFactor })
  /** A full weight delta (`diff`); absent when the module only carries `diff_b`. */
  | (AdapterBase & { type: 'diff'; diff?: AdapterFactor })
  /** A norm layer's weight delta (`w_norm`); its bias delta (`b_norm`) is `biasDiff`. */
  | (AdapterBase & { type: 'norm'; wNorm: AdapterFactor })
  /** Replace the weight (`set_weight`). */
  | (AdapterBase & { type: 'set'; weight: AdapterFactor })
  /** Recognised but not applicable here (OFT, BOFT, padded targets): `reason` says why. */
  | (AdapterBase & { type: 'unsupported'; kind: 'oft' | 'boft' | 'reshape'; reason: string });

export type AdapterType = AdapterDescription['type'];

/** Every per-module suffix this grammar knows, besides `boft_*`. */
export const ADAPTER_SUFFIXES = [
  'lora_up.weight',
  'lora_down.weight',
  'lora_mid.weight',
  'alpha',
  'dora_scale',
  'hada_w1_a',
  'hada_w1_b',
  'hada_w2_a',
  'hada_w2_b',
  'hada_t1',
  'hada_t2',
  'lokr_w1',
  'lokr_w1_a',
  'lokr_w1_b',
  'lokr_w2',
  'lokr_w2_a',
  'lokr_w2_b',
  'lokr_t2',
  'diff',
  'diff_b',
  'w_norm',
  'b_norm',
  'a1.weight',
  'a2.weight',
  'b1.weight',
  'b2.weight',
  'set_weight',
  'oft_blocks',
  'oft_diag',
  'rescale',
  'reshape_weight',
] as const;

const SUFFIX_SET: ReadonlySet<string> = new Set(ADAPTER_SUFFIXES);
const BOFT_RE = /^boft_[A-Za-z0-9_]+$/;

export function isAdapterSuffix(suffix: string): boolean {
  return SUFFIX_SET.has(suffix) || BOFT_RE.test(suffix);
}

/**
 * Splits a full tensor name into module and adapter suffix
 * (`lora_unet_x_to_q.hada_w1_a` → `{ module: 'lora_unet_x_to_q', suffix: 'hada_w1_a' }`);
 * null when the name ends in no suffix we know. Two-part suffixes (`lora_up.weight`,
 * `a1.weight`) are tried before one-part ones.
 */
export function splitAdapterKey(name: string): { module: string; suffix: string } | null {
  const last = name.lastIndexOf('.');
  if (last <= 0) return null;
  const prev = name.lastIndexOf('.', last - 1);
  if (prev > 0) {
    const two = name.slice(prev + 1);
    if (SUFFIX_SET.has(two)) return { module: name.slice(0, prev), suffix: two };
  }
  const one = name.slice(last + 1);
  if (isAdapterSuffix(one) && !one.endsWith('.weight')) return { module: name.slice(0, last), suffix: one };
  return null;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
export const fmtShape = (shape: readonly number[]) => `[${shape.join(',')}]`;

function toF32(t: AdapterTensorInput, key: string, source: string): Float32Array {
  if (t.data.length !== numel(t.shape)) {
    throw new FuseloadError('bad-input', `${source}: "${key}" has ${t.data.length} values but shape ${fmtShape(t.shape)}`);
  }
  if (t.data instanceof Float32Array) return t.data;
  if (t.dtype === 'F16') return f16ToF32(t.data);
  if (t.dtype === 'BF16') return bf16ToF32(t.data);
  throw new FuseloadError('bad-input', `${source}: "${key}" holds 16-bit values but no F16/BF16 dtype`);
}

/**
 * Describes one module's adapter from its tensors, keyed by suffix. Checks that pairs are
 * complete and that factors multiply; `checkAdapterTarget` then checks the target's shape.
 * Throws a one-line FuseloadError naming the key ('bad-input' for missing or conflicting
 * keys, 'shape-mismatch' for factors that cannot combine). `source` prefixes messages.
 */
export function describeAdapter(
  module: string,
  tensors: ReadonlyMap<string, AdapterTensorInput> | Readonly<Record<string, AdapterTensorInput>>,
  source = 'lora',
): AdapterDescription {
  const entries: [string, AdapterTensorInput][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const byName = new Map(entries);
  const key = (suffix: string) => `${module}.${suffix}`;
  for (const [suffix] of entries) {
    if (!isAdapterSuffix(suffix)) throw new FuseloadError('bad-input', `${source}: "${key(suffix)}" is not an adapter key we know`);
  }
  const has = (s: string) => byName.has(s);
  const get = (s: string): AdapterFactor | undefined => {
    const t = byName.get(s);
    return t && { key: key(s), shape: [...t.shape], data: toF32(t, key(s), source) };
  };
  const need = (s: string, partner: string): AdapterFactor => {
    const f = get(s);
    if (!f) throw new FuseloadError('bad-input', `${source}: "${key(partner)}" has no matching "${key(s)}"`);
    return f;
  };
  const keys = entries.map(([s]) => key(s)).sort();

  let alpha: number | undefined;
  const alphaT = get('alpha');
  if (alphaT) {
    if (alphaT.data.length !== 1 || !Number.isFinite(alphaT.data[0])) throw new FuseloadError('bad-input', `${source}: "${alphaT.key}" must be one finite number`);
    alpha = alphaT.data[0];
  }
  const doraScale = get('dora_scale');
  let biasDiff = get('diff_b');
  if (has('b_norm')) {
    if (biasDiff) throw new FuseloadError('bad-input', `${source}: "${key('b_norm')}" and "${key('diff_b')}" both set the bias delta`);
    if (!has('w_norm')) throw new FuseloadError('bad-input', `${source}: "${key('b_norm')}" has no matching "${key('w_norm')}"`);
    biasDiff = get('b_norm');
  }
  const base: AdapterBase = { module, keys, ...(alpha !== undefined && { alpha }), ...(doraScale && { doraScale }), ...(biasDiff && { biasDiff }) };

  // Which weight formula the keys ask for; a module carries exactly one.
  const families: [string, string[]][] = [
    ['lora', ['lora_up.weight', 'lora_down.weight', 'lora_mid.weight']],
    ['loha', ['hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b', 'hada_t1', 'hada_t2']],
    ['lokr', ['lokr_w1', 'lokr_w1_a', 'lokr_w1_b', 'lokr_w2', 'lokr_w2_a', 'lokr_w2_b', 'lokr_t2']],
    ['glora', ['a1.weight', 'a2.weight', 'b1.weight', 'b2.weight']],
    ['diff', ['diff']],
    ['norm', ['w_norm']],
    ['set', ['set_weight']],
    ['oft', ['oft_blocks', 'oft_diag', 'rescale', ...entries.map(([s]) => s).filter((s) => BOFT_RE.test(s))]],
  ];
  const present = families.map(([name, suffixes]) => [name, suffixes.filter(has)] as const).filter(([, found]) => found.length > 0);
  if (present.length > 1) {
    throw new FuseloadError(
      'bad-input',
      `${source}: module "${module}" mixes ${present[0][0]} ("${key(present[0][1][0])}") and ${present[1][0]} ("${key(present[1][1][0])}") keys`,
    );
  }
  const family = present[0]?.[0];

  if (has('reshape_weight')) {
    return { ...base, type: 'unsupported', kind: 'reshape', reason: `"${key('reshape_weight')}" pads the target weight, which a fixed graph cannot do` };
  }
  if (doraScale && family !== 'lora' && family !== 'loha' && family !== 'lokr' && family !== 'glora' && family !== 'oft') {
    throw new FuseloadError('bad-input', `${source}: "${doraScale.key}" needs a LoRA, LoHa, LoKr or GLoRA adapter in the same module`);
  }

  switch (family) {
    case 'lora': {
      const up = has('lora_up.weight') ? get('lora_up.weight')! : need('lora_up.weight', has('lora_down.weight') ? 'lora_down.weight' : 'lora_mid.weight');
      const down = need('lora_down.weight', 'lora_up.weight');
      const mid = get('lora_mid.weight');
      const rank = down.shape[0];
      if (up.shape.length < 2 || numel(up.shape) / up.shape[0] !== (mid ? mid.shape[0] : rank)) {
        throw mismatch(source, up, mid ?? down, `inner size ${numel(up.shape) / (up.shape[0] || 1)} ≠ ${mid ? mid.shape[0] : rank}`);
      }
      if (!mid) {
        if (down.shape.length < 2) throw mismatch(source, up, down, 'down must have at least 2 dims');
        return { ...base, type: 'lora', up, down };
      }
      if (mid.shape.length < 3 || mid.shape[1] !== rank || numel(down.shape) / rank !== down.shape[1]) {
        throw mismatch(source, mid, down, `the core must be [r, ${rank}, kh, kw] and down [${rank}, in(,1,1)]`);
      }
      return { ...base, type: 'locon-mid', up, down, mid };
    }
    case 'loha': {
      const w1a = need('hada_w1_a', 'hada_w1_b');
      const w1b = need('hada_w1_b', 'hada_w1_a');
      const w2a = need('hada_w2_a', 'hada_w1_a');
      const w2b = need('hada_w2_b', 'hada_w2_a');
      const t1 = get('hada_t1');
      const t2 = get('hada_t2');
      if (t1 && !t2) need('hada_t2', 'hada_t1');
      if (t2 && !t1) need('hada_t1', 'hada_t2');
      if (t1 && t2) {
        // Tucker: t [r, r, kh, kw], a [r, out], b [r, in] (LyCORIS stores a transposed here).
        for (const [t, a, b] of [
          [t1, w1a, w1b],
          [t2, w2a, w2b],
        ] as const) {
          if (t.shape.length < 3 || a.shape.length !== 2 || b.shape.length !== 2 || t.shape[0] !== a.shape[0] || t.shape[1] !== b.shape[0]) {
            throw new FuseloadError(
              'shape-mismatch',
              `${source}: Tucker core "${t.key}" ${fmtShape(t.shape)} does not join "${a.key}" ${fmtShape(a.shape)} and "${b.key}" ${fmtShape(b.shape)} (want [ra, rb, kh, kw], [ra, out], [rb, in])`,
            );
          }
        }
        if (w1a.shape[1] !== w2a.shape[1] || w1b.shape[1] !== w2b.shape[1] || !sameDims(t1.shape.slice(2), t2.shape.slice(2))) {
          throw mismatch(source, t1, t2, 'the two Hadamard factors differ in shape');
        }
      } else {
        checkProduct(source, w1a, w1b);
        checkProduct(source, w2a, w2b);
        if (w1a.shape[0] !== w2a.shape[0] || numel(w1b.shape) / w1b.shape[0] !== numel(w2b.shape) / w2b.shape[0]) {
          throw mismatch(source, w1a, w2a, `w1 is [${w1a.shape[0]}, ${numel(w1b.shape) / w1b.shape[0]}] but w2 is [${w2a.shape[0]}, ${numel(w2b.shape) / w2b.shape[0]}]`);
        }
      }
      return { ...base, type: 'loha', w1a, w1b, w2a, w2b, ...(t1 && { t1 }), ...(t2 && { t2 }) };
    }
    case 'lokr': {
      const w1 = lokrSide('1', has, get, need, key, source);
      const w2 = lokrSide('2', has, get, need, key, source);
      if (w1.kind === 'tucker') throw new FuseloadError('bad-input', `${source}: "${key('lokr_t1')}" is not a LoKr key`);
      const s1 = lokrShape(w1);
      if (s1.length !== 2 && !(s1.length > 2 && numel(s1.slice(2)) === 1)) {
        throw new FuseloadError('shape-mismatch', `${source}: LoKr w1 ${fmtShape(s1)} ("${firstKey(w1)}") must be a matrix`);
      }
      return { ...base, type: 'lokr', w1, w2 };
    }
    case 'glora': {
      const a1 = need('a1.weight', has('a2.weight') ? 'a2.weight' : 'b1.weight');
      const a2 = need('a2.weight', 'a1.weight');
      const b1 = need('b1.weight', 'a1.weight');
      const b2 = need('b2.weight', 'b1.weight');
      const glora = { ...base, type: 'glora' as const, a1, a2, b1, b2 };
      gloraLayout(glora, undefined, source);
      return glora;
    }
    case 'diff':
      return { ...base, type: 'diff', diff: get('diff')! };
    case 'norm':
      return { ...base, type: 'norm', wNorm: get('w_norm')! };
    case 'set':
      return { ...base, type: 'set', weight: get('set_weight')! };
    case 'oft': {
      const blocks = byName.get('oft_blocks');
      const boft = (blocks && blocks.shape.length === 4) || entries.some(([s]) => BOFT_RE.test(s));
      return {
        ...base,
        type: 'unsupported',
        kind: boft ? 'boft' : 'oft',
        reason: `${boft ? 'BOFT' : 'OFT'} ("${key(present[0][1][0])}") rotates the weight and is not supported`,
      };
    }
    default:
      if (biasDiff) return { ...base, type: 'diff' };
      throw new FuseloadError('bad-input', `${source}: module "${module}" has no weight keys (only ${keys.map((k) => `"${k}"`).join(', ') || 'nothing'})`);
  }
}

function lokrSide(
  n: '1' | '2',
  has: (s: string) => boolean,
  get: (s: string) => AdapterFactor | undefined,
  need: (s: string, partner: string) => AdapterFactor,
  key: (s: string) => string,
  source: string,
): LokrFactor {
  const full = get(`lokr_w${n}`);
  const decomposed = has(`lokr_w${n}_a`) || has(`lokr_w${n}_b`);
  if (full && decomposed) {
    throw new FuseloadError('bad-input', `${source}: "${key(`lokr_w${n}`)}" and "${key(has(`lokr_w${n}_a`) ? `lokr_w${n}_a` : `lokr_w${n}_b`)}" both define LoKr w${n}`);
  }
  if (n === '2' && has('lokr_t2') && !decomposed) need('lokr_w2_a', 'lokr_t2');
  if (full) return { kind: 'full', w: full };
  if (!decomposed) throw new FuseloadError('bad-input', `${source}: LoKr module needs "${key(`lokr_w${n}`)}" or "${key(`lokr_w${n}_a`)}"/"${key(`lokr_w${n}_b`)}"`);
  const a = need(`lokr_w${n}_a`, `lokr_w${n}_b`);
  const b = need(`lokr_w${n}_b`, `lokr_w${n}_a`);
  const t = n === '2' ? get('lokr_t2') : undefined;
  if (t) {
    if (t.shape.length < 3 || a.shape.length !== 2 || b.shape.length !== 2 || t.shape[0] !== a.shape[0] || t.shape[1] !== b.shape[0]) {
      throw new FuseloadError(
        'shape-mismatch',
        `${source}: Tucker core "${t.key}" ${fmtShape(t.shape)} does not join "${a.key}" ${fmtShape(a.shape)} and "${b.key}" ${fmtShape(b.shape)} (want [ra, rb, kh, kw], [ra, out], [rb, in])`,
      );
    }
    return { kind: 'tucker', a, b, t };
  }
  checkProduct(source, a, b);
  return { kind: 'low-rank', a, b };
}

function checkProduct(source: string, a: AdapterFactor, b: AdapterFactor): void {
  if (a.shape.length < 2 || b.shape.length < 2 || numel(a.shape) / a.shape[0] !== b.shape[0]) {
    throw mismatch(source, a, b, `inner sizes ${a.shape.length < 2 ? '?' : numel(a.shape) / a.shape[0]} ≠ ${b.shape[0] ?? '?'}`);
  }
}

function mismatch(source: string, a: AdapterFactor, b: AdapterFactor, why: string): FuseloadError {
  return new FuseloadError('shape-mismatch', `${source}: "${a.key}" ${fmtShape(a.shape)} and "${b.key}" ${fmtShape(b.shape)} cannot combine (${why})`);
}

const sameDims = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** The shape of a LoKr side once rebuilt: [rows, cols(, kh, kw)]. */
export function lokrShape(f: LokrFactor): number[] {
  if (f.kind === 'full') return [...f.w.shape];
  if (f.kind === 'low-rank') return [f.a.shape[0], ...f.b.shape.slice(1)];
  return [f.a.shape[1], f.b.shape[1], ...f.t.shape.slice(2)];
}

function firstKey(f: LokrFactor): string {
  return f.kind === 'full' ? f.w.key : f.a.key;
}

/** The rank alpha divides by, or undefined where the type has none (then alpha/rank = 1). */
export function adapterRank(a: AdapterDescription, targetShape?: readonly number[]): number | undefined {
  switch (a.type) {
    case 'lora':
    case 'locon-mid':
      return a.down.shape[0];
    case 'loha':
      return a.w1b.shape[0];
    case 'lokr':
      // ComfyUI (lokr.py, calculate_weight): w2's inner dim wins, then w1's; none if both are full.
      if (a.w2.kind !== 'full') return a.w2.b.shape[0];
      if (a.w1.kind !== 'full') return a.w1.b.shape[0];
      return undefined;
    case 'glora':
      return gloraLayout(a, targetShape).rank;
    default:
      return undefined;
  }
}

/**
 * ComfyUI's GLoRA layout test (glora.py, calculate_weight): old LyCORIS files store
 * a1 [r, K], a2 [K, r], b1 [r, K], b2 [out, r]; new ones a1 [in, r], a2 [r, in],
 * b1 [out, r], b2 [r, K]. When both fit, a square target whose size is a2's first dim
 * keeps the old reading.
 */
export function gloraLayout(
  a: Extract<AdapterDescription, { type: 'glora' }>,
  target: readonly number[] | undefined,
  source = 'lora',
): { old: boolean; rank: number } {
  const [a1, a2, b1, b2] = [a.a1.shape, a.a2.shape, a.b1.shape, a.b2.shape];
  let old: boolean | undefined;
  let rank = 0;
  if (b2[1] === b1[0] && b1[0] === a1[0] && a1[0] === a2[1]) {
    old = true;
    rank = a1[0];
  }
  if (b2[0] === b1[1] && b1[1] === a1[1] && a1[1] === a2[0]) {
    const keepOld = old && target !== undefined && a2[0] === target[0] && target[0] === target[1];
    if (!keepOld) {
      old = false;
      rank = a2[0];
    }
  }
  if (old === undefined) {
    throw new FuseloadError(
      'shape-mismatch',
      `${source}: GLoRA "${a.a1.key}" ${fmtShape(a1)}, a2 ${fmtShape(a2)}, b1 ${fmtShape(b1)}, b2 ${fmtShape(b2)} share no rank in either GLoRA layout`,
    );
  }
  return { old, rank };
}

/**
 * Throws a one-line 'shape-mismatch' FuseloadError naming the key unless the adapter's
 * delta fits a weight of `targetShape` (torch layout: [out, in] or [out, in/groups, kh, kw];
 * any shape for diff/norm/set) and its bias delta fits `biasShape` when given.
 */
export function checkAdapterTarget(a: AdapterDescription, targetShape: readonly number[], biasShape?: readonly number[], source = 'lora'): void {
  const out = targetShape[0];
  const row = out ? numel(targetShape) / out : 0;
  const fail = (what: string, key: string): never => {
    throw new FuseloadError('shape-mismatch', `${source}: ${what} ("${key}") does not fit weight ${fmtShape(targetShape)}`);
  };
  const fits2 = (rows: number, cols: number, what: string, key: string) => {
    if (rows !== out || cols !== row) fail(`${what} gives [${rows}, ${cols}]`, key);
  };
  switch (a.type) {
    case 'lora':
      fits2(a.up.shape[0], numel(a.down.shape) / a.down.shape[0], `LoRA up ${fmtShape(a.up.shape)} · down ${fmtShape(a.down.shape)}`, a.up.key);
      break;
    case 'locon-mid':
      fits2(a.up.shape[0], a.down.shape[1] * numel(a.mid.shape.slice(2)), `LoCon up ${fmtShape(a.up.shape)}, mid ${fmtShape(a.mid.shape)}, down ${fmtShape(a.down.shape)}`, a.up.key);
      break;
    case 'loha':
      if (a.t1) fits2(a.w1a.shape[1], a.w1b.shape[1] * numel(a.t1.shape.slice(2)), `LoHa Tucker ${fmtShape(a.t1.shape)}`, a.t1.key);
      else fits2(a.w1a.shape[0], numel(a.w1b.shape) / a.w1b.shape[0], `LoHa w1a ${fmtShape(a.w1a.shape)} · w1b ${fmtShape(a.w1b.shape)}`, a.w1a.key);
      break;
    case 'lokr': {
      const s1 = lokrShape(a.w1);
      const s2 = lokrShape(a.w2);
      const rows = s1[0] * s2[0];
      const cols = (numel(s1) / s1[0]) * (numel(s2) / s2[0]);
      if (rows !== out || cols !== row) fail(`LoKr w1 ${fmtShape(s1)} ⊗ w2 ${fmtShape(s2)} gives [${rows}, ${cols}]`, firstKey(a.w1));
      break;
    }
    case 'glora': {
      const { old } = gloraLayout(a, targetShape, source);
      const f = (s: readonly number[]) => [s[0], numel(s) / s[0]];
      const [a1, a2, b1, b2] = [f(a.a1.shape), f(a.a2.shape), f(a.b1.shape), f(a.b2.shape)];
      const ok = old
        ? b2[0] === out && b1[1] === row && a2[0] === row && a1[1] === row
        : b1[0] === out && b2[1] === row && a1[0] === targetShape[1] && a2[1] === targetShape[1];
      if (!ok) fail(`GLoRA (${old ? 'old' : 'new'} layout) a1 ${fmtShape(a.a1.shape)}, a2 ${fmtShape(a.a2.shape)}, b1 ${fmtShape(a.b1.shape)}, b2 ${fmtShape(a.b2.shape)}`, a.a1.key);
      break;
    }
    case 'diff':
      if (a.diff && !sameTensorShape(a.diff.shape, targetShape)) fail(`diff ${fmtShape(a.diff.shape)}`, a.diff.key);
      break;
    case 'norm':
      if (!sameTensorShape(a.wNorm.shape, targetShape)) fail(`w_norm ${fmtShape(a.wNorm.shape)}`, a.wNorm.key);
      break;
    case 'set':
      if (!sameTensorShape(a.weight.shape, targetShape)) fail(`set_weight ${fmtShape(a.weight.shape)}`, a.weight.key);
      break;
    case 'unsupported':
      throw new FuseloadError('unsupported', `${source}: module "${a.module}": ${a.reason}`);
  }
  if (a.doraScale) doraAxis(a.doraScale, targetShape, source);
  if (a.biasDiff && biasShape && !sameTensorShape(a.biasDiff.shape, biasShape)) {
    throw new FuseloadError('shape-mismatch', `${source}: bias delta ${fmtShape(a.biasDiff.shape)} ("${a.biasDiff.key}") does not fit bias ${fmtShape(biasShape)}`);
  }
}

/** Same values in the same order: equal shapes up to trailing 1s ([C] vs [C, 1]). */
function sameTensorShape(a: readonly number[], b: readonly number[]): boolean {
  const trim = (s: readonly number[]) => {
    const t = [...s];
    while (t.length > 1 && t[t.length - 1] === 1) t.pop();
    return t;
  };
  return sameDims(trim(a), trim(b));
}

/**
 * Which axis a DoRA magnitude normalises, as ComfyUI decides it (weight_adapter/base.py,
 * weight_decompose: `dora_scale.shape[0] == weight.shape[0]` → per output row); LyCORIS
 * writes [out, 1, …] with wd_on_out and [1, in, …] without, PEFT a 1-D [out].
 */
export function doraAxis(dora: AdapterFactor, targetShape: readonly number[], source = 'lora'): 'out' | 'in' {
  const out = targetShape[0];
  if (dora.shape[0] === out && numel(dora.shape) === out) return 'out';
  if (targetShape.length >= 2 && dora.shape[0] === 1 && dora.shape[1] === targetShape[1] && numel(dora.shape) === targetShape[1]) return 'in';
  throw new FuseloadError(
    'shape-mismatch',
    `${source}: "${dora.key}" ${fmtShape(dora.shape)} is neither [${out},1] nor [1,${targetShape[1] ?? '?'}] for weight ${fmtShape(targetShape)}`,
  );
}
