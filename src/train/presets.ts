// Model presets for training from scratch. `tiny` is the main job's: it trains on two CPU cores
// in minutes and still has every part of the architecture (q compression, MoE with groups,
// a shared expert, MTP). `small` is the GPU benchmark model (about 681 M parameters).

import { parseConfig, type ModelConfig } from '../model/config.js';

type PresetJson = Record<string, unknown>;

const PRESETS: Record<string, PresetJson> = {
  tiny: {
    hidden_size: 128, intermediate_size: 384, moe_intermediate_size: 96, num_hidden_layers: 4, first_k_dense_replace: 1,
    num_attention_heads: 4, q_lora_rank: 96, kv_lora_rank: 64, qk_nope_head_dim: 32, qk_rope_head_dim: 16, v_head_dim: 32,
    n_routed_experts: 8, n_shared_experts: 1, num_experts_per_tok: 2, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5,
    num_nextn_predict_layers: 1, max_position_embeddings: 1024,
  },
  small: {
    hidden_size: 1024, intermediate_size: 2816, moe_intermediate_size: 512, num_hidden_layers: 12, first_k_dense_replace: 1,
    num_attention_heads: 16, q_lora_rank: 384, kv_lora_rank: 256, qk_nope_head_dim: 64, qk_rope_head_dim: 32, v_head_dim: 64,
    n_routed_experts: 32, n_shared_experts: 1, num_experts_per_tok: 4, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5,
    num_nextn_predict_layers: 1, max_position_embeddings: 4096,
  },
};

export const PRESET_NAMES = Object.keys(PRESETS);

/** The preset's config for a tokenizer of `vocabSize` tokens. */
export function presetConfig(name: string, vocabSize: number, special: { bos: number | null; eos: number | null }): ModelConfig {
  const preset = PRESETS[name];
  if (!preset) throw new Error(`unknown preset "${name}" (presets: ${PRESET_NAMES.join(', ')})`);
  return parseConfig({
    model_type: 'deepseek_v3', vocab_size: vocabSize, topk_method: 'noaux_tc', scoring_func: 'sigmoid', norm_topk_prob: true,
    rms_norm_eps: 1e-6, rope_theta: 10000, bos_token_id: special.bos, eos_token_id: special.eos, ...preset,
  }, `preset ${name}`);
}
