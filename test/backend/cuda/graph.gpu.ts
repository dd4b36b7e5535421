// CUDA graphs: a sequence of kernels and a cuBLASLt GEMM captured once on the context's stream
// and replayed gives exactly the eager result, also after the inputs are overwritten in place.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ops from '../../../src/backend/cuda/ops.js';
import { CublasLtMatmul } from '../../../src/backend/cuda/matmul.js';
import { openGpu, seededRandom, randomNormal, encodeBf16 } from './gpu-helpers.js';

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
