// AdamW against a scalar reference written from the formulas, BF16 moments, weight decay on
// matrices only, clipping, and the learning-rate schedules.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { Parameter } from '../../src/model/parameters.js';
import { bf16BitsToFloat32, float32ToBf16Bits } from '../../src/tensor/bf16.js';
import { AdamW } from '../../src/train/optimizer.js';
import { learningRate } from '../../src/train/schedule.js';
import { Random } from '../../src/util/random.js';

const b = new CpuBackend('f64');

test('AdamW matches the reference update; decay only on matrices; BF16 moments are BF16 values', () => {
  const rng = new Random(Math.floor(Math.random() * 2 ** 31));
  for (const momentsDtype of ['f32', 'bf16'] as const) {
    const matrix = new Parameter('w', b.upload(Float64Array.from({ length: 6 }, () => rng.normal()), [2, 3]));
    const vector = new Parameter('n.weight', b.upload(Float64Array.from({ length: 3 }, () => rng.normal()), [3]));
    const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 0, momentsDtype };
    const opt = new AdamW(b, [matrix, vector], cfg);
    const ref = [matrix, vector].map((p) => ({ p: Array.from(b.download(p.value)), m: [0, 0, 0, 0, 0, 0], v: [0, 0, 0, 0, 0, 0], decay: p === matrix }));
    const round = (x: number) => (momentsDtype === 'bf16' ? bf16BitsToFloat32(float32ToBf16Bits(x)) : x);
    for (let step = 1; step <= 4; step++) {
      const lr = 0.01 * step;
      [matrix, vector].forEach((p, i) => {
        const g = Float64Array.from({ length: ref[i].p.length }, () => rng.normal());
        p.grad = b.upload(g, p.value.shape);
        const r = ref[i];
        for (let j = 0; j < g.length; j++) {
          r.m[j] = round(0.9 * r.m[j] + 0.1 * g[j]);
          r.v[j] = round(0.95 * r.v[j] + 0.05 * g[j] * g[j]);
          const mh = r.m[j] / (1 - 0.9 ** step), vh = r.v[j] / (1 - 0.95 ** step);
          r.p[j] = r.p[j] * (1 - lr * (r.decay ? 0.1 : 0)) - (lr * mh) / (Math.sqrt(vh) + 1e-8);
        }
      });
      opt.step(lr);
      [matrix, vector].forEach((p, i) => {
        const got = b.download(p.value);
        ref[i].p.forEach((x, j) => assert.ok(Math.abs(got[j] - x) < 1e-12, `${momentsDtype} step ${step} ${p.name}[${j}]: ${got[j]} vs ${x}`));
      });
    }
    if (momentsDtype === 'bf16') {
      for (const m of opt.state.m.values()) for (const x of b.download(m)) assert.equal(x, bf16BitsToFloat32(float32ToBf16Bits(x)));
    }
  }
});

test('global-norm clipping scales every gradient by clip / norm', () => {
  const p = new Parameter('w', b.upload(Float64Array.of(1, 2, 3, 4), [2, 2]));
  p.grad = b.upload(Float64Array.of(3, 0, 0, 4), [2, 2]);
  const opt = new AdamW(b, [p], { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradClip: 1, momentsDtype: 'f32' });
  assert.equal(opt.step(0), 5);
  const g = b.download(p.grad);
  [0.6, 0, 0, 0.8].forEach((x, i) => assert.ok(Math.abs(g[i] - x) < 1e-15, `${g[i]} vs ${x}`));
});

test('schedules: warmup, cosine to the minimum, warmup-stable-decay', () => {
  const base = { peakLr: 1, minLr: 0.1, warmupSteps: 10, totalSteps: 110, decayFraction: 0.2 };
  const cos = { ...base, kind: 'cosine' as const };
  assert.equal(learningRate(cos, 5), 0.5);
  assert.equal(learningRate(cos, 10), 1);
  assert.ok(Math.abs(learningRate(cos, 60) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(cos, 110) - 0.1) < 1e-12);
  const wsd = { ...base, kind: 'wsd' as const };
  assert.equal(learningRate(wsd, 80), 1);
  assert.ok(Math.abs(learningRate(wsd, 100) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(wsd, 110) - 0.1) < 1e-12);
});
