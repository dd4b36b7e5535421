// DeepSeekMoE routing against a brute-force reference (every allowed expert subset scored), for
// V3's sigmoid + noaux_tc and V2's softmax with greedy and group-limited selection, and the
// router's backward against finite differences for both scorings.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RouterConfig } from '../../../src/backend/backend.js';
import { routeTokens } from '../../../src/backend/cpu/router.js';
import { routerBackward } from '../../../src/backend/cpu/training-ops.js';
import { Random } from '../../../src/util/random.js';

function reference(logits: Float64Array, bias: Float64Array | null, E: number, cfg: RouterConfig) {
  const s = cfg.scoring === 'sigmoid'
    ? Array.from(logits, (x) => 1 / (1 + Math.exp(-x)))
    : (() => { const m = Math.max(...logits); const e = Array.from(logits, (x) => Math.exp(x - m)); const z = e.reduce((a, b) => a + b, 0); return e.map((x) => x / z); })();
  const choice = s.map((x, i) => x + (bias ? bias[i] : 0));
  const per = E / cfg.nGroup;
  let allowed = Array.from({ length: E }, () => true);
  if (cfg.groupLimited && cfg.nGroup > 1) {
    const groupScore = Array.from({ length: cfg.nGroup }, (_, g) => {
      const sorted = choice.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
      return cfg.groupScoreTop2 ? sorted[0] + sorted[1] : sorted[0];
    });
    const keep = groupScore.map((v, g) => [v, g]).sort((a, b) => b[0] - a[0]).slice(0, cfg.topkGroup).map(([, g]) => g);
    allowed = allowed.map((_, e) => keep.includes(Math.floor(e / per)));
  }
  const picked = choice.map((v, e) => [v, e]).filter(([, e]) => allowed[e]).sort((a, b) => b[0] - a[0]).slice(0, cfg.topK).map(([, e]) => e);
  const sum = picked.reduce((a, e) => a + s[e], 0);
  const weights = picked.map((e) => (s[e] * cfg.routedScalingFactor) / (cfg.normTopkProb ? sum + 1e-20 : 1));
  return { picked, weights };
}

const configs: [string, RouterConfig, boolean][] = [
  ['V3 sigmoid, noaux_tc', { topK: 4, nGroup: 4, topkGroup: 2, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 2.5 }, true],
  ['V2 softmax, greedy', { topK: 3, nGroup: 1, topkGroup: 1, scoring: 'softmax', groupLimited: false, groupScoreTop2: false, normTopkProb: false, routedScalingFactor: 16 }, false],
  ['V2 softmax, group_limited_greedy', { topK: 3, nGroup: 4, topkGroup: 2, scoring: 'softmax', groupLimited: true, groupScoreTop2: false, normTopkProb: false, routedScalingFactor: 1 }, false],
];

for (const [name, cfg, withBias] of configs) {
  test(`routing: ${name}`, () => {
    const rng = new Random(Math.floor(Math.random() * 2 ** 31));
    const N = 50, E = 16, K = cfg.topK;
    const logits = Float64Array.from({ length: N * E }, () => 2 * rng.normal());
    const bias = withBias ? Float64Array.from({ length: E }, () => 0.3 * rng.normal()) : null;
    const scores = new Float64Array(N * E), indices = new Int32Array(N * K), weights = new Float64Array(N * K);
    routeTokens(logits, bias, N, E, cfg, scores, indices, weights);
    for (let n = 0; n < N; n++) {
      const ref = reference(logits.subarray(n * E, (n + 1) * E), bias, E, cfg);
      const got = Array.from(indices.subarray(n * K, (n + 1) * K));
      assert.deepEqual([...got].sort((a, b) => a - b), [...ref.picked].sort((a, b) => a - b), `token ${n}`);
      for (let k = 0; k < K; k++) {
        const w = weights[n * K + k];
        const expected = ref.weights[ref.picked.indexOf(got[k])];
        assert.ok(Math.abs(w - expected) < 1e-12, `token ${n} weight ${w} vs ${expected}`);
      }
    }
  });

  test(`router backward against finite differences: ${name}`, () => {
    const rng = new Random(Math.floor(Math.random() * 2 ** 31));
    const N = 6, E = 16, K = cfg.topK;
    const logits = Float64Array.from({ length: N * E }, () => rng.normal());
    const g = Float64Array.from({ length: N * K }, () => rng.normal());
    const extra = Float64Array.from({ length: N * E }, () => rng.normal());
    const route = (l: Float64Array) => {
      const scores = new Float64Array(N * E), indices = new Int32Array(N * K), weights = new Float64Array(N * K);
      routeTokens(l, null, N, E, cfg, scores, indices, weights);
      return { scores, indices, weights };
    };
    const base = route(logits);
    // the loss Σ g·w + Σ extra·s at fixed expert choice (the choice is piecewise constant)
    const loss = (l: Float64Array) => {
      const r = route(l);
      assert.deepEqual(r.indices, base.indices);
      let v = 0;
      for (let i = 0; i < N * K; i++) v += g[i] * r.weights[i];
      for (let i = 0; i < N * E; i++) v += extra[i] * r.scores[i];
      return v;
    };
    const dLogits = new Float64Array(N * E);
    routerBackward(base.scores, base.indices, g, extra, N, E, cfg, dLogits);
    for (let i = 0; i < N * E; i++) {
      const old = logits[i];
      logits[i] = old + 1e-6;
      const plus = loss(logits);
      logits[i] = old - 1e-6;
      const minus = loss(logits);
      logits[i] = old;
      const fd = (plus - minus) / 2e-6;
      assert.ok(Math.abs(fd - dLogits[i]) <= 1e-6 * Math.max(1, Math.abs(fd)), `logit ${i}: ${dLogits[i]} vs ${fd}`);
    }
  });
}
