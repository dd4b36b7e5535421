// The routed experts straight from the routing (Backend.moeExpertsDirect, which a MoE layer runs
// for a few tokens at inference) equal the permuted path (moePermute, a GEMM per expert,
// moeUnpermute) on random tokens and weights, in FP32 and FP64; and MoE.forward picks the direct
// path only where it may: inference on at most MOE_DIRECT_MAX_SLOTS slots, without expert counts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../../src/backend/cpu/cpu-backend.js';
import { parseConfig } from '../../../src/model/config.js';
import { MoE, MOE_DIRECT_MAX_SLOTS } from '../../../src/model/moe.js';
import { ParameterSet } from '../../../src/model/parameters.js';
import { RandomParameters } from '../../../src/model/random-parameters.js';
import { seededRandom } from '../../helpers/random.js';

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return m / scale;
}

const config = parseConfig({
  model_type: 'deepseek_v3', vocab_size: 10, hidden_size: 24, intermediate_size: 40, moe_intermediate_size: 12,
  num_hidden_layers: 2, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: null, kv_lora_rank: 8,
  qk_nope_head_dim: 4, qk_rope_head_dim: 4, v_head_dim: 4, n_routed_experts: 8, n_shared_experts: 1, num_experts_per_tok: 3,
  n_group: 4, topk_group: 2, routed_scaling_factor: 2.5,
}, 'moe-direct test');

for (const dtype of ['f32', 'f64'] as const) {
  test(`moeExpertsDirect = the permuted path, through MoE.forward (${dtype})`, () => {
    const rng = seededRandom();
    const b = new CpuBackend(dtype);
    const moe = new MoE(new ParameterSet(new RandomParameters(b, { seed: rng.seed, std: 0.3, vectors: 'random' })), 'mlp', config);
    const tol = dtype === 'f64' ? 1e-12 : 1e-5;
    const K = config.numExpertsPerTok, E = config.nRoutedExperts;
    for (const N of [1, 5, Math.floor(MOE_DIRECT_MAX_SLOTS / K)]) {
      const x = b.upload(Float64Array.from({ length: N * config.hiddenSize }, () => rng.normal()), [N, config.hiddenSize]);
      const direct = b.download(moe.forward(b, x));
      // asking for the experts' load takes the permuted path, whose counts it needs
      const load = b.zeros([E]);
      const permuted = b.download(moe.forward(b, x, load));
      assert.equal(Array.from(b.download(load)).reduce((a, c) => a + c, 0), N * K);
      const err = maxRelDiff(direct, permuted);
      assert.ok(err <= tol, `N = ${N}: relative error ${err} (seed ${rng.seed})`);
    }
  });
}

test('moeExpertsDirect: each token through its experts, weighted (against a loop over the slots)', () => {
  const rng = seededRandom();
  const b = new CpuBackend('f64');
  const N = 4, K = 2, E = 3, d = 5, I = 6;
  const rand = (shape: number[]) => b.upload(Float64Array.from({ length: shape.reduce((p, s) => p * s, 1) }, () => rng.normal()), shape);
  const gate = [0, 1, 2].map(() => rand([I, d])), up = [0, 1, 2].map(() => rand([I, d])), down = [0, 1, 2].map(() => rand([d, I]));
  const x = rand([N, d]), w = rand([N, K]);
  const idx = Int32Array.from({ length: N * K }, () => rng.int(0, E - 1));
  const got = b.download(b.moeExpertsDirect(x, b.uploadInt(idx, [N, K]), w, gate, up, down));
  const want = new Float64Array(N * d);
  const xs = b.download(x), ws = b.download(w);
  for (let s = 0; s < N * K; s++) {
    const n = Math.floor(s / K), e = idx[s];
    const [g, u, dn] = [gate[e], up[e], down[e]].map((t) => b.download(t));
    const h = Array.from({ length: I }, (_, i) => {
      let gi = 0, ui = 0;
      for (let c = 0; c < d; c++) {
        gi += g[i * d + c] * xs[n * d + c];
        ui += u[i * d + c] * xs[n * d + c];
      }
      return (gi / (1 + Math.exp(-gi))) * ui;
    });
    for (let c = 0; c < d; c++) {
      let y = 0;
      for (let i = 0; i < I; i++) y += dn[c * I + i] * h[i];
      want[n * d + c] += ws[s] * y;
    }
  }
  const err = maxRelDiff(got, want);
  assert.ok(err <= 1e-12, `relative error ${err} (seed ${rng.seed})`);
  assert.throws(() => b.moeExpertsDirect(x, b.uploadInt(Int32Array.from(idx, () => E), [N, K]), w, gate, up, down), /expert index 3 outside \[0, 3\)/);
  assert.throws(() => b.moeExpertsDirect(x, b.uploadInt(idx, [N, K]), w, gate, up, gate), /moeExpertsDirect: x \[4, 5\]/);
});
