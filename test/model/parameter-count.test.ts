// Parameter counts from the configuration, checked against DeepSeek's published figures for
// V3 (671 B total, 37 B activated per token) and against the fixture checkpoint's tensors.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { parseConfig } from '../../src/model/config.js';
import { readConfig } from '../../src/model/load.js';
import { cacheValuesPerToken, countParameters } from '../../src/model/parameter-count.js';
import { tinyModelDir } from '../shared-paths.js';

const v3 = parseConfig({
  model_type: 'deepseek_v3', vocab_size: 129280, hidden_size: 7168, intermediate_size: 18432, moe_intermediate_size: 2048,
  num_hidden_layers: 61, first_k_dense_replace: 3, num_attention_heads: 128, qk_nope_head_dim: 128, qk_rope_head_dim: 64,
  v_head_dim: 128, q_lora_rank: 1536, kv_lora_rank: 512, n_routed_experts: 256, n_shared_experts: 1, num_experts_per_tok: 8,
  n_group: 8, topk_group: 4, routed_scaling_factor: 2.5, num_nextn_predict_layers: 1, max_position_embeddings: 163840,
  rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
});

test('DeepSeek-V3: 671 B parameters, 37 B activated, 14 B of MTP, 576 cached values per token per layer', () => {
  const p = countParameters(v3);
  assert.ok(Math.abs(p.total / 671e9 - 1) < 0.005, `total ${p.total}`);
  assert.ok(Math.abs(p.activatedPerToken / 37e9 - 1) < 0.03, `activated ${p.activatedPerToken}`);
  assert.ok(Math.abs((p.mtp + 2 * v3.vocabSize * v3.hiddenSize) / 14e9 - 1) < 0.05, `mtp ${p.mtp}`);
  assert.equal(cacheValuesPerToken(v3).mla, 61 * 576);
});

test('the count from the config equals the fixture checkpoint’s tensor sizes', () => {
  const file = SafetensorsFile.open(path.join(tinyModelDir, 'model.safetensors'));
  const stored = file.names().reduce((sum, n) => sum + file.info(n).shape.reduce((a, b) => a * b, 1), 0);
  file.close();
  assert.equal(countParameters(readConfig(tinyModelDir)).total, stored);
});
