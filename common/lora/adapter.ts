/**
 * A LoRA file read into modules: for each module its up and down matrices (fp32), alpha,
 * and the keys that made it, so every key can be accounted for as matched or not.
 */
import { badInput } from '../errors.ts';
import { parseSafetensors, type SafetensorsTensor, tensorData } from '../safetensors.ts';
import { bf16ToF32, f16ToF32 } from './dtype.ts';
import type { LoraMatrix } from './delta.ts';
import type { Role } from '../manifest.ts';
import { type LoraFormat, parseLoraKey } from './keys.ts';

export interface LoraModule {
  /** The component its keys' prefix routes it to (undefined: none named, see keys.ts). */
  component?: Role;
  /** moduleMatchKey of the module. */
  match: string;
  /** The module as the file names it. */
  module: string;
  up?: LoraMatrix;
  down?: LoraMatrix;
  alpha?: number;
  /** Tensor names in the file that belong to this module. */
  keys: string[];
  /** The up key's name, for messages. */
  label: string;
}

export interface LoraAdapter {
  format: LoraFormat;
  /** By `moduleKey(component, match)`: SDXL's te1 and te2 share module paths, never a key. */
  modules: Map<string, LoraModule>;
  /** Keys no convention explains (e.g. LyCORIS hada_*, lora_mid). */
  unrecognised: string[];
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

/**
 * Reads a LoRA safetensors file. A PEFT config's lora_alpha applies to every module
 * that has no alpha tensor of its own (rsLoRA: alpha·√r / r, i.e. alpha/√r overall).
 */
export function readLora(bytes: Uint8Array, input: string, config?: PeftConfig): LoraAdapter {
  const header = parseSafetensors(bytes, input);
  const modules = new Map<string, LoraModule>();
  const unrecognised: string[] = [];
  const formats = new Map<LoraFormat, number>();
  for (const t of [...header.tensors].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const key = parseLoraKey(t.name);
    if (!key) {
      unrecognised.push(t.name);
      continue;
    }
    formats.set(key.format, (formats.get(key.format) ?? 0) + 1);
    const id = moduleKey(key.component, key.match);
    let m = modules.get(id);
    if (!m) modules.set(id, (m = { ...(key.component ? { component: key.component } : {}), match: key.match, module: key.module, keys: [], label: t.name }));
    m.keys.push(t.name);
    if (key.part === 'alpha') {
      const v = toF32(bytes, t);
      if (v.length !== 1 || !Number.isFinite(v[0])) throw badInput(input, `"${t.name}" must be one finite number`);
      m.alpha = v[0];
    } else {
      if (m[key.part]) throw badInput(input, `"${t.name}" repeats the ${key.part} matrix of module "${key.module}"`);
      m[key.part] = { data: toF32(bytes, t), shape: t.shape };
      if (key.part === 'up') m.label = t.name;
    }
  }
  for (const m of modules.values()) {
    if (m.up && m.down) {
      const rank = m.down.shape[0];
      const upRank = m.up.shape[1];
      if (m.up.shape.length < 2 || upRank !== rank) {
        throw badInput(input, `"${m.label}" has rank ${upRank} (shape [${m.up.shape.join(',')}]) but its down matrix has rank ${rank} (shape [${m.down.shape.join(',')}])`);
      }
      if (m.alpha === undefined && config) {
        // PEFT: scaling = alpha / r, with per-module r and alpha from the patterns; rsLoRA alpha / √r.
        const r = peftPattern(config.rank_pattern, m.module) ?? rank;
        if (r !== rank) throw badInput(input, `"${m.label}" has rank ${rank}, but adapter_config.json's rank_pattern gives module "${m.module}" rank ${r}`);
        const alpha = peftPattern(config.alpha_pattern, m.module) ?? config.lora_alpha;
        if (alpha) m.alpha = config.use_rslora ? alpha * Math.sqrt(rank) : alpha;
      }
    }
  }
  // The convention that names most keys; mixed files are rare and still merge key by key.
  const format = [...formats.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'kohya';
  return { format, modules, unrecognised };
}
