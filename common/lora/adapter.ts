/**
 * A LoRA file read into modules: for each module what its keys describe (adapter-types.ts:
 * LoRA, LoCon, LoHa, LoKr, GLoRA, DoRA, full diffs, norms, set, and OFT/BOFT named as
 * unsupported), plain LoRA's up and down matrices (fp32) and alpha for the fast paths, and the
 * keys that made it, so every key can be accounted for as matched or not.
 *
 * kohya / LyCORIS names (`lora_unet_…`, `lora_te1_…`, `lycoris_…` + an adapter suffix) are
 * grouped by splitAdapterKey and described by describeAdapter; PEFT and diffusers names
 * (`….lora_A.weight`, `….lora.up.weight`) by keys.ts.
 */
import { badInput, isFuseloadError } from '../errors.ts';
import { parseSafetensors, type SafetensorsTensor, tensorData } from '../safetensors.ts';
import { type AdapterDescription, type AdapterTensorInput, describeAdapter, splitAdapterKey } from './adapter-types.ts';
import { bf16ToF32, f16ToF32 } from './dtype.ts';
import type { LoraMatrix } from './delta.ts';
import type { Role } from '../manifest.ts';
import { type LoraFormat, moduleMatchKey, parseKohyaModule, parseLoraKey, routeModule } from './keys.ts';

export interface LoraModule {
  /** The component its keys' prefix routes it to (undefined: none named, see keys.ts). */
  component?: Role;
  /** moduleMatchKey of the module (for SDXL's SGM names, of the diffusers module it maps to). */
  match: string;
  /** The module as the file names it. */
  module: string;
  /** What the keys describe; every module in `LoraAdapter.modules` has one. */
  adapter?: AdapterDescription;
  /** A plain LoRA's factors (type `lora`), as the JavaScript and onnxruntime fast paths take them. */
  up?: LoraMatrix;
  down?: LoraMatrix;
  alpha?: number;
  /** Tensor names in the file that belong to this module. */
  keys: string[];
  /** The up key's name (or the module's first weight key), for messages. */
  label: string;
}

export interface LoraAdapter {
  format: LoraFormat;
  /** By `moduleKey(component, match)`: SDXL's te1 and te2 share module paths, never a key. */
  modules: Map<string, LoraModule>;
  /**
   * Keys that land on nothing whatever the model: names no convention explains, and the keys
   * of a module missing a partner (an up without its down, `hada_w1_a` without `hada_w1_b`).
   */
  unrecognised: string[];
  /** Every key of the file → its adapter type (`lora`, `loha`, …, `OFT`, or `unknown`). */
  keyTypes: Map<string, string>;
}

/** The adapter type a report names: the description's type, or OFT / BOFT / reshape for unsupported ones. */
export function adapterTypeName(a: AdapterDescription): string {
  if (a.type !== 'unsupported') return a.type;
  return a.kind === 'oft' ? 'OFT' : a.kind === 'boft' ? 'BOFT' : 'reshape';
}

/** Whether the recipe's fast paths take it: a LoRA without DoRA (its bias delta, if any, is applied apart). */
export function isPlainLora(m: LoraModule): m is LoraModule & { up: LoraMatrix; down: LoraMatrix } {
  return m.adapter?.type === 'lora' && !m.adapter.doraScale && !!m.up && !!m.down;
}

/** The key of a module in `LoraAdapter.modules`. */
export function moduleKey(component: Role | undefined, match: string): string {
  return `${component ?? '*'}|${match}`;
}

/** The part of a PEFT adapter_config.json that changes the math. */
export interface PeftConfig {
  r?: number;
  lora_alpha?: number;
  use_rslora?: boolean;
  /** Module-name pattern → rank, for modules whose rank differs from `r` (PEFT `rank_pattern`). */
  rank_pattern?: Record<string, number>;
  /** Module-name pattern → alpha, for modules whose alpha differs from `lora_alpha` (PEFT `alpha_pattern`). */
  alpha_pattern?: Record<string, number>;
}

/** Validates a parsed adapter_config.json; only the fields of PeftConfig are used. */
export function parsePeftConfig(json: unknown, input: string): PeftConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw badInput(input, 'adapter config is not a JSON object');
  const c = json as Record<string, unknown>;
  const out: PeftConfig = {};
  const number = (v: unknown, field: string) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw badInput(input, `"${field}" must be a non-negative number`);
    return v;
  };
  for (const key of ['r', 'lora_alpha'] as const) {
    if (c[key] === undefined || c[key] === null) continue;
    out[key] = number(c[key], key);
  }
  if (c.use_rslora === true) out.use_rslora = true;
  for (const key of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = c[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'object' || Array.isArray(v)) throw badInput(input, `"${key}" must be an object of pattern → number`);
    const patterns: Record<string, number> = {};
    for (const [pattern, n] of Object.entries(v as Record<string, unknown>)) {
      try {
        new RegExp(pattern);
      } catch {
        throw badInput(input, `"${key}" pattern "${pattern}" is not a regular expression`);
      }
      patterns[pattern] = number(n, `${key}.${pattern}`);
    }
    if (Object.keys(patterns).length) out[key] = patterns;
  }
  return out;
}

/**
 * PEFT's pattern lookup (`get_pattern_key`): the first pattern that matches the whole module
 * name or a dotted suffix of it (`to_q` matches `…attn1.to_q`, not `…attn1.to_qq`).
 */
export function peftPattern(patterns: Record<string, number> | undefined, module: string): number | undefined {
  if (!patterns) return undefined;
  for (const [pattern, value] of Object.entries(patterns)) {
    if (new RegExp(`^(?:.*\\.)?(?:${pattern})$`).test(module)) return value;
  }
  return undefined;
}

function toF32(bytes: Uint8Array, t: SafetensorsTensor): Float32Array {
  const data = tensorData(bytes, t);
  if (t.dtype === 'F32') return data as Float32Array;
  return t.dtype === 'F16' ? f16ToF32(data as Uint16Array) : bf16ToF32(data as Uint16Array);
}

/** The type an incomplete module's keys are counted under, from a suffix. */
function suffixFamily(suffix: string): string {
  if (suffix.startsWith('lora_')) return 'lora';
  if (suffix.startsWith('hada_')) return 'loha';
  if (suffix.startsWith('lokr_')) return 'lokr';
  if (/^[ab][12]\.weight$/.test(suffix)) return 'glora';
  if (suffix.startsWith('diff')) return 'diff';
  if (suffix.endsWith('_norm')) return 'norm';
  if (suffix === 'set_weight') return 'set';
  if (suffix.startsWith('oft_') || suffix === 'rescale') return 'OFT';
  if (suffix.startsWith('boft_')) return 'BOFT';
  return 'unknown';
}

/** describeAdapter's "a partner key is missing" errors: such a module is unmatched, not malformed. */
function isIncomplete(e: unknown): boolean {
  return isFuseloadError(e) && e.code === 'bad-input' && /has no matching|module needs|has no weight keys|needs a LoRA, LoHa/.test(e.message);
}

/** One kohya / LyCORIS module's tensors, by adapter suffix. */
interface Group {
  component?: Role;
  module: string;
  match: string;
  tensors: Map<string, SafetensorsTensor>;
}

/**
 * Reads a LoRA safetensors file. A PEFT config's lora_alpha applies to every plain LoRA module
 * that has no alpha tensor of its own (rsLoRA: alpha·√r / r, i.e. alpha/√r overall).
 * Factors that cannot combine are a one-line error naming the key.
 */
export function readLora(bytes: Uint8Array, input: string, config?: PeftConfig): LoraAdapter {
  const header = parseSafetensors(bytes, input);
  const modules = new Map<string, LoraModule>();
  const unrecognised: string[] = [];
  const keyTypes = new Map<string, string>();
  const formats = new Map<LoraFormat, number>();
  const tensors = [...header.tensors].sort((a, b) => (a.name < b.name ? -1 : 1));

  // Dotted module paths that carry a LyCORIS key (`unet.….hada_w1_a`): their `.alpha` belongs to that group too.
  const dottedLycoris = new Set<string>();
  for (const t of tensors) {
    const split = splitAdapterKey(t.name);
    if (split && split.suffix !== 'alpha' && !parseKohyaModule(split.module) && !parseLoraKey(t.name)) dottedLycoris.add(split.module);
  }

  // 1. Group keys by module: kohya/LyCORIS by their adapter suffix, PEFT/diffusers as keys.ts parses them.
  const groups = new Map<string, Group>();
  // PEFT and diffusers modules: up, down and alpha as keys.ts names them.
  const peft = new Map<string, { component?: Role; module: string; match: string; parts: Map<'up' | 'down' | 'alpha', SafetensorsTensor> }>();
  for (const t of tensors) {
    const split = splitAdapterKey(t.name);
    const kohya = split && parseKohyaModule(split.module);
    if (split && (kohya || dottedLycoris.has(split.module))) {
      const routed = kohya ?? (() => {
        const { component, module } = routeModule(split.module);
        return { component, module, match: moduleMatchKey(module) };
      })();
      const format: LoraFormat = kohya ? 'kohya' : 'diffusers';
      const id = moduleKey(routed.component, routed.match);
      let g = groups.get(id);
      if (!g) groups.set(id, (g = { ...(routed.component ? { component: routed.component } : {}), module: routed.module, match: routed.match, tensors: new Map() }));
      const seen = g.tensors.get(split.suffix);
      if (seen) throw badInput(input, `"${t.name}" and "${seen.name}" are both the ${split.suffix} of module "${routed.module}"`);
      g.tensors.set(split.suffix, t);
      formats.set(format, (formats.get(format) ?? 0) + 1);
      continue;
    }
    const key = parseLoraKey(t.name);
    if (!key) {
      unrecognised.push(t.name);
      keyTypes.set(t.name, 'unknown');
      continue;
    }
    formats.set(key.format, (formats.get(key.format) ?? 0) + 1);
    const id = moduleKey(key.component, key.match);
    let p = peft.get(id);
    if (!p) peft.set(id, (p = { ...(key.component ? { component: key.component } : {}), module: key.module, match: key.match, parts: new Map() }));
    if (p.parts.has(key.part)) throw badInput(input, `"${t.name}" repeats the ${key.part} matrix of module "${key.module}"`);
    p.parts.set(key.part, t);
  }

  // 2. Describe each module.
  const add = (id: string, m: LoraModule) => {
    if (modules.has(id)) throw badInput(input, `"${m.keys[0]}" and "${modules.get(id)!.keys[0]}" name the same module "${m.module}"`);
    modules.set(id, m);
  };
  for (const [id, g] of groups) {
    const prefix = splitAdapterKey(g.tensors.values().next().value!.name)!.module;
    const keys = [...g.tensors.values()].map((t) => t.name).sort();
    const up = g.tensors.get('lora_up.weight');
    const down = g.tensors.get('lora_down.weight');
    if (up && down && !g.tensors.has('lora_mid.weight')) checkRank(input, up, down);
    const inputs = new Map<string, AdapterTensorInput>();
    for (const [suffix, t] of g.tensors) inputs.set(suffix, { shape: t.shape, dtype: t.dtype as 'F32' | 'F16' | 'BF16', data: tensorData(bytes, t) });
    let adapter: AdapterDescription;
    try {
      adapter = describeAdapter(prefix, inputs, input);
    } catch (e) {
      if (!isIncomplete(e)) throw e;
      const family = suffixFamily([...g.tensors.keys()].find((s) => s !== 'alpha' && s !== 'dora_scale') ?? 'alpha');
      for (const k of keys) keyTypes.set(k, family);
      unrecognised.push(...keys);
      continue;
    }
    for (const k of keys) keyTypes.set(k, adapterTypeName(adapter));
    const label = adapter.type === 'lora' ? adapter.up.key : (keys.find((k) => !k.endsWith('.alpha')) ?? keys[0]);
    const m: LoraModule = { ...(g.component ? { component: g.component } : {}), match: g.match, module: g.module, adapter, keys, label };
    if (adapter.type === 'lora') {
      m.up = { data: adapter.up.data, shape: adapter.up.shape };
      m.down = { data: adapter.down.data, shape: adapter.down.shape };
      if (adapter.alpha !== undefined) m.alpha = adapter.alpha;
    }
    add(id, m);
  }
  for (const [id, p] of peft) {
    const keys = [...p.parts.values()].map((t) => t.name).sort();
    const up = p.parts.get('up');
    const down = p.parts.get('down');
    const alphaT = p.parts.get('alpha');
    let alpha: number | undefined;
    if (alphaT) {
      const v = toF32(bytes, alphaT);
      if (v.length !== 1 || !Number.isFinite(v[0])) throw badInput(input, `"${alphaT.name}" must be one finite number`);
      alpha = v[0];
    }
    if (!up || !down) {
      for (const k of keys) keyTypes.set(k, 'lora');
      unrecognised.push(...keys);
      continue;
    }
    checkRank(input, up, down);
    const m: LoraModule = {
      ...(p.component ? { component: p.component } : {}),
      match: p.match,
      module: p.module,
      up: { data: toF32(bytes, up), shape: up.shape },
      down: { data: toF32(bytes, down), shape: down.shape },
      keys,
      label: up.name,
    };
    if (alpha !== undefined) m.alpha = alpha;
    m.adapter = {
      type: 'lora',
      module: p.module,
      keys,
      ...(m.alpha !== undefined && { alpha: m.alpha }),
      up: { key: up.name, shape: up.shape, data: m.up!.data },
      down: { key: down.name, shape: down.shape, data: m.down!.data },
    };
    for (const k of keys) keyTypes.set(k, 'lora');
    add(id, m);
  }
  if (config) {
    for (const m of modules.values()) {
      if (m.adapter?.type !== 'lora' || m.alpha !== undefined) continue;
      // PEFT: scaling = alpha / r, with per-module r and alpha from the patterns; rsLoRA alpha / √r.
      const rank = m.adapter.down.shape[0];
      const r = peftPattern(config.rank_pattern, m.module) ?? rank;
      if (r !== rank) throw badInput(input, `"${m.label}" has rank ${rank}, but adapter_config.json's rank_pattern gives module "${m.module}" rank ${r}`);
      const a = peftPattern(config.alpha_pattern, m.module) ?? config.lora_alpha;
      if (a) m.adapter.alpha = m.alpha = config.use_rslora ? a * Math.sqrt(rank) : a;
    }
  }
  unrecognised.sort();
  // The convention that names most keys; mixed files are rare and still merge key by key.
  const format = [...formats.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'kohya';
  return { format, modules, unrecognised, keyTypes };
}

/** An up and a down that share no rank: the message names both shapes. */
function checkRank(input: string, up: SafetensorsTensor, down: SafetensorsTensor): void {
  const rank = down.shape[0];
  const upRank = up.shape[1];
  if (up.shape.length < 2 || upRank !== rank) {
    throw badInput(input, `"${up.name}" has rank ${upRank} (shape [${up.shape.join(',')}]) but its down matrix has rank ${rank} (shape [${down.shape.join(',')}])`);
  }
}
