// AdamW against a scalar reference written from the formulas, BF16 moments, weight decay on
// matrices only, clipping inside the update, the step split into its host and device parts (and
// the device part replayed from a captured graph), a diverged step, and the learning-rate schedules.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { Parameter } from '../../src/model/parameters.js';
import { bf16BitsToFloat32, float32ToBf16Bits } from '../../src/tensor/bf16.js';
import { AdamW } from '../../src/train/optimizer.js';
import { learningRate } from '../../src/train/schedule.js';
import { numel } from '../../src/tensor/tensor.js';
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

test('global-norm clipping inside the update: the update from gradients scaled by clip / norm, the gradients left as they are', () => {
  const rng = new Random(Math.floor(Math.random() * 2 ** 31));
  const shapes = [[3, 5], [4]];
  const normal = (n: number, scale: number) => Float64Array.from({ length: n }, () => rng.normal() * scale);
  for (const momentsDtype of ['f32', 'bf16'] as const) {
    const init = shapes.map((s) => normal(numel(s), 1));
    const make = () => init.map((d, i) => new Parameter(`p${i}`, b.upload(d, shapes[i])));
    const clipped = make(), reference = make();
    const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, momentsDtype };
    const opt = new AdamW(b, clipped, { ...cfg, gradClip: 0.5 });
    const unclipped = new AdamW(b, reference, { ...cfg, gradClip: 0 });
    for (let step = 1; step <= 4; step++) {
      // gradients of norm ~4: always clipped to 0.5
      const grads = shapes.map((s) => normal(numel(s), 1));
      clipped.forEach((p, i) => (p.grad = b.upload(grads[i], shapes[i])));
      reference.forEach((p, i) => (p.grad = b.upload(grads[i], shapes[i])));
      const norm = Math.sqrt(b.sumSquaresMany(clipped.map((p) => p.gradient)));
      // the reference: the gradients scaled in place, then the update without clipping
      b.scaleInPlaceMany(reference.map((p) => p.gradient), 0.5 / norm);
      unclipped.step(0.01 * step);
      assert.equal(opt.step(0.01 * step), norm, 'step returns the norm before clipping');
      clipped.forEach((p, i) => {
        assert.deepEqual(b.download(p.value), b.download(reference[i].value), `${momentsDtype} step ${step} ${p.name}`);
        assert.deepEqual(b.download(p.gradient), grads[i], `${momentsDtype} step ${step}: the gradient of ${p.name} is not written`);
      });
    }
  }
});

test('prepare + applyOnDevice (eagerly, and replayed from a captured graph) is step: the same bits, the norm and coefficient on the device', () => {
  const rng = new Random(Math.floor(Math.random() * 2 ** 31));
  const shapes = [[4, 6], [6], [3, 2]];
  const normal = (n: number, scale: number) => Float64Array.from({ length: n }, () => rng.normal() * scale);
  for (const momentsDtype of ['f32', 'bf16'] as const) {
    const init = shapes.map((s) => normal(numel(s), 1));
    const make = () => init.map((d, i) => new Parameter(`p${i}`, b.upload(d, shapes[i])));
    const sets = [make(), make(), make()];
    const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 2, momentsDtype };
    const [stepped, split, captured] = sets.map((params) => ({ params, opt: new AdamW(b, params, cfg) }));
    let graph: ReturnType<typeof b.captureGraph> | null = null;
    for (let step = 1; step <= 4; step++) {
      // norms of ~6 (clipped to 2) and ~0.6 (not clipped), alternating
      const grads = shapes.map((s) => normal(numel(s), step % 2 ? 1 : 0.1));
      for (const set of sets) {
        set.forEach((p, i) => {
          p.grad ??= b.zeros(shapes[i]); // the same tensors every step, as a captured graph reads them
          b.copyFromHost(p.grad, grads[i]);
        });
      }
      const lr = 0.01 * step;
      const norm = stepped.opt.step(lr);
      split.opt.prepare(lr);
      const normAndScale = b.download(split.opt.applyOnDevice());
      captured.opt.prepare(lr);
      graph ??= b.captureGraph(() => void captured.opt.applyOnDevice());
      graph.replay();
      assert.deepEqual([...normAndScale], [norm, norm > 2 ? 2 / norm : 1], `${momentsDtype} step ${step}: [norm, coefficient]`);
      for (const other of [split, captured]) {
        assert.equal(other.opt.state.step, step);
        other.params.forEach((p, i) => {
          assert.deepEqual(b.download(p.value), b.download(stepped.params[i].value), `${momentsDtype} step ${step}: ${p.name}`);
          assert.deepEqual(b.download(other.opt.state.m.get(p.name)!), b.download(stepped.opt.state.m.get(p.name)!), `${momentsDtype} step ${step}: m of ${p.name}`);
        });
      }
    }
    graph?.free();
  }
});

test('a NaN or infinite gradient norm: step throws and leaves the weights, moments and step number as they were', () => {
  const rng = new Random(Math.floor(Math.random() * 2 ** 31));
  for (const poison of [NaN, Infinity]) {
    const p = new Parameter('w', b.upload(Float64Array.from({ length: 6 }, () => rng.normal()), [2, 3]));
    const opt = new AdamW(b, [p], { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1, momentsDtype: 'f32' });
    p.grad = b.upload(Float64Array.from({ length: 6 }, () => rng.normal()), [2, 3]);
    opt.step(0.01);
    const before = [p.value, opt.state.m.get('w')!, opt.state.v.get('w')!].map((t) => b.download(t));
    const g = Float64Array.from({ length: 6 }, () => rng.normal());
    g[4] = poison;
    b.copyFromHost(p.grad, g);
    assert.throws(() => opt.step(0.01), /gradient norm is (NaN|Infinity) at step 2: training diverged/);
    assert.equal(opt.state.step, 1);
    [p.value, opt.state.m.get('w')!, opt.state.v.get('w')!].forEach((t, i) => assert.deepEqual(b.download(t), before[i], `${poison}: tensor ${i} unchanged`));
  }
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
