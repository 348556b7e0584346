import { describe, expect, it } from 'vitest';
import { moduleMatchKey } from '../../common/lora/keys.ts';
import { isSgmModuleName, kohyaToDiffusersModule } from '../../common/lora/sdxl-names.ts';

/**
 * Real kohya SDXL module names and the diffusers module each reaches, written out by hand from
 * diffusers' rules: `_maybe_map_sgm_blocks_to_diffusers` (layers_per_block 2: input block i →
 * down_blocks[(i−1)//3] layer (i−1)%3, output block i → up_blocks[i//3] layer i%3, inner index
 * 0/1/2 → resnets/attentions/upsamplers, `op` → downsamplers.0) and `convert_ldm_unet_checkpoint`
 * (in_layers.0/2 → norm1/conv1, emb_layers.1 → time_emb_proj, out_layers.0/3 → norm2/conv2,
 * skip_connection → conv_shortcut, time_embed.0/2, label_emb.0.0/2, input_blocks.0.0, out.0/2).
 */
const SDXL: [kohya: string, diffusers: string][] = [
  // input blocks: down_blocks.0 has resnets only, 1 and 2 resnets and attentions.
  ['input_blocks_0_0', 'conv_in'],
  ['input_blocks_1_0_in_layers_0', 'down_blocks.0.resnets.0.norm1'],
  ['input_blocks_1_0_in_layers_2', 'down_blocks.0.resnets.0.conv1'],
  ['input_blocks_2_0_emb_layers_1', 'down_blocks.0.resnets.1.time_emb_proj'],
  ['input_blocks_2_0_out_layers_3', 'down_blocks.0.resnets.1.conv2'],
  ['input_blocks_3_0_op', 'down_blocks.0.downsamplers.0.conv'],
  ['input_blocks_4_0_skip_connection', 'down_blocks.1.resnets.0.conv_shortcut'],
  ['input_blocks_4_0_out_layers_0', 'down_blocks.1.resnets.0.norm2'],
  ['input_blocks_4_1_proj_in', 'down_blocks.1.attentions.0.proj_in'],
  ['input_blocks_4_1_transformer_blocks_1_attn1_to_q', 'down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q'],
  ['input_blocks_5_1_transformer_blocks_0_attn2_to_k', 'down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k'],
  ['input_blocks_5_1_transformer_blocks_0_attn2_to_out_0', 'down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0'],
  ['input_blocks_6_0_op', 'down_blocks.1.downsamplers.0.conv'],
  ['input_blocks_7_0_in_layers_2', 'down_blocks.2.resnets.0.conv1'],
  ['input_blocks_7_1_transformer_blocks_9_ff_net_0_proj', 'down_blocks.2.attentions.0.transformer_blocks.9.ff.net.0.proj'],
  ['input_blocks_8_1_proj_out', 'down_blocks.2.attentions.1.proj_out'],
  ['input_blocks_8_1_transformer_blocks_4_ff_net_2', 'down_blocks.2.attentions.1.transformer_blocks.4.ff.net.2'],
  // middle block
  ['middle_block_0_in_layers_2', 'mid_block.resnets.0.conv1'],
  ['middle_block_0_emb_layers_1', 'mid_block.resnets.0.time_emb_proj'],
  ['middle_block_1_proj_in', 'mid_block.attentions.0.proj_in'],
  ['middle_block_1_transformer_blocks_3_attn2_to_v', 'mid_block.attentions.0.transformer_blocks.3.attn2.to_v'],
  ['middle_block_2_out_layers_3', 'mid_block.resnets.1.conv2'],
  // output blocks: up_blocks 0 and 1 have 3 resnets + 3 attentions + an upsampler, up_blocks.2 resnets only.
  ['output_blocks_0_0_skip_connection', 'up_blocks.0.resnets.0.conv_shortcut'],
  ['output_blocks_0_1_transformer_blocks_0_ff_net_2', 'up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2'],
  ['output_blocks_1_0_in_layers_2', 'up_blocks.0.resnets.1.conv1'],
  ['output_blocks_2_1_proj_in', 'up_blocks.0.attentions.2.proj_in'],
  ['output_blocks_2_2_conv', 'up_blocks.0.upsamplers.0.conv'],
  ['output_blocks_3_1_transformer_blocks_1_attn1_to_v', 'up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_v'],
  ['output_blocks_4_0_emb_layers_1', 'up_blocks.1.resnets.1.time_emb_proj'],
  ['output_blocks_5_1_proj_out', 'up_blocks.1.attentions.2.proj_out'],
  ['output_blocks_5_2_conv', 'up_blocks.1.upsamplers.0.conv'],
  ['output_blocks_6_0_in_layers_2', 'up_blocks.2.resnets.0.conv1'],
  ['output_blocks_7_0_skip_connection', 'up_blocks.2.resnets.1.conv_shortcut'],
  ['output_blocks_8_0_emb_layers_1', 'up_blocks.2.resnets.2.time_emb_proj'],
  ['output_blocks_8_0_out_layers_3', 'up_blocks.2.resnets.2.conv2'],
  // outside the blocks
  ['time_embed_0', 'time_embedding.linear_1'],
  ['time_embed_2', 'time_embedding.linear_2'],
  ['label_emb_0_0', 'add_embedding.linear_1'],
  ['label_emb_0_2', 'add_embedding.linear_2'],
  ['out_0', 'conv_norm_out'],
  ['out_2', 'conv_out'],
];

describe('kohya SDXL module names → diffusers modules', () => {
  for (const [kohya, diffusers] of SDXL) {
    it(`${kohya} → ${diffusers}`, () => {
      expect(kohyaToDiffusersModule(kohya)).toBe(diffusers);
      expect(kohyaToDiffusersModule(`lora_unet_${kohya}`)).toBe(diffusers);
      expect(isSgmModuleName(kohya)).toBe(true);
    });
  }

  it('reaches the weights a graph names (node or initializer path) through moduleMatchKey', () => {
    const kohya = 'lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q';
    expect(moduleMatchKey(kohyaToDiffusersModule(kohya)!)).toBe(moduleMatchKey('down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q'));
  });

  it('has no module for blocks SDXL does not have', () => {
    for (const kohya of [
      'input_blocks_1_1_proj_in', // down_blocks.0 has no attentions
      'input_blocks_3_0_in_layers_2', // input block 3 is only the downsampler
      'input_blocks_9_0_in_layers_2', // SD 1.x has 12 input blocks, SDXL 9
      'output_blocks_6_1_proj_in', // up_blocks.2 has no attentions
      'output_blocks_8_2_conv', // the last up block has no upsampler
      'output_blocks_1_2_conv', // upsamplers only after the third layer
      'output_blocks_9_0_in_layers_2',
      'middle_block_3_in_layers_2',
      'input_blocks_4_0_in_layers_1', // not a weight of a ResBlock
      'time_embed_1',
      'text_model_encoder_layers_0_self_attn_q_proj', // a text encoder, not the UNet
      'double_blocks_0_img_attn_qkv', // Flux's own names, not diffusers'
    ]) {
      expect(kohyaToDiffusersModule(kohya), kohya).toBeUndefined();
    }
  });
});

describe('kohya names that already use diffusers names', () => {
  const PASS_THROUGH: [string, string][] = [
    ['down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q', 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'],
    ['down_blocks_1_attentions_1_proj_in', 'down_blocks.1.attentions.1.proj_in'],
    ['down_blocks_0_downsamplers_0_conv', 'down_blocks.0.downsamplers.0.conv'],
    ['mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj', 'mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj'],
    ['mid_block_resnets_1_time_emb_proj', 'mid_block.resnets.1.time_emb_proj'],
    ['up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0', 'up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0'],
    ['up_blocks_1_resnets_0_conv_shortcut', 'up_blocks.1.resnets.0.conv_shortcut'],
    ['up_blocks_0_upsamplers_0_conv', 'up_blocks.0.upsamplers.0.conv'],
    ['conv_in', 'conv_in'],
    ['time_embedding_linear_1', 'time_embedding.linear_1'],
  ];
  for (const [kohya, diffusers] of PASS_THROUGH) {
    it(`SD 1.x ${kohya} keeps its names`, () => {
      expect(kohyaToDiffusersModule(`lora_unet_${kohya}`)).toBe(diffusers);
      expect(moduleMatchKey(diffusers)).toBe(kohya);
      expect(isSgmModuleName(kohya)).toBe(false);
    });
  }

  const DIT: [string, string][] = [
    ['lora_unet_transformer_blocks_0_attn_to_q', 'transformer_blocks.0.attn.to_q'],
    ['lora_transformer_transformer_blocks_3_attn_add_q_proj', 'transformer_blocks.3.attn.add_q_proj'],
    ['lora_transformer_transformer_blocks_3_attn_to_add_out', 'transformer_blocks.3.attn.to_add_out'],
    ['lora_unet_transformer_blocks_0_ff_context_net_0_proj', 'transformer_blocks.0.ff_context.net.0.proj'],
    ['lora_transformer_transformer_blocks_5_norm1_context_linear', 'transformer_blocks.5.norm1_context.linear'],
    ['lora_transformer_single_transformer_blocks_7_proj_mlp', 'single_transformer_blocks.7.proj_mlp'],
    ['lora_transformer_single_transformer_blocks_7_proj_out', 'single_transformer_blocks.7.proj_out'],
    ['lora_transformer_time_text_embed_timestep_embedder_linear_1', 'time_text_embed.timestep_embedder.linear_1'],
    ['lora_transformer_context_embedder', 'context_embedder'],
    ['lora_transformer_norm_out_linear', 'norm_out.linear'],
  ];
  for (const [kohya, diffusers] of DIT) {
    it(`DiT ${kohya} → ${diffusers}`, () => {
      expect(kohyaToDiffusersModule(kohya)).toBe(diffusers);
    });
  }
});
