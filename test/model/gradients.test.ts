// Every backward pass against central finite differences in FP64 (relative error ≤ 1e-6), the
// input gradient (backwardInput) and the parameter gradients (backwardWeight) checked
// separately, with and without recomputation, up to the whole model with MoE, MTP and the
// balance loss.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { CpuTensor } from '../../src/backend/cpu/cpu-tensor.js';
import { parseConfig, type ModelConfig } from '../../src/model/config.js';
import { DecoderLayer } from '../../src/model/decoder-layer.js';
import { runWeightGradJobs, type WeightGradJob } from '../../src/model/grad-jobs.js';
import { Linear } from '../../src/model/linear.js';
import { MultiHeadLatentAttention, type MlaSaved } from '../../src/model/mla.js';
import { MLP, type MlpSaved } from '../../src/model/mlp.js';
import { DeepseekV3 } from '../../src/model/model.js';
import { MoE, type MoeSaved } from '../../src/model/moe.js';
import { ParameterSet, type Parameter } from '../../src/model/parameters.js';
import { RandomParameters } from '../../src/model/random-parameters.js';
import { RMSNorm } from '../../src/model/rms-norm.js';
import { softmaxScale } from '../../src/model/rope.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { forwardBackward } from '../../src/train/forward-backward.js';
import { Random } from '../../src/util/random.js';

const b = new CpuBackend('f64');
const data = (t: Tensor) => (t as CpuTensor).data as Float64Array;

function tinyConfig(qLora: boolean): ModelConfig {
  return parseConfig({
    model_type: 'deepseek_v3', vocab_size: 37, hidden_size: 16, intermediate_size: 10, moe_intermediate_size: 6,
    num_hidden_layers: 2, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: qLora ? 12 : null, kv_lora_rank: 8,
    qk_nope_head_dim: 6, qk_rope_head_dim: 4, v_head_dim: 5, n_routed_experts: 4, n_shared_experts: 1, num_experts_per_tok: 2,
    n_group: 2, topk_group: 1, routed_scaling_factor: 2.5, num_nextn_predict_layers: 1, max_position_embeddings: 64,
  }, 'tiny');
}

function randomTensor(rng: Random, shape: number[], scale = 1): Tensor {
  const n = shape.reduce((a, s) => a * s, 1);
  return b.upload(Float64Array.from({ length: n }, () => scale * rng.normal()), shape);
}

/** Central difference of f with respect to arr[i]. */
function finiteDifference(f: () => number, arr: Float64Array, i: number, eps = 1e-5): number {
  const old = arr[i];
  arr[i] = old + eps;
  const plus = f();
  arr[i] = old - eps;
  const minus = f();
  arr[i] = old;
  return (plus - minus) / (2 * eps);
}

/** ‖analytic − numeric‖ / ‖numeric‖ over up to `samples` entries of arr. */
function relativeError(f: () => number, arr: Float64Array, analytic: Float64Array, rng: Random, samples = 12): number {
  let num = 0, den = 0;
  const picks = arr.length <= samples ? [...arr.keys()] : Array.from({ length: samples }, () => rng.int(arr.length));
  for (const i of picks) {
    const fd = finiteDifference(f, arr, i);
    num += (analytic[i] - fd) ** 2;
    den += fd * fd;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/**
 * Checks a module given as forward(x) → y (recording `saved`) and backwardInput(saved, dy) → dx that
 * queues jobs: the loss is Σ y ∘ r for a fixed random r.
 */
function checkModule(
  name: string, rng: Random, x: Tensor, params: Parameter[],
  forward: (x: Tensor) => { y: Tensor; saved: unknown; extraLoss?: number },
  backwardInput: (saved: unknown, dy: Tensor, jobs: WeightGradJob[]) => Tensor,
): void {
  const first = forward(x);
  const r = randomTensor(rng, [...first.y.shape]);
  const loss = () => {
    const { y, extraLoss } = forward(x);
    const ys = data(y), rs = data(r);
    let s = extraLoss ?? 0;
    for (let i = 0; i < ys.length; i++) s += ys[i] * rs[i];
    return s;
  };
  for (const p of params) p.grad = b.zeros(p.value.shape);
  const jobs: WeightGradJob[] = [];
  const dx = backwardInput(first.saved, r, jobs);
  const errX = relativeError(loss, data(x), data(dx), rng);
  assert.ok(errX <= 1e-6, `${name}: backwardInput relative error ${errX}`);
  // backwardWeight: the queued jobs fill the gradients only now
  for (const p of params) assert.ok(data(p.grad!).every((g) => g === 0), `${name}: ${p.name} gradient written before backwardWeight`);
  runWeightGradJobs(b, jobs);
  for (const p of params) {
    const err = relativeError(loss, data(p.value), data(p.grad!), rng);
    assert.ok(err <= 1e-6, `${name}: backwardWeight of ${p.name}, relative error ${err}`);
  }
}

function setup(qLora = true) {
  const seed = Math.floor(Math.random() * 2 ** 31);
  const rng = new Random(seed);
  const config = tinyConfig(qLora);
  const params = new ParameterSet(new RandomParameters(b, { seed, std: 0.4, vectors: 'random' }));
  return { rng, config, params, seed };
}

test('Linear and RMSNorm', () => {
  const { rng, params } = setup();
  const lin = new Linear(params.param('lin.weight', [7, 5]));
  checkModule('Linear', rng, randomTensor(rng, [4, 5]), [lin.weight], (x) => ({ y: lin.forward(b, x), saved: x }), (x, dy, jobs) => lin.backwardInput(b, x as Tensor, dy, jobs));
  const norm = new RMSNorm(params.param('n.layernorm.weight', [6]), 1e-6);
  checkModule('RMSNorm', rng, randomTensor(rng, [3, 6]), [norm.weight], (x) => ({ y: norm.forward(b, x), saved: x }), (x, dy, jobs) => norm.backwardInput(b, x as Tensor, dy, jobs));
});

test('SwiGLU MLP', () => {
  const { rng, params } = setup();
  const mlp = new MLP(params, 'mlp', 8, 6);
  checkModule('MLP', rng, randomTensor(rng, [5, 8]), [mlp.gate.weight, mlp.up.weight, mlp.down.weight],
    (x) => { let saved: MlpSaved | null = null; const y = mlp.forward(b, x, (s) => (saved = s)); return { y, saved }; },
    (s, dy, jobs) => mlp.backwardInput(b, s as MlpSaved, dy, jobs));
});

for (const qLora of [true, false]) {
  for (const recompute of [false, true]) {
    test(`MLA (q_lora ${qLora ? 'on' : 'off'}, recomputation ${recompute ? 'on' : 'off'})`, () => {
      const { rng, config, params } = setup(qLora);
      const mla = new MultiHeadLatentAttention(params, 'attn', config, softmaxScale(config));
      const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: 1 })));
      const ctx = model.context(2, 5, 0);
      const flags = { norms: recompute, upProjections: recompute };
      checkModule(`MLA`, rng, randomTensor(rng, [10, config.hiddenSize]), [...params.all()],
        (x) => { let saved: MlaSaved | null = null; const y = mla.forwardNaive(b, x, ctx, (s) => (saved = s), flags); return { y, saved }; },
        (s, dy, jobs) => mla.backwardInput(b, s as MlaSaved, dy, jobs));
    });
  }
}

for (const padded of [false, true]) {
  test(`DeepSeekMoE with the balance loss (router, routed and shared experts${padded ? ', padded expert blocks' : ''})`, () => {
    const { rng, config, params } = setup();
    const moe = new MoE(params, 'mlp', config);
    // padded: every expert's rows in a block of the largest count rounded up to 4 (grouped Linear layers)
    moe.padding = padded ? { blockRows: 4, maxRatio: Infinity } : null;
    const balanceSum = b.zeros([1]);
    const trainOpts = { batch: 2, seq: 4, balanceAlpha: 0.3, balanceSum };
    let capacity: number | null | undefined;
    checkModule('MoE', rng, randomTensor(rng, [8, config.hiddenSize]), params.all().filter((p) => !p.name.endsWith('bias')),
      (x) => {
        let saved: MoeSaved | null = null;
        b.scaleInPlace(balanceSum, 0);
        const y = moe.forward(b, x, undefined, (s) => (saved = s), trainOpts);
        capacity = (saved as MoeSaved | null)?.perm.capacity;
        return { y, saved, extraLoss: data(balanceSum)[0] };
      },
      (s, dy, jobs) => moe.backwardInput(b, s as MoeSaved, dy, jobs));
    assert.equal(capacity !== null, padded);
  });
}

for (const dense of [true, false]) {
  for (const recompute of [false, true]) {
    test(`decoder layer (${dense ? 'dense' : 'MoE'}, recomputation ${recompute ? 'on' : 'off'})`, () => {
      const { rng, config, params } = setup();
      const layer = new DecoderLayer(params, 'layer', config, dense, softmaxScale(config));
      const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: 1 })));
      const ctx = model.context(2, 4, 0);
      const balanceSum = b.zeros([1]);
      const train = { recompute: { norms: recompute, upProjections: recompute }, balanceAlpha: 0.2, balanceSum };
      checkModule('layer', rng, randomTensor(rng, [8, config.hiddenSize]), params.all().filter((p) => !p.name.endsWith('bias')),
        (x) => {
          const saved: import('../../src/model/decoder-layer.js').LayerSaved[] = [];
          b.scaleInPlace(balanceSum, 0);
          const y = layer.forward(b, x, ctx, { train, saved });
          return { y, saved: saved[0], extraLoss: data(balanceSum)[0] };
        },
        (s, dy, jobs) => layer.backwardInput(b, s as import('../../src/model/decoder-layer.js').LayerSaved, dy, jobs));
    });
  }
}

for (const [recompute, padded] of [[false, false], [true, false], [false, true]]) {
  test(`whole model with MoE, MTP and the balance loss (recomputation ${recompute ? 'on' : 'off'}${padded ? ', padded expert blocks' : ''})`, () => {
    const { rng, config, params } = setup();
    const model = new DeepseekV3(b, config, params, true);
    assert.equal(model.mtp.length, 1);
    for (const layer of [...model.layers, ...model.mtp.map((m) => m.block)]) {
      if (layer.ffn instanceof MoE) layer.ffn.padding = padded ? { blockRows: 2, maxRatio: Infinity } : null;
    }
    const batch = 2, seq = 5, window = seq + 2;
    const tokens = Int32Array.from({ length: batch * window }, () => rng.int(config.vocabSize));
    const opts = { mtpWeight: 0.3, balanceAlpha: 0.1, recompute: { norms: recompute, upProjections: recompute }, lossChunkRows: 3 };
    const loss = () => forwardBackward(model, tokens, batch, seq, opts).loss;
    params.allocateGradients(b);
    const result = forwardBackward(model, tokens, batch, seq, opts);
    assert.ok(result.mtpLosses.length === 1 && result.balanceLoss > 0);
    const grads = new Map(params.all().map((p) => [p.name, Float64Array.from(data(p.grad!))]));
    for (const p of params.all()) {
      if (p.name.endsWith('e_score_correction_bias')) continue;
      const err = relativeError(loss, data(p.value), grads.get(p.name)!, rng, 4);
      assert.ok(err <= 1e-6, `${p.name}: relative error ${err}`);
    }
  });
}
