// Naive and absorbed MLA (SPEC §2) agree on random configurations: with and without query
// compression, with YaRN, in FP32 and FP64, over a cache filled in several blocks.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { LatentCache } from '../../src/infer/latent-cache.js';
import { parseConfig } from '../../src/model/config.js';
import { MultiHeadLatentAttention } from '../../src/model/mla.js';
import { DeepseekV3 } from '../../src/model/model.js';
import { ParameterSet } from '../../src/model/parameters.js';
import { RandomParameters } from '../../src/model/random-parameters.js';
import { softmaxScale } from '../../src/model/rope.js';
import { Random } from '../../src/util/random.js';

function randomConfig(rng: Random, qLora: boolean, yarn: boolean) {
  const json: Record<string, unknown> = {
    model_type: 'deepseek_v3', vocab_size: 50 + rng.int(50), hidden_size: 32 + 8 * rng.int(4), intermediate_size: 48,
    moe_intermediate_size: 16, num_hidden_layers: 2, num_attention_heads: 1 + rng.int(4), q_lora_rank: qLora ? 24 : null,
    kv_lora_rank: 8 + 4 * rng.int(4), qk_nope_head_dim: 8 + 4 * rng.int(3), qk_rope_head_dim: 4 + 2 * rng.int(3), v_head_dim: 4 + 4 * rng.int(3),
    n_routed_experts: 8, n_shared_experts: 1, num_experts_per_tok: 2, n_group: 2, topk_group: 1, first_k_dense_replace: 1,
    max_position_embeddings: 256, routed_scaling_factor: 2.5,
  };
  if (yarn) {
    json.max_position_embeddings = 4096;
    json.rope_scaling = { type: 'yarn', factor: 40, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 };
  }
  return parseConfig(json, 'random config');
}

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return m / scale;
}

for (const dtype of ['f32', 'f64'] as const) {
  for (const qLora of [true, false]) {
    for (const yarn of [false, true]) {
      test(`absorbed = naive MLA, ${dtype}, q_lora ${qLora ? 'on' : 'off'}, ${yarn ? 'YaRN' : 'plain RoPE'}`, () => {
        const seed = Math.floor(Math.random() * 2 ** 31);
        const rng = new Random(seed);
        const config = randomConfig(rng, qLora, yarn);
        const b = new CpuBackend(dtype);
        const mla = new MultiHeadLatentAttention(new ParameterSet(new RandomParameters(b, { seed, std: 0.3, vectors: 'random' })), 'attn', config, softmaxScale(config));
        const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: seed + 1, vectors: 'random' })));
        const B = 2, T = 5 + rng.int(6);
        const x = b.upload(Float64Array.from({ length: B * T * config.hiddenSize }, () => rng.normal()), [B * T, config.hiddenSize]);
        const naive = b.download(mla.forwardNaive(b, x, model.context(B, T, 0)));
        // the absorbed path over a cache: the first 3 tokens as a block, then one at a time
        const cache = new LatentCache(b, config, B, T + 4).layers[0];
        const d = config.hiddenSize;
        const xs = b.download(x);
        const absorbed = new Float64Array(naive.length);
        for (let start = 0; start < T; ) {
          const len = start === 0 ? 3 : 1;
          const block = new Float64Array(B * len * d);
          for (let i = 0; i < B; i++) block.set(xs.subarray((i * T + start) * d, (i * T + start + len) * d), i * len * d);
          const out = b.download(mla.forwardAbsorbed(b, b.upload(block, [B * len, d]), model.context(B, len, start), cache));
          for (let i = 0; i < B; i++) absorbed.set(out.subarray(i * len * d, (i + 1) * len * d), (i * T + start) * d);
          start += len;
        }
        const err = maxRelDiff(absorbed, naive);
        assert.ok(err <= (dtype === 'f64' ? 1e-12 : 1e-5), `seed ${seed}: relative error ${err}`);
      });
    }
  }
}

test('absorbed = naive MLA with the sequences of a batch at different positions (one restarts over its stale cache)', () => {
  const seed = Math.floor(Math.random() * 2 ** 31);
  const rng = new Random(seed);
  const config = randomConfig(rng, rng.int(2) === 1, false);
  const b = new CpuBackend('f64');
  const mla = new MultiHeadLatentAttention(new ParameterSet(new RandomParameters(b, { seed, std: 0.3, vectors: 'random' })), 'attn', config, softmaxScale(config));
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: seed + 1, vectors: 'random' })));
  const d = config.hiddenSize, ahead = 3, T1 = 5, T0 = ahead + T1;
  const tokens = (n: number) => Float64Array.from({ length: n * d }, () => rng.normal());
  const x0 = tokens(T0), x1 = tokens(T1);
  const naive = (x: Float64Array, T: number) => b.download(mla.forwardNaive(b, b.upload(x, [T, d]), model.context(1, T, 0)));
  const want = [naive(x0, T0), naive(x1, T1)];
  const cache = new LatentCache(b, config, 2, T0 + 2).layers[0];
  const { cos, sin } = model.ropeTablesFor(T0);
  /** One block: rows of sequence 0 then of sequence 1 [2·len, d], at the given positions [2·len]. */
  const block = (rows: Float64Array, positions: number[]) => {
    const len = positions.length / 2;
    const ctx = { batch: 2, seq: len, positions: b.uploadInt(Int32Array.from(positions), [2 * len]), cos, sin };
    return b.download(mla.forwardAbsorbed(b, b.upload(rows, [2 * len, d]), ctx, cache));
  };
  // both sequences in step for `ahead` tokens; then sequence 1 starts over at position 0, in a block
  // of two and then token by token, while sequence 0 goes on: its stale latent lies ahead of it
  const got = [new Float64Array(T0 * d), new Float64Array(T1 * d)];
  const first = block(new Float64Array([...x0.subarray(0, ahead * d), ...tokens(ahead)]), [0, 1, 2, 0, 1, 2]);
  got[0].set(first.subarray(0, ahead * d));
  for (let t = 0; t < T1; ) {
    const len = t === 0 ? 2 : 1;
    const p0 = Array.from({ length: len }, (_, i) => ahead + t + i), p1 = Array.from({ length: len }, (_, i) => t + i);
    const out = block(new Float64Array([...x0.subarray((ahead + t) * d, (ahead + t + len) * d), ...x1.subarray(t * d, (t + len) * d)]), [...p0, ...p1]);
    got[0].set(out.subarray(0, len * d), (ahead + t) * d);
    got[1].set(out.subarray(len * d), t * d);
    t += len;
  }
  for (const s of [0, 1]) {
    const err = maxRelDiff(got[s], want[s]);
    assert.ok(err <= 1e-12, `seed ${seed}: sequence ${s}: relative error ${err}`);
  }
});
