// Greedy speculative decoding with the MTP drafter returns exactly the tokens of plain greedy
// decoding, whether drafts are kept or rejected.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { generate } from '../../src/infer/generate.js';
import { generateSpeculative } from '../../src/infer/speculative.js';
import { parseConfig } from '../../src/model/config.js';
import { DeepseekV3 } from '../../src/model/model.js';
import { ParameterSet } from '../../src/model/parameters.js';
import { RandomParameters } from '../../src/model/random-parameters.js';
import { Random } from '../../src/util/random.js';

test('greedy speculative decoding = plain greedy decoding', () => {
  const seed = Math.floor(Math.random() * 2 ** 31);
  const rng = new Random(seed);
  const b = new CpuBackend('f32');
  const config = parseConfig({
    model_type: 'deepseek_v3', vocab_size: 23, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 16,
    num_hidden_layers: 2, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: 16, kv_lora_rank: 16,
    qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8, n_routed_experts: 4, n_shared_experts: 1, num_experts_per_tok: 2,
    n_group: 2, topk_group: 1, num_nextn_predict_layers: 1, max_position_embeddings: 128, eos_token_id: 1,
  });
  // a large init makes the random model decisive, so that greedy continuations repeat and drafts are often right
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed, std: 0.5, vectors: 'random' })), true);
  let drafted = 0, accepted = 0;
  for (let trial = 0; trial < 8; trial++) {
    const prompt = Array.from({ length: 1 + rng.int(6) }, () => rng.int(config.vocabSize));
    const maxNewTokens = 5 + rng.int(20);
    const plain = generate(model, prompt, { maxNewTokens, stopTokens: [] });
    const spec = generateSpeculative(model, prompt, { maxNewTokens, stopTokens: [] });
    assert.deepEqual(spec.tokens, plain.tokens, `seed ${seed}, prompt ${prompt}`);
    drafted += spec.drafted;
    accepted += spec.accepted;
  }
  console.log(`drafted ${drafted}, accepted ${accepted}`);
  assert.ok(drafted > 0);
});

test('speculative decoding stops at a stop token and at max-new-tokens', () => {
  const b = new CpuBackend('f32');
  const config = parseConfig({
    model_type: 'deepseek_v3', vocab_size: 11, hidden_size: 16, intermediate_size: 24, moe_intermediate_size: 8,
    num_hidden_layers: 1, first_k_dense_replace: 0, num_attention_heads: 2, q_lora_rank: null, kv_lora_rank: 8,
    qk_nope_head_dim: 4, qk_rope_head_dim: 4, v_head_dim: 4, n_routed_experts: 4, n_shared_experts: 0, num_experts_per_tok: 1,
    n_group: 2, topk_group: 1, num_nextn_predict_layers: 1, max_position_embeddings: 64,
  });
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: 5, std: 0.5, vectors: 'random' })), true);
  const plain = generate(model, [3, 4], { maxNewTokens: 12, stopTokens: [] });
  const stopAt = plain.tokens[4];
  const expected = plain.tokens.slice(0, plain.tokens.indexOf(stopAt) + 1);
  const spec = generateSpeculative(model, [3, 4], { maxNewTokens: 12, stopTokens: [stopAt] });
  assert.deepEqual(spec.tokens, expected);
  assert.equal(generateSpeculative(model, [3, 4], { maxNewTokens: 7, stopTokens: [] }).tokens.length, 7);
});
