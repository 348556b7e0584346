/**
 * LoRA key → module path. Three naming conventions reach the same module:
 *   kohya      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
 *   PEFT       base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight
 *   diffusers  unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight
 * and a graph names it by node path (/down_blocks.0/…/attn1/to_q/MatMul) or initializer
 * (…to_q.weight). kohya's underscores cannot be turned back into dots unambiguously
 * (`to_q`), so both sides are compared through one flattened form: `moduleMatchKey`.
 */

import type { Role } from '../manifest.ts';
import { isSgmModuleName, kohyaToDiffusersModule } from './sdxl-names.ts';

export type LoraFormat = 'kohya' | 'peft' | 'diffusers';
export type LoraPart = 'up' | 'down' | 'alpha';

export interface LoraKey {
  /**
   * The pipeline component the key's prefix names (kohya `lora_unet_`, `lora_te_`/`lora_te1_`,
   * `lora_te2_`, `lora_transformer_`; diffusers/PEFT `unet.`, `text_encoder.`, `text_encoder_2.`,
   * `transformer.`); undefined when the key names none (PEFT `base_model.model.…` of one model).
   */
  component?: Role;
  /** The module as the file names it, inside its component (prefixes and suffix removed). */
  module: string;
  /** `moduleMatchKey(module)`: what a tensor index `module` is compared with. */
  match: string;
  part: LoraPart;
  format: LoraFormat;
}

/**
 * The flattened comparison form of a module path inside its component: separators → `_`.
 * Component prefixes are not part of it: the parser routes them away first, so
 * `transformer_blocks.0` stays `transformer_blocks_0` on both sides.
 */
export function moduleMatchKey(module: string): string {
  return module.replace(/[./]/g, '_');
}

const KOHYA_RE = /^lora_(unet|te[12]?|transformer)_([A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const KOHYA_COMPONENT: Record<string, Role> = { unet: 'unet', te: 'text_encoder', te1: 'text_encoder', te2: 'text_encoder_2', transformer: 'transformer' };
/** diffusers/PEFT component prefixes, longest first (`text_encoder_2.` before `text_encoder.`). */
const DOTTED_COMPONENTS: [string, Role][] = [
  ['text_encoder_2.', 'text_encoder_2'],
  ['text_encoder.', 'text_encoder'],
  ['unet.', 'unet'],
  ['transformer.', 'transformer'],
];
const PEFT_RE = /^(.+?)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$/;
const PEFT_ALPHA_RE = /^(.+?)\.alpha$/;
const DIFFUSERS_RE = /^(.+?)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$/;
const DIFFUSERS_PROCESSOR_RE = /^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;

const KOHYA_MODULE_RE = /^lora_(unet|te[12]?|transformer)_([A-Za-z0-9_]+)$/;
/** SimpleTuner's LyCORIS files name denoiser modules `lycoris_<module>` (ComfyUI reads them so). */
const LYCORIS_MODULE_RE = /^lycoris_([A-Za-z0-9_]+)$/;

/**
 * A kohya / LyCORIS module name (a key without its adapter suffix: `lora_unet_…`, `lora_te1_…`,
 * `lycoris_…`) → its component, the module as the file names it, and the match key. SDXL's
 * kohya files name UNet modules after the original UNet (`input_blocks_4_1_…`): those match
 * the diffusers module they map to (sdxl-names.ts); every other name matches as it is, dots or
 * underscores alike (`transformer_blocks_0_…` is a DiT's `transformer_blocks.0.…`). Null for
 * names with no kohya prefix.
 */
export function parseKohyaModule(name: string): { component: Role; module: string; match: string } | null {
  let component: Role;
  let module: string;
  let m = KOHYA_MODULE_RE.exec(name);
  if (m) {
    component = KOHYA_COMPONENT[m[1]];
    module = m[2];
  } else if ((m = LYCORIS_MODULE_RE.exec(name))) {
    component = 'unet';
    module = m[1];
  } else return null;
  let match = moduleMatchKey(module);
  if ((component === 'unet' || component === 'transformer') && isSgmModuleName(module)) {
    const diffusers = kohyaToDiffusersModule(module);
    if (diffusers) match = moduleMatchKey(diffusers);
  }
  return { component, module, match };
}

/** Parses one tensor name of a LoRA file; null when it is not a LoRA key we know. */
export function parseLoraKey(key: string): LoraKey | null {
  let m = KOHYA_RE.exec(key);
  if (m) {
    const part: LoraPart = m[3] === 'alpha' ? 'alpha' : m[3].startsWith('lora_down') ? 'down' : 'up';
    const { component, module, match } = parseKohyaModule(`lora_${m[1]}_${m[2]}`)!;
    return { component, module, match, part, format: 'kohya' };
  }
  m = PEFT_RE.exec(key);
  if (m) return make(m[1], m[2] === 'A' ? 'down' : 'up', 'peft');
  m = DIFFUSERS_PROCESSOR_RE.exec(key);
  if (m) return make(`${m[1]}.${m[2] === 'to_out' ? 'to_out.0' : m[2]}`, m[3] as LoraPart, 'diffusers');
  m = DIFFUSERS_RE.exec(key);
  if (m) return make(m[1], m[2] as LoraPart, 'diffusers');
  m = PEFT_ALPHA_RE.exec(key);
  if (m && !key.startsWith('lora_')) return make(m[1], 'alpha', 'diffusers');
  return null;
}

/** Splits `[base_model.model.]<component>.[base_model.model.]<module>` into its parts. */
export function routeModule(dotted: string): { component?: Role; module: string } {
  let module = dotted.replace(/^base_model\.model\./, '');
  let component: Role | undefined;
  for (const [prefix, role] of DOTTED_COMPONENTS) {
    if (module.startsWith(prefix)) {
      component = role;
      module = module.slice(prefix.length).replace(/^base_model\.model\./, '');
      break;
    }
  }
  return { component, module };
}

function make(dotted: string, part: LoraPart, format: LoraFormat): LoraKey {
  const { component, module } = routeModule(dotted);
  return { ...(component ? { component } : {}), module, match: moduleMatchKey(module), part, format };
}

/** Ops whose last path segment is an op name, not part of the module (`MatMul`, `Conv_3`). */
const OP_SEGMENT_RE = /^(MatMul|Gemm|Conv|ConvTranspose|Add|Mul|Transpose|Cast)(_\d+)?$/;

/**
 * The dotted module path of a node named like a torch.onnx export
 * (`/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul` →
 * `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); undefined if it has none.
 */
export function moduleFromNodeName(name: string | undefined): string | undefined {
  if (!name || !name.includes('/')) return undefined;
  const parts = name.split('/').filter(Boolean);
  if (parts.length < 2 || !OP_SEGMENT_RE.test(parts[parts.length - 1])) return undefined;
  return parts.slice(0, -1).join('.');
}

/** `down_blocks.0.proj_in.weight` → `down_blocks.0.proj_in`; exporter names (`onnx::MatMul_12`) give undefined. */
export function moduleFromInitializerName(name: string): string | undefined {
  if (name.includes('::') || !name.endsWith('.weight')) return undefined;
  const module = name.slice(0, -'.weight'.length);
  return module || undefined;
}
