// CUDA graphs: a sequence of kernels and a cuBLASLt GEMM captured once on the context's stream
// and replayed gives exactly the eager result, also after the inputs are overwritten in place;
// so does a sequence of the training kernels (backward passes with their pool temporaries and
// memsets, AdamW), bit for bit except where FP32 atomics make the order of additions free.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { adamwHyperValues } from '../../../src/backend/backend.js';
import * as ops from '../../../src/backend/cuda/ops.js';
import { CublasLtMatmul } from '../../../src/backend/cuda/matmul.js';
import { openGpu, seededRandom, randomNormal, encodeBf16, downloadAs, assertClose } from './gpu-helpers.js';

const { ctx, skip } = openGpu();
const matmul = ctx ? new CublasLtMatmul(ctx) : undefined;
after(() => {
  matmul?.dispose();
  ctx?.dispose();
});

test('stream capture + graph replay equals eager execution', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const T = 64, d = 512, I = 768, eps = 1e-6;
  // One MLP block: h = x + W_down·(silu(W_gate·n) · W_up·n), n = rmsNorm(x)
  const x = c.upload(encodeBf16(randomNormal(rng, T * d)));
  const norm = c.upload(encodeBf16(randomNormal(rng, d)));
  const wGate = c.upload(encodeBf16(randomNormal(rng, I * d, 0.05)));
  const wUp = c.upload(encodeBf16(randomNormal(rng, I * d, 0.05)));
  const wDown = c.upload(encodeBf16(randomNormal(rng, d * I, 0.05)));
  const n = c.alloc(2 * T * d), gate = c.alloc(2 * T * I), up = c.alloc(2 * T * I), act = c.alloc(2 * T * I), y = c.alloc(2 * T * d), out = c.alloc(2 * T * d);
  const linear = (inp: number, w: number, o: number, M: number, N: number, K: number) =>
    matmul!.run({ m: M, n: N, k: K, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: K, ldb: K, ldc: N }, inp, w, o);
  const step = () => {
    ops.rmsNorm(c, 'bf16', x, norm, n, T, d, eps);
    linear(n, wGate, gate, T, I, d);
    linear(n, wUp, up, T, I, d);
    ops.swiglu(c, 'bf16', gate, up, act, T * I);
    linear(act, wDown, y, T, d, I);
    ops.add(c, 'bf16', x, y, out, T * d);
  };
  const result = () => {
    const h = new Uint16Array(T * d);
    c.copyToHost(h, out);
    return h;
  };

  step();
  const eager = result();
  const graph = c.capture(step);
  c.memset8(out, 0, 2 * T * d);
  graph.launch();
  assert.deepEqual(result(), eager, 'first replay');
  graph.launch();
  graph.launch();
  assert.deepEqual(result(), eager, 'third replay');

  // New input data in the same buffer: the replay sees it.
  c.copyToDevice(x, encodeBf16(randomNormal(rng, T * d)));
  step();
  const eager2 = result();
  assert.notDeepEqual(eager2, eager);
  c.memset8(out, 0, 2 * T * d);
  graph.launch();
  assert.deepEqual(result(), eager2, 'replay after the input changed');

  // Launch cost, eager against replay (printed).
  const start = c.createEvent(), end = c.createEvent();
  const reps = 50;
  c.synchronize();
  let t0 = performance.now();
  for (let i = 0; i < reps; i++) step();
  c.synchronize();
  const eagerMs = (performance.now() - t0) / reps;
  t0 = performance.now();
  start.record();
  for (let i = 0; i < reps; i++) graph.launch();
  end.record();
  end.synchronize();
  const replayMs = (performance.now() - t0) / reps;
  console.log(`# MLP block T=${T}: eager ${eagerMs.toFixed(3)} ms/step (host), graph ${replayMs.toFixed(3)} ms/step (host), ${(end.elapsedSince(start) / reps).toFixed(3)} ms/step (GPU)`);
  graph.destroy();
  start.destroy();
  end.destroy();
  for (const p of [x, norm, wGate, wUp, wDown, n, gate, up, act, y, out]) c.free(p);
});

test('a failure inside capture ends the capture and rethrows', { skip }, () => {
  const c = ctx!;
  assert.throws(() => c.capture(() => {
    throw new Error('inside capture');
  }), /inside capture/);
  assert.equal(c.isCapturing, false);
  // The stream works normally afterwards.
  const p = c.upload(new Float32Array([4, 5]));
  const back = new Float32Array(2);
  c.copyToHost(back, p);
  assert.deepEqual([...back], [4, 5]);
  c.free(p);
});

test('a captured backward sequence (norm, SwiGLU, attention, router, AdamW) replays like eager', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const T = 96, d = 256, I = 384, eps = 1e-6;
  const B = 2, Tq = 48, H = 4, Dk = 64, Dv = 32;
  const N = 64, E = 16, K = 4;
  const bf = (n: number, scale = 1) => c.upload(encodeBf16(randomNormal(rng, n, scale)));
  const f32 = (x: Float32Array) => c.upload(x);
  // inputs
  const x = bf(T * d), dy = bf(T * d), w = f32(randomNormal(rng, d)), gate = bf(T * I, 2), up = bf(T * I), dAct = bf(T * I);
  const q = bf(B * Tq * H * Dk), k = bf(B * Tq * H * Dk), v = bf(B * Tq * H * Dv), out = bf(B * Tq * H * Dv), dOut = bf(B * Tq * H * Dv);
  const scores = f32(Float32Array.from({ length: N * E }, () => 1 / (1 + Math.exp(-rng.normal()))));
  const indices = c.upload(Int32Array.from({ length: N * K }, (_, i) => ((i % K) * 4 + (Math.floor(i / K) % 4)) % E));
  const dWeights = f32(randomNormal(rng, N * K)), dScores = f32(randomNormal(rng, N * E, 0.01));
  const P = 4096;
  const p0 = f32(randomNormal(rng, P, 0.02)), g = f32(randomNormal(rng, P, 0.01));
  const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16: true };
  // three AdamW steps' lr and bias corrections, read from the device
  const hyper = [1, 2, 3].map((s) => f32(Float32Array.from(adamwHyperValues(1e-3, adam, s))));
  // outputs and state
  const dx = c.alloc(2 * T * d), dw = c.alloc(4 * d), dGate = c.alloc(2 * T * I), dUp = c.alloc(2 * T * I);
  const dq = c.alloc(2 * B * Tq * H * Dk), dk = c.alloc(4 * B * Tq * H * Dk), dv = c.alloc(4 * B * Tq * H * Dv);
  const dLogits = c.alloc(2 * N * E);
  const p = c.alloc(4 * P), m = c.alloc(4 * P), vv = c.alloc(4 * P);
  const cfg = { topK: K, nGroup: 1, topkGroup: 1, scoring: 'sigmoid' as const, groupLimited: false, groupScoreTop2: false, normTopkProb: true, routedScalingFactor: 2.5 };
  const step = () => {
    // in-place state starts from the same values on every run
    c.memset8(dw, 0, 4 * d);
    c.copyDeviceToDevice(p, p0, 4 * P);
    c.memset8(m, 0, 4 * P);
    c.memset8(vv, 0, 4 * P);
    ops.rmsNormBackwardInput(c, 'bf16', x, w, dy, dx, T, d, eps);
    ops.rmsNormBackwardWeight(c, 'bf16', 'f32', x, dy, dw, T, d, eps);
    ops.swigluBackward(c, 'bf16', gate, up, dAct, dGate, dUp, T * I);
    ops.attentionBackward(c, 'bf16', q, k, v, out, dOut, dq, dk, dv, { B, Tq, Tk: Tq, H, Dk, Dv }, 0.125, 0);
    ops.routerBackward(c, 'bf16', scores, indices, dWeights, dScores, dLogits, N, E, cfg);
    for (const hs of hyper) ops.adamw(c, p, g, m, vv, 'f32', 0, P, adam, 0.1, { hyper: hs, gradScale: 0, skip: 0 });
  };
  const read = () => ({
    dx: downloadAs(c, 'bf16', dx, T * d), dw: downloadAs(c, 'f32', dw, d), dGate: downloadAs(c, 'bf16', dGate, T * I), dUp: downloadAs(c, 'bf16', dUp, T * I),
    dq: downloadAs(c, 'bf16', dq, B * Tq * H * Dk), dk: downloadAs(c, 'f32', dk, B * Tq * H * Dk), dv: downloadAs(c, 'f32', dv, B * Tq * H * Dv),
    dLogits: downloadAs(c, 'bf16', dLogits, N * E), p: downloadAs(c, 'f32', p, P), m: downloadAs(c, 'f32', m, P),
  });
  step();
  const eager = read();
  const graph = c.capture(step);
  for (const buf of [dx, dGate, dUp, dq, dLogits]) c.memset8(buf, 0xff, 2);
  graph.launch();
  graph.launch();
  const replay = read();
  for (const key of Object.keys(eager) as (keyof typeof eager)[]) {
    if (key === 'dk' || key === 'dv') {
      // FP32 atomics: the order of the additions, and so the last bits, may change between runs.
      assertClose(`replayed ${key}`, replay[key], eager[key], 1e-5, rng.seed);
    } else {
      assert.deepEqual(replay[key], eager[key], `replayed ${key} (seed ${rng.seed})`);
    }
  }
  graph.destroy();
  for (const buf of [x, dy, w, gate, up, dAct, q, k, v, out, dOut, scores, indices, dWeights, dScores, p0, g, dx, dw, dGate, dUp, dq, dk, dv, dLogits, p, m, vv, ...hyper]) c.free(buf);
});
