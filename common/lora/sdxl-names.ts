/**
 * kohya module names → diffusers module paths. kohya's SDXL LoRAs name UNet modules after
 * the original (SGM/LDM) UNet — `input_blocks_4_1_transformer_blocks_0_attn1_to_q` — while
 * an exported graph names them as diffusers does: `down_blocks.1.attentions.0.…`. The block
 * arithmetic follows diffusers' `_maybe_map_sgm_blocks_to_diffusers` (layers_per_block = 2)
 * and the inner names its `convert_ldm_unet_checkpoint`; the table is SDXL's layout:
 *
 *   input_blocks 0          conv_in
 *   input_blocks 1,2        down_blocks.0.resnets.{0,1}              (no attentions)
 *   input_blocks 3 (op)     down_blocks.0.downsamplers.0.conv
 *   input_blocks 4,5        down_blocks.1.{resnets,attentions}.{0,1}
 *   input_blocks 6 (op)     down_blocks.1.downsamplers.0.conv
 *   input_blocks 7,8        down_blocks.2.{resnets,attentions}.{0,1}
 *   middle_block 0,1,2      mid_block.resnets.0, attentions.0, resnets.1
 *   output_blocks 0..5      up_blocks.{0,1}.{resnets,attentions}.{0..2}; _2_2 and _5_2 upsamplers.0
 *   output_blocks 6..8      up_blocks.2.resnets.{0..2}                (no attentions, no upsampler)
 *   time_embed_{0,2}        time_embedding.linear_{1,2}
 *   label_emb_0_{0,2}       add_embedding.linear_{1,2}
 *   out_{0,2}               conv_norm_out, conv_out
 *
 * kohya names that already use diffusers' names (SD 1.x: `down_blocks_0_…`, DiT:
 * `transformer_blocks_…`) only get their dots back. kohya's underscores are ambiguous
 * (`to_q`, `proj_in`, `ff_net_0_proj`), so names with underscores are matched explicitly.
 */

/** Multi-word segment names of diffusers' UNet and DiT modules, longest first where they overlap. */
const COMPOUND_SEGMENTS = [
  'single_transformer_blocks',
  'transformer_blocks',
  'down_blocks',
  'up_blocks',
  'mid_block',
  'conv_norm_out',
  'conv_shortcut',
  'conv_in',
  'conv_out',
  'time_emb_proj',
  'time_embedding',
  'add_embedding',
  'class_embedding',
  'encoder_hid_proj',
  'linear_1',
  'linear_2',
  'proj_in',
  'proj_out',
  'proj_mlp',
  'to_q',
  'to_k',
  'to_v',
  'to_out',
  'to_add_out',
  'add_q_proj',
  'add_k_proj',
  'add_v_proj',
  'ff_context',
  'norm1_context',
  'norm_out',
  'norm_q',
  'norm_k',
  'norm_added_q',
  'norm_added_k',
  'context_embedder',
  'x_embedder',
  'time_text_embed',
  'timestep_embedder',
  'guidance_embedder',
  'text_embedder',
  'pos_embed',
  'caption_projection',
].map((s) => s.split('_'));

/** The first segment of every diffusers UNet / DiT module path we convert. */
const TOP_LEVEL = new Set([
  'down_blocks',
  'up_blocks',
  'mid_block',
  'conv_in',
  'conv_out',
  'conv_norm_out',
  'time_embedding',
  'add_embedding',
  'class_embedding',
  'encoder_hid_proj',
  'transformer_blocks',
  'single_transformer_blocks',
  'context_embedder',
  'x_embedder',
  'time_text_embed',
  'norm_out',
  'proj_out',
  'pos_embed',
  'caption_projection',
]);

/** convert_ldm_unet_checkpoint's ResBlock renames. */
const RESNET_TAILS: Record<string, string> = {
  in_layers_0: 'norm1',
  in_layers_2: 'conv1',
  emb_layers_1: 'time_emb_proj',
  out_layers_0: 'norm2',
  out_layers_3: 'conv2',
  skip_connection: 'conv_shortcut',
};

/** convert_ldm_unet_checkpoint's renames outside the blocks. */
const TOP_LEVEL_RENAMES: Record<string, string> = {
  time_embed_0: 'time_embedding.linear_1',
  time_embed_2: 'time_embedding.linear_2',
  label_emb_0_0: 'add_embedding.linear_1',
  label_emb_0_2: 'add_embedding.linear_2',
  out_0: 'conv_norm_out',
  out_2: 'conv_out',
};

const PREFIX_RE = /^(?:lora_unet_|lora_transformer_|lycoris_)/;

/** `a_b_to_q_c` → `a.b.to_q.c`, joining the words of known compound names. */
function dotted(name: string): string {
  const words = name.split('_');
  const segments: string[] = [];
  for (let i = 0; i < words.length; ) {
    let taken = 1;
    for (const c of COMPOUND_SEGMENTS) {
      if (c.length > taken && c.every((w, k) => words[i + k] === w)) taken = c.length;
    }
    segments.push(words.slice(i, i + taken).join('_'));
    i += taken;
  }
  return segments.join('.');
}

/**
 * The diffusers module path of a kohya UNet/DiT module name (with or without its
 * `lora_unet_` / `lora_transformer_` prefix), e.g.
 * `input_blocks_4_1_transformer_blocks_0_attn1_to_q` → `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`.
 * Undefined for names SDXL's UNet (or a diffusers-named model) does not have.
 */
export function kohyaToDiffusersModule(kohya: string): string | undefined {
  const name = kohya.replace(PREFIX_RE, '');
  let m: RegExpExecArray | null;

  if (name === 'input_blocks_0_0') return 'conv_in';
  if ((m = /^input_blocks_(\d+)_(\d+)(?:_(.+))?$/.exec(name))) {
    const i = Number(m[1]);
    const j = Number(m[2]);
    const tail = m[3] ?? '';
    if (i < 1 || i > 8) return undefined;
    const block = Math.floor((i - 1) / 3);
    const layer = (i - 1) % 3;
    if (layer === 2) return j === 0 && tail === 'op' ? `down_blocks.${block}.downsamplers.0.conv` : undefined;
    if (j === 0) return resnet(`down_blocks.${block}.resnets.${layer}`, tail);
    if (j === 1 && block >= 1) return attention(`down_blocks.${block}.attentions.${layer}`, tail);
    return undefined;
  }
  if ((m = /^middle_block_(\d+)_(.+)$/.exec(name))) {
    const i = Number(m[1]);
    if (i === 0) return resnet('mid_block.resnets.0', m[2]);
    if (i === 1) return attention('mid_block.attentions.0', m[2]);
    if (i === 2) return resnet('mid_block.resnets.1', m[2]);
    return undefined;
  }
  if ((m = /^output_blocks_(\d+)_(\d+)_(.+)$/.exec(name))) {
    const i = Number(m[1]);
    const j = Number(m[2]);
    const tail = m[3];
    if (i > 8) return undefined;
    const block = Math.floor(i / 3);
    const layer = i % 3;
    if (j === 0) return resnet(`up_blocks.${block}.resnets.${layer}`, tail);
    if (j === 1 && block <= 1) return attention(`up_blocks.${block}.attentions.${layer}`, tail);
    if (j === 2 && block <= 1 && layer === 2 && tail === 'conv') return `up_blocks.${block}.upsamplers.0.conv`;
    return undefined;
  }
  if (Object.hasOwn(TOP_LEVEL_RENAMES, name)) return TOP_LEVEL_RENAMES[name];

  // Already diffusers' names (SD 1.x kohya, DiT): dots back, nothing renamed.
  const path = dotted(name);
  return TOP_LEVEL.has(path.split('.')[0]) ? path : undefined;
}

function resnet(prefix: string, tail: string): string | undefined {
  const inner = RESNET_TAILS[tail];
  return inner ? `${prefix}.${inner}` : undefined;
}

/** A SpatialTransformer's inner names are the same in LDM and diffusers: only dots come back. */
function attention(prefix: string, tail: string): string | undefined {
  return tail ? `${prefix}.${dotted(tail)}` : undefined;
}

/** Whether a kohya module uses the original UNet's block names (an SDXL-style file). */
export function isSgmModuleName(kohya: string): boolean {
  return /^(?:input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_\d/.test(kohya.replace(PREFIX_RE, ''));
}
