// A decode step recorded once and replayed (DecodeStep, with the CPU backend's "graph", which runs
// the recorded step again) gives exactly the logits of plain decoding through model.logits, token
// after token, also after the model's RoPE tables were reallocated under it.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { argmax } from '../../src/infer/sampling.js';
import { DecodeStep } from '../../src/infer/decode-step.js';
import { LatentCache } from '../../src/infer/latent-cache.js';
import { parseConfig } from '../../src/model/config.js';
import { DeepseekV3 } from '../../src/model/model.js';
import { ParameterSet } from '../../src/model/parameters.js';
import { RandomParameters } from '../../src/model/random-parameters.js';
import { seededRandom } from '../helpers/random.js';

const config = parseConfig({
  model_type: 'deepseek_v3', vocab_size: 41, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 16,
  num_hidden_layers: 2, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: 16, kv_lora_rank: 16,
  qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8, n_routed_experts: 6, n_shared_experts: 1, num_experts_per_tok: 2,
  n_group: 2, topk_group: 1, max_position_embeddings: 1024,
}, 'decode-step test');

for (const dtype of ['f32', 'f64'] as const) {
  test(`DecodeStep gives the logits of plain decoding token for token (${dtype}, batch 3, RoPE tables regrown midway)`, () => {
    const rng = seededRandom();
    const b = new CpuBackend(dtype);
    const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: rng.seed, std: 0.3, vectors: 'random' })));
    const B = 3, prompt = 4, steps = 7, V = config.vocabSize;
    const plainCache = new LatentCache(b, config, B, prompt + steps), stepCache = new LatentCache(b, config, B, prompt + steps);
    const ids = Int32Array.from({ length: B * prompt }, () => rng.int(0, V - 1));
    const prefill = b.download(model.logits(ids, B, prompt, { cache: plainCache, lastOnly: true }));
    assert.deepEqual(b.download(model.logits(ids, B, prompt, { cache: stepCache, lastOnly: true })), prefill);
    const step = new DecodeStep(model, stepCache);
    assert.ok(step.capturable);
    // greedy continuation of each row, so that the inputs follow the model
    let next = Int32Array.from({ length: B }, (_, r) => argmax(prefill.subarray(r * V, (r + 1) * V)));
    for (let t = 0; t < steps; t++) {
      if (t === 4) model.ropeTablesFor(600); // reallocates the tables the step was recorded with
      const plain = b.download(model.logits(next, B, 1, { cache: plainCache, lastOnly: true }));
      const replayed = b.download(step.run(next, stepCache.length));
      assert.deepEqual(replayed, plain, `step ${t} (seed ${rng.seed})`);
      assert.equal(stepCache.length, plainCache.length);
      next = Int32Array.from({ length: B }, (_, r) => argmax(plain.subarray(r * V, (r + 1) * V)));
    }
    step.free();
  });
}

test('DecodeStep checks its inputs, and runs eagerly when a MoE layer would permute (more than 256 slots)', () => {
  const b = new CpuBackend('f32');
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: 3 })));
  const step = new DecodeStep(model, new LatentCache(b, config, 2, 5));
  assert.throws(() => step.run(Int32Array.of(1), 0), /1 token ids for a batch of 2/);
  assert.throws(() => step.run(Int32Array.of(1, 2), 1), /position 1 for a cache holding 0 of 5/);
  step.run(Int32Array.of(1, 2), 0);
  assert.throws(() => step.run(Int32Array.of(1, 2), 5), /position 5/);
  step.free();
  // 129 sequences × 2 experts each: 258 slots
  assert.equal(new DecodeStep(model, new LatentCache(b, config, 129, 2)).capturable, false);
});
