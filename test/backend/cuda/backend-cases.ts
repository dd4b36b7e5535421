// The CUDA backend against the CPU backend, op by op, on fresh random inputs (DESIGN §6), in
// both CUDA modes: FP32 (everything FP32, ~1e-5 relative) and BF16 (BF16 activations with FP32
// parameters, gradients and moments, ~1e-2). Inputs are rounded to BF16 first in BF16 mode, so
// both backends start from the same values. Shared by training-ops.gpu.ts (the real GPU) and
// emulated-backend.test.ts (the CPU emulator of the kernels); `large` picks GPU-sized problems.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { adamwHyperValues, type AdamWHyper, type AdamWScalars, type Backend, type RouterConfig, type RouterOutput } from '../../../src/backend/backend.js';
import { CpuBackend } from '../../../src/backend/cpu/cpu-backend.js';
import type { CudaBackend, CudaTensor } from '../../../src/backend/cuda/cuda-backend.js';
import { writeSafetensors } from '../../../src/io/safetensors.js';
import { encodeFromFloat } from '../../../src/tensor/dtypes.js';
import type { Tensor } from '../../../src/tensor/tensor.js';
import { loadTrainerState, TRAINER_STATE_FILE } from '../../../src/train/checkpoint.js';
import { randomExpertChoices } from '../../helpers/random.js';
import { withTempDir } from '../../helpers/temp-dir.js';
import { assertClose, randomNormal, roundBf16, seededRandom } from './gpu-helpers.js';

export type Mode = 'f32' | 'bf16';

export interface CaseOptions {
  /** Prefix of every test name. */
  label: string;
  skip: string | false;
  /** A CUDA backend computing in `mode` (made once per mode and kept). */
  backend: (mode: Mode) => CudaBackend;
  /** GPU-sized problems (wide rows, long sequences) instead of emulator-sized ones. */
  large: boolean;
}

const TOL: Record<Mode, number> = { f32: 1e-5, bf16: 1e-2 };

export function registerBackendCases(o: CaseOptions): void {
  for (const mode of ['f32', 'bf16'] as const) registerMode(o, mode);
}

function registerMode(o: CaseOptions, mode: Mode): void {
  const rng = seededRandom();
  const tol = TOL[mode];
  const cpu = new CpuBackend('f32');
  const cuda = () => o.backend(mode);
  const L = o.large;
  const name = (what: string) => `${o.label} ${mode}: ${what}`;
  const opts = { skip: o.skip };

  /** Host data as both backends hold it: BF16-exact in BF16 mode. */
  const data = (n: number, scale = 1): Float32Array => {
    const x = randomNormal(rng, n, scale);
    return mode === 'bf16' ? roundBf16(x) : x;
  };
  const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
  /** An activation: BF16 storage in BF16 mode (what op results are). */
  const act = (shape: number[], scale = 1) => {
    const d = data(count(shape), scale);
    return { d, c: cpu.upload(d, shape), g: cuda().upload(d, shape, mode) };
  };
  /** A parameter, gradient or accumulator: FP32 storage (what upload and zeros make). */
  const param = (shape: number[], scale = 1) => {
    const d = data(count(shape), scale);
    return { d, c: cpu.upload(d, shape), g: cuda().upload(d, shape) };
  };
  const ints = (values: Int32Array, shape: number[]) => ({ c: cpu.uploadInt(values, shape), g: cuda().uploadInt(values, shape) });
  const compare = (what: string, g: Tensor, c: Tensor, rtol = tol) => {
    assert.deepEqual([...g.shape], [...c.shape], `${what}: shape`);
    assertClose(`${mode} ${what}`, cuda().download(g), cpu.download(c), rtol, rng.seed);
  };
  const near = (what: string, got: number, want: number, rtol: number) => {
    const err = Math.abs(got - want) / Math.max(Math.abs(want), 1e-30);
    console.log(`# ${mode} ${what}: ${got} vs ${want} (relative error ${err.toExponential(2)})`);
    assert.ok(err <= rtol, `${mode} ${what}: ${got} vs ${want} (seed ${rng.seed})`);
  };
  /** Two CUDA tensors (either float dtype) hold the same FP32 values, bit for bit. */
  const sameBits = (what: string, got: Tensor, want: Tensor) => {
    const bits = (t: Tensor) => {
      const f = cuda().download(t);
      return new Uint32Array(f.buffer, f.byteOffset, f.length);
    };
    const x = bits(got), y = bits(want);
    assert.equal(x.length, y.length, `${what}: length`);
    const at = x.findIndex((e, i) => e !== y[i]);
    assert.equal(at, -1, `${mode} ${what}: element ${at} is 0x${x[at]?.toString(16)}, want 0x${y[at]?.toString(16)} (seed ${rng.seed})`);
  };
  /** AdamW's device scalars on `be` for learning rate lr at step t: hyper [3] and, unless null, gradScale [1], FP32 on the GPU. */
  const adamwScalars = (be: Backend, h: AdamWHyper, lr: number, t: number, gradScale: number | null = null): AdamWScalars => {
    const number = (values: Float64Array) => {
      const x = be.zeros([values.length], 'f32');
      be.copyFromHost(x, values);
      return x;
    };
    return { hyper: number(adamwHyperValues(lr, h, t)), gradScale: gradScale === null ? null : number(Float64Array.of(gradScale)), skip: null };
  };

  test(name('memory: storage dtypes, views, copyFromHost, free, allocation scopes'), opts, () => {
    const b = cuda();
    const d = randomNormal(rng, 60);
    const t = b.upload(d, [6, 10]);
    assert.equal(t.dtype, 'f32');
    assert.deepEqual(b.download(t), d);
    assert.equal(b.zeros([3]).dtype, 'f32');
    assert.equal(b.zeros([3], 'state').dtype, 'f32');
    assert.equal(b.zeros([3], 'activation').dtype, mode, 'activation gradients are in the activation dtype');
    assert.deepEqual(b.download(b.zeros([5], 'activation')), new Float32Array(5));
    // freed memory serves the next request of its size
    const z = b.zeros([777]);
    const freedAt = z.ptr, hits = b.cachedMemory().hits;
    b.free(z);
    const again = b.zeros([777]);
    assert.equal(again.ptr, freedAt);
    assert.equal(b.cachedMemory().hits, hits + 1);
    assert.deepEqual(b.download(again), new Float32Array(777), 'a reused block is zeroed by zeros');
    b.free(again);
    assert.deepEqual(b.download(b.reshape(b.rows(t, 2, 3), [30])), d.subarray(20, 50));
    const h = b.upload(d, [60], 'bf16');
    assert.equal(h.dtype, 'bf16');
    assert.deepEqual(b.download(h), roundBf16(d));
    const fresh = randomNormal(rng, 60);
    b.copyFromHost(t, fresh);
    b.copyFromHost(h, fresh);
    assert.deepEqual(b.download(t), fresh);
    assert.deepEqual(b.download(h), roundBf16(fresh));
    assert.throws(() => b.copyFromHost(t, new Float32Array(5)), /5 values/);

    const before = b.liveAllocations();
    const outer = b.markAllocations();
    const kept = b.zeros([4, 4]);
    const inner = b.markAllocations();
    const temp = b.add(kept, kept);
    const view = b.rows(temp, 1, 2);
    b.upload(d, [60]);
    b.uploadInt(Int32Array.from([1, 2, 3]), [3]);
    b.releaseAllocations(inner);
    assert.throws(() => b.download(temp), /was freed/);
    assert.throws(() => b.download(view), /was freed/);
    b.free(temp); // already released: nothing happens
    b.free(view);
    assert.deepEqual(b.download(kept), new Float32Array(16));
    b.releaseAllocations(outer);
    assert.throws(() => b.download(kept), /was freed/);
    assert.deepEqual(b.liveAllocations(), before);
    assert.deepEqual(b.download(t), fresh, 'tensors from before the mark survive');
    b.free(t);
    b.free(t);
    b.free(h);
    assert.equal(b.liveAllocations().count, before.count - 2);
  });

  test(name('linear, strided batched gemm into an FP32 accumulator, BF16 copies of weights follow writes'), opts, () => {
    const b = cuda();
    const x = act([37, 96]), w = param([80, 96], 0.1);
    compare('linear', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
    const x3 = act([2, 5, 96]);
    compare('linear on [B, T, K]', b.linear(x3.g, w.g), cpu.linear(x3.c, w.c));
    const T = 9, H = 3, D = 16;
    const q = act([T, H, D]), k = act([T, H, D]), acc = param([H, T, T]);
    const spec = (qt: Tensor, kt: Tensor, out: Tensor) => ({
      m: T, n: T, k: D, batch: H, alpha: 0.25, beta: 1,
      a: { tensor: qt, ld: H * D, batchStride: D }, b: { tensor: kt, ld: H * D, batchStride: D, trans: true }, c: { tensor: out, ld: T, batchStride: T * T },
    });
    b.gemm(spec(q.g, k.g, acc.g));
    cpu.gemm(spec(q.c, k.c, acc.c));
    compare('batched strided gemm, beta 1', acc.g, acc.c);
    // The weight changes in place: the next GEMM must see the new values, not a stale BF16 copy.
    const w2 = data(80 * 96, 0.1);
    b.copyFromHost(w.g, w2);
    cpu.copyFromHost(w.c, w2);
    compare('linear after copyFromHost', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
    const g = param([80, 96], 0.01), m = param([80, 96], 0.01), v = param([80, 96], 0.01);
    for (const t of [m, v]) {
      const sq = t.d.map((e) => e * e);
      b.copyFromHost(t.g, sq);
      cpu.copyFromHost(t.c, sq);
    }
    const h: AdamWHyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16: false };
    b.adamw(w.g, g.g, m.g, v.g, h, 0.1, adamwScalars(b, h, 0.05, 1));
    cpu.adamw(w.c, g.c, m.c, v.c, h, 0.1, adamwScalars(cpu, h, 0.05, 1));
    compare('linear after adamw', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
    b.scaleInPlace(w.g, 0.5);
    cpu.scaleInPlace(w.c, 0.5);
    compare('linear after scaleInPlace', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
    // two weights written at once: the first use refreshes both BF16 copies, the second finds its own fresh
    const w3 = param([40, 96], 0.1);
    compare('linear, a second weight', b.linear(x.g, w3.g), cpu.linear(x.c, w3.c));
    b.scaleInPlaceMany([w.g, w3.g], -1.5);
    cpu.scaleInPlaceMany([w.c, w3.c], -1.5);
    compare('linear after scaleInPlaceMany', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
    compare('linear of the other weight after scaleInPlaceMany', b.linear(x.g, w3.g), cpu.linear(x.c, w3.c));
    b.free(w3.g);
    compare('linear after freeing the other weight', b.linear(x.g, w.g), cpu.linear(x.c, w.c));
  });

  test(name('elementwise, normalisation and column ops'), opts, () => {
    const b = cuda();
    const a = act([33, 64]), a2 = act([33, 64]);
    compare('add', b.add(a.g, a2.g), cpu.add(a.c, a2.c));
    const acc = param([33, 64]);
    b.addInPlace(acc.g, a.g, -0.5);
    cpu.addInPlace(acc.c, a.c, -0.5);
    compare('addInPlace into FP32 storage', acc.g, acc.c);
    b.addInPlace(a.g, acc.g, 0.25);
    cpu.addInPlace(a.c, acc.c, 0.25);
    compare('addInPlace into activation storage', a.g, a.c);
    const d = L ? 7168 : 200;
    const x = act([7, d]), w = param([d]);
    compare('rmsNorm', b.rmsNorm(x.g, w.g, 1e-6), cpu.rmsNorm(x.c, w.c, 1e-6));
    const wAct = act([d]);
    compare('rmsNorm, weight in activation storage', b.rmsNorm(x.g, wAct.g, 1e-6), cpu.rmsNorm(x.c, wAct.c, 1e-6));
    const g = act([19, L ? 1408 : 96], 2), u = act([19, L ? 1408 : 96]);
    compare('swiglu', b.swiglu(g.g, u.g), cpu.swiglu(g.c, u.c));
    const m = act([11, 40]);
    compare('sliceCols', b.sliceCols(m.g, 8, 29), cpu.sliceCols(m.c, 8, 29), 0);
    const mf = param([11, 40]);
    compare('sliceCols of FP32 storage', b.sliceCols(mf.g, 8, 29), cpu.sliceCols(mf.c, 8, 29));
    const kn = act([5, 4, 32]), kpe = act([5, 1, 8]), kpeH = act([5, 4, 8]);
    compare('concatHeads (shared key)', b.concatHeads(kn.g, kpe.g), cpu.concatHeads(kn.c, kpe.c), 0);
    compare('concatHeads (per head)', b.concatHeads(kn.g, kpeH.g), cpu.concatHeads(kn.c, kpeH.c), 0);
  });

  test(name('embedding and rope'), opts, () => {
    const b = cuda();
    const table = param([500, 64]);
    const ids = ints(Int32Array.from({ length: 40 }, () => rng.int(0, 499)), [40]);
    compare('embedding', b.embedding(table.g, ids.g), cpu.embedding(table.c, ids.c), 0);
    const tableAct = act([500, 64]);
    compare('embedding, table in activation storage', b.embedding(tableAct.g, ids.g), cpu.embedding(tableAct.c, ids.c), 0);
    const N = 12, H = 4, W = 48, rot = 16, P = 32, half = rot / 2;
    const angles = Float32Array.from({ length: P * half }, (_, k) => Math.floor(k / half) * 10000 ** (-(2 * (k % half)) / rot));
    const cosD = angles.map(Math.cos), sinD = angles.map(Math.sin);
    const cos = { c: cpu.upload(cosD, [P, half]), g: b.upload(cosD, [P, half]) };
    const sin = { c: cpu.upload(sinD, [P, half]), g: b.upload(sinD, [P, half]) };
    const pos = ints(Int32Array.from({ length: N }, () => rng.int(0, P - 1)), [N]);
    const x = act([N, H, W]);
    for (const inverse of [false, true]) {
      compare(`rope${inverse ? ' inverse' : ''}`, b.rope(x.g, cos.g, sin.g, pos.g, 32, rot, inverse), cpu.rope(x.c, cos.c, sin.c, pos.c, 32, rot, inverse));
    }
    const cosR = data(P * half), sinR = data(P * half); // any values: tables in activation storage
    const cosA = { c: cpu.upload(cosR, [P, half]), g: b.upload(cosR, [P, half], mode) }, sinA = { c: cpu.upload(sinR, [P, half]), g: b.upload(sinR, [P, half], mode) };
    compare('rope, tables in activation storage', b.rope(x.g, cosA.g, sinA.g, pos.g, 0, rot), cpu.rope(x.c, cosA.c, sinA.c, pos.c, 0, rot));
  });

  test(name('attention, latent attention over an FP32 cache, cache writes'), opts, () => {
    const b = cuda();
    const B = 2, Tq = 6, Tk = 10, H = 3, Dk = 24, Dv = 16;
    const q = act([B, Tq, H, Dk]), k = act([B, Tk, H, Dk]), v = act([B, Tk, H, Dv]);
    compare('attention (chunk at qStart 4)', b.attention(q.g, k.g, v.g, 0.2, 4), cpu.attention(q.c, k.c, v.c, 0.2, 4));
    const C = 32, R = 8, S = 20, kvLen = 15;
    const qLat = param([B, Tq, H, C]), qPe = act([B, Tq, H, R]);
    const ckv = { g: b.zeros([B, S, C]), c: cpu.zeros([B, S, C]) }, kpe = { g: b.zeros([B, S, R]), c: cpu.zeros([B, S, R]) };
    const newC = act([B, kvLen, C]), newR = act([B, kvLen, R]);
    /** Positions start, start + 1, …, start + T − 1 in every sequence of the batch. */
    const at = (start: number, T: number) => ints(Int32Array.from({ length: B * T }, (_, i) => start + (i % T)), [B * T]);
    const first = at(0, kvLen);
    b.writeCache(ckv.g, newC.g, first.g);
    cpu.writeCache(ckv.c, newC.c, first.c);
    b.writeCache(kpe.g, newR.g, first.g);
    cpu.writeCache(kpe.c, newR.c, first.c);
    compare('writeCache', ckv.g, ckv.c, 0);
    const more = act([B, 2, C]), after = at(kvLen, 2);
    b.writeCache(ckv.g, more.g, after.g);
    cpu.writeCache(ckv.c, more.c, after.c);
    compare('writeCache at an offset', ckv.g, ckv.c, 0);
    const last = at(kvLen - Tq, Tq);
    compare('mlaLatentAttention', b.mlaLatentAttention(qLat.g, qPe.g, ckv.g, kpe.g, 0.15, last.g),
      cpu.mlaLatentAttention(qLat.c, qPe.c, ckv.c, kpe.c, 0.15, last.c));
  });

  test(name('latent cache writes and attention at positions read on the device, sequences at different positions'), opts, () => {
    const b = cuda();
    // GPU-sized: V3's latent widths, so that BF16 mode runs the tensor-core decode kernel on a BF16 cache
    const [C, R, S, H] = L ? [512, 64, 300, 16] : [32, 8, 24, 3];
    for (const [B, Tq] of [[3, 1], [2, 3]] as const) {
      // each sequence at its own length (one of them at the cache's end, one at its start)
      const lengths = Array.from({ length: B }, (_, i) => (i === 0 ? S - Tq : i === 1 ? 0 : rng.int(0, S - Tq)));
      const cache = { c: cpu.zeros([B, S, C]), g: b.zeros([B, S, C], 'activation') }, kpe = { c: cpu.zeros([B, S, R]), g: b.zeros([B, S, R], 'activation') };
      const before = { c: act([B, S, C]), r: act([B, S, R]) };
      const all = ints(Int32Array.from({ length: B * S }, (_, i) => i % S), [B * S]);
      b.writeCache(cache.g, before.c.g, all.g);
      cpu.writeCache(cache.c, before.c.c, all.c);
      b.writeCache(kpe.g, before.r.g, all.g);
      cpu.writeCache(kpe.c, before.r.c, all.c);
      const pos = ints(Int32Array.from({ length: B * Tq }, (_, i) => lengths[Math.floor(i / Tq)]! + (i % Tq)), [B * Tq]);
      const newC = act([B, Tq, C]), newR = act([B, Tq, R]);
      b.writeCache(cache.g, newC.g, pos.g);
      cpu.writeCache(cache.c, newC.c, pos.c);
      b.writeCache(kpe.g, newR.g, pos.g);
      cpu.writeCache(kpe.c, newR.c, pos.c);
      compare(`writeCache at positions ${cpu.downloadInt(pos.c).join(', ')}`, cache.g, cache.c, 0);
      compare('writeCache of the rotary keys', kpe.g, kpe.c, 0);
      const qLat = act([B, Tq, H, C]), qPe = act([B, Tq, H, R]);
      compare(`mlaLatentAttention B=${B} Tq=${Tq} at positions ${cpu.downloadInt(pos.c).join(', ')}`,
        b.mlaLatentAttention(qLat.g, qPe.g, cache.g, kpe.g, 0.12, pos.g), cpu.mlaLatentAttention(qLat.c, qPe.c, cache.c, kpe.c, 0.12, pos.c));
    }
  });

  test(name('moeExpertsDirect (FP32 and activation-storage expert weights) against the CPU'), opts, () => {
    const b = cuda();
    // d and I multiples of 8 (the kernels' vector loads), then not
    for (const [N, K, E, d, I] of L ? [[32, 8, 32, 1024, 512], [5, 6, 16, 200, 100]] : [[20, 3, 8, 40, 24], [7, 2, 5, 36, 20]]) {
      // K distinct experts per token, positive gating weights: as the router gives them
      const idx = randomExpertChoices(rng, N, K, E);
      const indices = ints(idx, [N, K]);
      const gw = Float32Array.from({ length: N * K }, () => rng.uniform());
      const weights = { c: cpu.upload(gw, [N, K]), g: b.upload(gw, [N, K]) };
      const x = act([N, d]);
      for (const storage of ['state', 'activation'] as const) {
        const weight = (shape: number[]) => (storage === 'state' ? param(shape, 0.1) : act(shape, 0.1));
        const gate = Array.from({ length: E }, () => weight([I, d])), up = Array.from({ length: E }, () => weight([I, d]));
        const down = Array.from({ length: E }, () => weight([d, I]));
        const g = (ws: typeof gate) => ws.map((w) => w.g), c = (ws: typeof gate) => ws.map((w) => w.c);
        const what = `moeExpertsDirect N=${N} K=${K} E=${E} d=${d} I=${I}, ${storage === 'state' ? 'FP32' : 'activation-storage'} weights`;
        const direct = b.moeExpertsDirect(x.g, indices.g, weights.g, g(gate), g(up), g(down));
        // BF16: gate, up, their SwiGLU, each slot's output and the weighted sum are each rounded to
        // BF16 (where the permuted path rounds them too): five roundings deep, where one op stays within 1e-2
        compare(what, direct, cpu.moeExpertsDirect(x.c, indices.c, weights.c, c(gate), c(up), c(down)), mode === 'bf16' ? 3e-2 : tol);
        // the permuted path on this backend rounds at the same places: only the order of FP32 sums differs
        const perm = b.moePermute(x.g, indices.g, E, { blockRows: 8, maxRatio: Infinity });
        const h = b.swiglu(b.groupedLinear(perm.rows, g(gate)), b.groupedLinear(perm.rows, g(up)));
        const permuted = b.moeUnpermute(b.groupedLinear(h, g(down)), perm.sourceSlot, weights.g);
        assertClose(`${mode} ${what} = the permuted path`, b.download(direct), b.download(permuted), tol, rng.seed);
      }
    }
  });

  test(name('captureGraph: a replay runs the recorded ops on the tensors\' current contents'), opts, () => {
    const b = cuda();
    const B = 2, C = 24, S = 6;
    const w = param([C, 16], 0.2), x = act([B, 16]);
    const cache = { c: cpu.zeros([B, S, C]), g: b.zeros([B, S, C], 'activation') };
    const pos = ints(Int32Array.of(0, 3), [B]);
    // y = x·wᵀ written into the cache at the positions: reads x and the positions where they are
    const step = (be: Backend, xt: Tensor, wt: Tensor, ct: Tensor, pt: Tensor) => () => {
      const y = be.linear(xt, wt);
      be.writeCache(ct, be.reshape(y, [B, 1, C]), pt);
      be.free(y);
    };
    // eager first (GEMM plans and the like)
    step(b, x.g, w.g, cache.g, pos.g)();
    step(cpu, x.c, w.c, cache.c, pos.c)();
    const graph = b.captureGraph(step(b, x.g, w.g, cache.g, pos.g));
    for (const p of [[1, 4], [2, 5]]) {
      const xd = data(B * 16);
      b.copyFromHost(x.g, xd);
      cpu.copyFromHost(x.c, xd);
      b.copyFromHostInt(pos.g, Int32Array.from(p));
      cpu.copyFromHostInt(pos.c, Int32Array.from(p));
      graph.replay();
      step(cpu, x.c, w.c, cache.c, pos.c)();
      compare(`replay at positions ${p.join(', ')}`, cache.g, cache.c);
    }
    // new weights written eagerly: in BF16 mode the graph reads the weight's BF16 copy, which the
    // replay must bring up to date first
    const wd = data(w.d.length, 0.2);
    b.copyFromHost(w.g, wd);
    cpu.copyFromHost(w.c, wd);
    graph.replay();
    step(cpu, x.c, w.c, cache.c, pos.c)();
    compare('replay after the weight changed', cache.g, cache.c);
    graph.free();
    assert.throws(() => graph.replay(), /freed graph/);
    // a weight freed under a live graph: in BF16 mode the graph read its copy, so it refuses to replay
    const w2 = param([C, 16], 0.2);
    step(b, x.g, w2.g, cache.g, pos.g)();
    const reader = b.captureGraph(step(b, x.g, w2.g, cache.g, pos.g));
    b.free(w2.g);
    if (mode === 'bf16') assert.throws(() => reader.replay(), /freed since the capture/);
    reader.free();
    assert.throws(() => b.captureGraph(() => void b.linear(x.g, w.g)), /left 1 tensor/);
    assert.throws(() => b.captureGraph(() => void b.download(w.g)), /capture/i);
    // moeExpertsDirect uploads its table of expert weight addresses on first use: outside capture only
    const gate = [0, 1, 2].map(() => param([8, 16], 0.2).g), up = [0, 1, 2].map(() => param([8, 16], 0.2).g), down = [0, 1, 2].map(() => param([16, 8], 0.2).g);
    const idx = b.uploadInt(Int32Array.of(2, 0), [B, 1]), gating = b.upload(Float32Array.of(0.7, 1.3), [B, 1]);
    const experts = () => b.free(b.moeExpertsDirect(x.g, idx, gating, gate, up, down));
    assert.throws(() => b.captureGraph(experts), /run the captured work once before/);
    experts();
    b.captureGraph(experts).free();
    step(b, x.g, w.g, cache.g, pos.g)(); // the stream works normally afterwards
    step(cpu, x.c, w.c, cache.c, pos.c)();
    compare('eager after failed captures', cache.g, cache.c);
  });

  const routeCase = (N: number, E: number, cfg: RouterConfig) => {
    const b = cuda();
    const logitsD = randomNormal(rng, N * E, 2);
    const logits = { c: cpu.upload(logitsD, [N, E]), g: b.upload(logitsD, [N, E]) };
    const rc = cpu.routerTopK(logits.c, null, cfg);
    // The CPU's routing on both sides, so that the backward passes compare exactly the same choice.
    const rg: RouterOutput = {
      scores: b.upload(cpu.download(rc.scores), [N, E]),
      indices: b.uploadInt(cpu.downloadInt(rc.indices), [N, cfg.topK]),
      weights: b.upload(cpu.download(rc.weights), [N, cfg.topK]),
    };
    return { logits, rc, rg };
  };

  test(name('router, permute and unpermute'), opts, () => {
    const b = cuda();
    const N = 64, E = 32, d = 40, K = 4;
    const cfg: RouterConfig = { topK: K, nGroup: 4, topkGroup: 2, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 2.5 };
    const logitsD = randomNormal(rng, N * E, 2), biasD = randomNormal(rng, E, 0.05);
    const lc = cpu.upload(logitsD, [N, E]), bc = cpu.upload(biasD, [E]);
    const rg = b.routerTopK(b.upload(logitsD, [N, E]), b.upload(biasD, [E]), cfg), rc = cpu.routerTopK(lc, bc, cfg);
    compare('router scores', rg.scores, rc.scores, 1e-5);
    // logits and bias in activation storage (BF16 in BF16 mode): scores of the rounded logits
    const lR = data(N * E, 2), bR = data(E, 0.05);
    const ra = b.routerTopK(b.upload(lR, [N, E], mode), b.upload(bR, [E], mode), cfg), rca = cpu.routerTopK(cpu.upload(lR, [N, E]), cpu.upload(bR, [E]), cfg);
    compare('router scores, logits and bias in activation storage', ra.scores, rca.scores, 1e-5);
    const rb = b.routerTopK(b.upload(logitsD, [N, E]), b.upload(bR, [E], mode), cfg), rcb = cpu.routerTopK(lc, cpu.upload(bR, [E]), cfg);
    compare('router scores, bias in activation storage', rb.scores, rcb.scores, 1e-5);
    const rl = b.routerTopK(b.upload(lR, [N, E], mode), b.upload(biasD, [E]), cfg), rcl = cpu.routerTopK(cpu.upload(lR, [N, E]), bc, cfg);
    compare('router scores, logits in activation storage', rl.scores, rcl.scores, 1e-5);
    const ig = b.downloadInt(rg.indices), ic = cpu.downloadInt(rc.indices);
    let differ = 0;
    for (let n = 0; n < N; n++) if (ig.subarray(n * K, n * K + K).join() !== ic.subarray(n * K, n * K + K).join()) differ++;
    assert.ok(differ <= 1, `${differ} tokens routed differently (seed ${rng.seed})`);
    if (differ === 0) compare('router weights', rg.weights, rc.weights, 1e-5);
    const x = act([N, d]);
    const pg = b.moePermute(x.g, b.uploadInt(ic, [N, K]), E), pc = cpu.moePermute(x.c, rc.indices, E);
    assert.deepEqual(pg.counts, pc.counts);
    assert.deepEqual(b.downloadInt(pg.sourceSlot), cpu.downloadInt(pc.sourceSlot));
    compare('moePermute rows', pg.rows, pc.rows, 0);
    const expertOut = param([N * K, d]);
    const wg = b.upload(cpu.download(rc.weights), [N, K]);
    compare('moeUnpermute (FP32 expert rows)', b.moeUnpermute(expertOut.g, pg.sourceSlot, wg), cpu.moeUnpermute(expertOut.c, pc.sourceSlot, rc.weights));
    const wR = data(N * K);
    const wAct = { c: cpu.upload(wR, [N, K]), g: b.upload(wR, [N, K], mode) }, rowsAct = act([N * K, d]);
    compare('moeUnpermute (weights in activation storage)', b.moeUnpermute(rowsAct.g, pg.sourceSlot, wAct.g), cpu.moeUnpermute(rowsAct.c, pc.sourceSlot, wAct.c));
    assert.equal(pg.capacity, null);
    // padded: blocks of the largest count rounded up to 8 rows, slot −1 and zero rows after each expert's rows
    const pad = { blockRows: 8, maxRatio: Infinity };
    const pp = b.moePermute(x.g, b.uploadInt(ic, [N, K]), E, pad), ppc = cpu.moePermute(x.c, rc.indices, E, pad);
    const C = Math.ceil(Math.max(...pc.counts!) / 8) * 8;
    assert.equal(pp.capacity, C);
    assert.equal(ppc.capacity, C);
    assert.deepEqual(pp.counts, pc.counts);
    assert.deepEqual([...pp.rows.shape], [E * C, d]);
    const padSlots = cpu.downloadInt(ppc.sourceSlot);
    assert.deepEqual(b.downloadInt(pp.sourceSlot), padSlots);
    assert.equal(padSlots.filter((v) => v < 0).length, E * C - N * K);
    compare('moePermute rows, padded', pp.rows, ppc.rows, 0);
    const paddedOut = param([E * C, d]); // padding rows hold values: unpermute must skip them
    compare('moeUnpermute, padded rows', b.moeUnpermute(paddedOut.g, pp.sourceSlot, wg), cpu.moeUnpermute(paddedOut.c, ppc.sourceSlot, rc.weights));
    assert.equal(b.moePermute(x.g, b.uploadInt(ic, [N, K]), E, { blockRows: 8, maxRatio: 0.5 }).capacity, null, 'too much padding: packed');
  });

  /** The sourceSlot of a fixed-capacity permutation of idx [N·K] over E experts: each expert keeps its first `capacity` slots. */
  const fixedSourceSlot = (idx: Int32Array, E: number, capacity: number): Int32Array => {
    const slots = new Int32Array(E * capacity).fill(-1), kept = new Array<number>(E).fill(0);
    idx.forEach((e, slot) => {
      if (kept[e]! < capacity) slots[e * capacity + kept[e]!++] = slot;
    });
    return slots;
  };
  /** Routing [N, K] where every token's first choice is expert E − 1, its others distinct among the rest. */
  const hotRouting = (N: number, K: number, E: number): Int32Array => {
    const rest = randomExpertChoices(rng, N, K - 1, E - 1), idx = new Int32Array(N * K);
    for (let n = 0; n < N; n++) {
      idx[n * K] = E - 1;
      idx.set(rest.subarray(n * (K - 1), (n + 1) * (K - 1)), n * K + 1);
    }
    return idx;
  };
  const expertCounts = (idx: Int32Array, E: number) => {
    const counts = new Array<number>(E).fill(0);
    for (const e of idx) counts[e]++;
    return counts;
  };

  test(name('moePermute with a fixed capacity: the padded permutation without a host read, the slots past it dropped'), opts, () => {
    const b = cuda();
    const N = 40, K = 3, E = 8, d = 24;
    const x = act([N, d]), dy = act([N, d]);
    const wd = Float32Array.from({ length: N * K }, () => rng.uniform());
    const w = { c: cpu.upload(wd, [N, K]), g: b.upload(wd, [N, K]) };
    // [slots dropped, largest count], never cleared by moePermute: they start from values of an earlier step
    const stats = ints(Int32Array.of(7, 2), [2]);
    let dropped = 7, largest = 2;

    // every count fits: what the host-read padding of that capacity gives
    const spread = randomExpertChoices(rng, N, K, E);
    largest = Math.max(...expertCounts(spread, E));
    const C = largest + 3;
    const si = ints(spread, [N, K]);
    const fg = b.moePermute(x.g, si.g, E, undefined, { capacity: C, stats: stats.g });
    const pg = b.moePermute(x.g, si.g, E, { blockRows: C, maxRatio: Infinity });
    assert.equal(fg.counts, null);
    assert.equal(fg.capacity, C);
    assert.equal(pg.capacity, C);
    assert.deepEqual(b.downloadInt(fg.sourceSlot), b.downloadInt(pg.sourceSlot));
    sameBits('fixed-capacity rows = host-capacity padded rows', fg.rows, pg.rows);
    const out = param([E * C, d]);
    sameBits('moeUnpermute of the fixed-capacity permutation', b.moeUnpermute(out.g, fg.sourceSlot, w.g), b.moeUnpermute(out.g, pg.sourceSlot, w.g));
    assert.deepEqual(b.downloadInt(stats.g), Int32Array.of(dropped, largest), 'nothing dropped; the largest count');

    // expert E − 1 over a capacity that fits every other expert, then every expert over capacity 2 (fewer rows than slots)
    const hot = hotRouting(N, K, E);
    const others = Math.max(...expertCounts(hot, E).slice(0, E - 1));
    assert.ok(others < N, `seed ${rng.seed}`);
    for (const [idx, capacity] of [[spread, C], [hot, others], [hot, 2]] as const) {
      const what = `capacity ${capacity}${idx === hot ? ', expert E − 1 on every token' : ''}`;
      const it = ints(idx, [N, K]);
      const perm = { g: b.moePermute(x.g, it.g, E, undefined, { capacity, stats: stats.g }), c: cpu.moePermute(x.c, it.c, E, undefined, { capacity, stats: stats.c }) };
      const want = fixedSourceSlot(idx, E, capacity);
      assert.deepEqual(b.downloadInt(perm.g.sourceSlot), want, what);
      assert.deepEqual(cpu.downloadInt(perm.c.sourceSlot), want, what);
      assert.equal(perm.c.counts, null);
      const kept = new Set(want.filter((slot) => slot >= 0));
      const lost = Array.from({ length: N * K }, (_, slot) => slot).filter((slot) => !kept.has(slot));
      if (capacity === others) assert.deepEqual(lost, Array.from({ length: N - others }, (_, i) => (others + i) * K), `${what}: the hot expert's latest tokens dropped`);
      dropped += lost.length;
      largest = Math.max(largest, ...expertCounts(idx, E));
      assert.deepEqual(b.downloadInt(stats.g), Int32Array.of(dropped, largest), `${what}: stats`);
      assert.deepEqual(cpu.downloadInt(stats.c), Int32Array.of(dropped, largest), `${what}: stats`);
      compare(`moePermute rows, ${what}`, perm.g.rows, perm.c.rows, 0);
      // the downstream ops on the kept slots; a dropped slot contributes nothing and gets no gradient
      const expertOut = param([E * capacity, d]), dRows = param([E * capacity, d]);
      compare(`moeUnpermute, ${what}`, b.moeUnpermute(expertOut.g, perm.g.sourceSlot, w.g), cpu.moeUnpermute(expertOut.c, perm.c.sourceSlot, w.c));
      const ug = b.moeUnpermuteBackward(dy.g, expertOut.g, perm.g.sourceSlot, w.g), uc = cpu.moeUnpermuteBackward(dy.c, expertOut.c, perm.c.sourceSlot, w.c);
      compare(`moeUnpermuteBackward dExpertOut, ${what}`, ug.dExpertOut, uc.dExpertOut);
      compare(`moeUnpermuteBackward dWeights, ${what}`, ug.dWeights, uc.dWeights);
      const dWeights = b.download(ug.dWeights);
      assert.deepEqual(lost.map((slot) => dWeights[slot]), lost.map(() => 0), `${what}: dropped slots' gating gradients`);
      compare(`moePermuteBackward, ${what}`, b.moePermuteBackward(dRows.g, perm.g.sourceSlot, N, N * K), cpu.moePermuteBackward(dRows.c, perm.c.sourceSlot, N, N * K));
    }
    // an expert index outside [0, E), which the device path cannot report, is counted as dropped
    const bad = Int32Array.from(spread);
    bad[5] = E;
    b.moePermute(x.g, b.uploadInt(bad, [N, K]), E, undefined, { capacity: C, stats: stats.g });
    assert.deepEqual(b.downloadInt(stats.g), Int32Array.of(dropped + 1, largest), 'an index outside [0, E)');
    assert.throws(() => b.moePermute(x.g, si.g, E, undefined, { capacity: 0, stats: stats.g }), /capacity 0/);
    assert.throws(() => b.moePermute(x.g, si.g, E, undefined, { capacity: C, stats: ints(Int32Array.of(0), [1]).g }), /stats/);
  });

  /** The host arithmetic of the bias update (SPEC §3; updateCorrectionBias before it moved to the device): FP64 mean, sums rounded to FP32. */
  const biasUpdateReference = (bias: Float32Array, load: Float32Array, gamma: number): Float32Array => {
    const mean = load.reduce((a, c) => a + c, 0) / load.length;
    return bias.map((v, i) => v + gamma * Math.sign(mean - load[i]!));
  };

  test(name('expertLoadInto against counting on the host, correctionBiasUpdate against the host arithmetic'), opts, () => {
    const b = cuda();
    const N = 50, K = 4, E = 12;
    const start = Float32Array.from({ length: E }, () => rng.int(1, 1000));
    const load = { c: cpu.upload(start, [E]), g: b.upload(start, [E]) };
    const want = Float64Array.from(start);
    for (let round = 0; round < 2; round++) {
      const idx = randomExpertChoices(rng, N, K, E);
      const it = ints(idx, [N, K]);
      b.expertLoadInto(it.g, E, load.g);
      cpu.expertLoadInto(it.c, E, load.c);
      expertCounts(idx, E).forEach((c, e) => (want[e]! += c));
      assert.deepEqual(b.download(load.g), Float32Array.from(want), `expertLoadInto, round ${round}`);
      assert.deepEqual(cpu.download(load.c), Float32Array.from(want), `CPU expertLoadInto, round ${round}`);
    }
    // loads in pairs around an integer mean, one pair on it: sign(0) = 0 there
    const mean = rng.int(20, 40);
    const tied = new Float32Array(E);
    for (let i = 0; i < E; i += 2) {
      const delta = i === 0 ? 0 : rng.int(0, 15);
      tied[i] = mean + delta;
      tied[i + 1] = mean - delta;
    }
    const bias0 = randomNormal(rng, E, 0.01);
    const bias = { c: cpu.upload(bias0, [E]), g: b.upload(bias0, [E]) };
    let wantBias = bias0;
    for (const [loads, gamma] of [[tied, 1e-3], [Float32Array.from(want), 1e-3], [tied, 0.37]] as const) {
      const l = { c: cpu.upload(loads, [E]), g: b.upload(loads, [E]) };
      const before = wantBias;
      b.correctionBiasUpdate(bias.g, l.g, gamma);
      cpu.correctionBiasUpdate(bias.c, l.c, gamma);
      wantBias = biasUpdateReference(wantBias, loads, gamma);
      const got = b.download(bias.g);
      assert.deepEqual(got, wantBias, `correctionBiasUpdate gamma ${gamma} (seed ${rng.seed})`);
      assert.deepEqual(cpu.download(bias.c), wantBias, `CPU correctionBiasUpdate gamma ${gamma} (seed ${rng.seed})`);
      if (loads === tied) assert.equal(got[0], before[0], 'a load on the mean leaves its bias');
    }
    assert.throws(() => b.expertLoadInto(ints(Int32Array.of(0, 1), [1, 2]).g, E + 1, load.g), /13 experts/);
  });

  test(name('fixed-capacity moePermute, expertLoadInto and correctionBiasUpdate replay in a graph, routing rewritten between replays'), opts, () => {
    const b = cuda();
    const N = 24, K = 2, E = 6, d = 16, C = 12, gamma = 1e-3;
    const x = act([N, d]);
    const indices = ints(randomExpertChoices(rng, N, K, E), [N, K]);
    const wd = Float32Array.from({ length: N * K }, () => rng.uniform());
    const w = { c: cpu.upload(wd, [N, K]), g: b.upload(wd, [N, K]) };
    const stats = ints(Int32Array.of(0, 0), [2]);
    const loadStart = Float32Array.from({ length: E }, () => rng.int(1, 100));
    const load = { c: cpu.upload(loadStart, [E]), g: b.upload(loadStart, [E]) };
    const bias = param([E], 0.01);
    const rowsOut = { c: cpu.zeros([E * C, d]), g: b.zeros([E * C, d], 'activation') }, yOut = { c: cpu.zeros([N, d]), g: b.zeros([N, d], 'activation') };
    // the step's MoE bookkeeping, its results copied into tensors that outlive it
    const step = (be: Backend, s: 'c' | 'g') => () => {
      const p = be.moePermute(x[s], indices[s], E, undefined, { capacity: C, stats: stats[s] });
      const y = be.moeUnpermute(p.rows, p.sourceSlot, w[s]);
      be.scaleInPlace(rowsOut[s], 0);
      be.addInPlace(rowsOut[s], p.rows);
      be.scaleInPlace(yOut[s], 0);
      be.addInPlace(yOut[s], y);
      be.expertLoadInto(indices[s], E, load[s]);
      be.correctionBiasUpdate(bias[s], load[s], gamma);
      for (const t of [p.rows, p.sourceSlot, y]) be.free(t);
    };
    const check = (what: string) => {
      compare(`${what}: rows`, rowsOut.g, rowsOut.c, 0);
      compare(`${what}: moeUnpermute`, yOut.g, yOut.c);
      assert.deepEqual(b.downloadInt(stats.g), cpu.downloadInt(stats.c), `${what}: stats`);
      compare(`${what}: expert load`, load.g, load.c, 0);
      compare(`${what}: correction bias`, bias.g, bias.c, 0);
    };
    step(b, 'g')();
    step(cpu, 'c')();
    check('eager');
    const graph = b.captureGraph(step(b, 'g'));
    for (const [what, routing] of [['replay', randomExpertChoices(rng, N, K, E)], ['replay, expert E − 1 over capacity', hotRouting(N, K, E)]] as const) {
      const xd = data(N * d);
      for (const s of ['c', 'g'] as const) {
        const be: Backend = s === 'c' ? cpu : b;
        be.copyFromHost(x[s], xd);
        be.copyFromHostInt(indices[s], routing);
        be.copyFromHostInt(stats[s], Int32Array.of(0, 0));
      }
      graph.replay();
      step(cpu, 'c')();
      check(what);
    }
    const [droppedInReplay, largestInReplay] = b.downloadInt(stats.g);
    assert.ok(droppedInReplay! > 0, 'the hot routing overflowed');
    assert.equal(largestInReplay, N, 'the hot expert took every token');
    graph.free();
  });

  test(name('grouped expert Linear layers on padded blocks'), opts, () => {
    const b = cuda();
    const E = 5, C = 6, inp = 24, out = 16;
    const x = act([E * C, inp]), dy = act([E * C, out]);
    const ws = Array.from({ length: E }, () => param([out, inp], 0.2));
    const wg = () => ws.map((w) => w.g), wc = () => ws.map((w) => w.c);
    compare('groupedLinear', b.groupedLinear(x.g, wg()), cpu.groupedLinear(x.c, wc()));
    compare('groupedLinearBackwardInput', b.groupedLinearBackwardInput(dy.g, wg()), cpu.groupedLinearBackwardInput(dy.c, wc()));
    const acc = param([E * C, inp]);
    b.groupedLinearBackwardInput(dy.g, wg(), acc.g, true);
    cpu.groupedLinearBackwardInput(dy.c, wc(), acc.c, true);
    compare('groupedLinearBackwardInput added into FP32 storage', acc.g, acc.c);
    const over = act([E * C, inp]);
    b.groupedLinearBackwardInput(dy.g, wg(), over.g);
    cpu.groupedLinearBackwardInput(dy.c, wc(), over.c);
    compare('groupedLinearBackwardInput written over activation storage', over.g, over.c);
    const grads = Array.from({ length: E }, () => param([out, inp], 0.1));
    b.groupedLinearBackwardWeight(x.g, dy.g, grads.map((g) => g.g));
    cpu.groupedLinearBackwardWeight(x.c, dy.c, grads.map((g) => g.c));
    grads.forEach((g, e) => compare(`groupedLinearBackwardWeight, expert ${e}`, g.g, g.c));
    // gradients at a constant distance (row blocks of one tensor): the batched GEMM adds into them directly
    const slab = param([E * out + 3, inp], 0.1);
    const inSlab = Array.from({ length: E }, (_, e) => ({ g: b.rows(slab.g, e * out + 1, out), c: cpu.rows(slab.c, e * out + 1, out) }));
    b.groupedLinearBackwardWeight(x.g, dy.g, inSlab.map((g) => g.g));
    cpu.groupedLinearBackwardWeight(x.c, dy.c, inSlab.map((g) => g.c));
    compare('groupedLinearBackwardWeight into evenly spaced gradients', slab.g, slab.c);
    // gradients in activation storage (BF16 in BF16 mode): a GEMM per expert
    const gradsAct = Array.from({ length: E }, () => act([out, inp], 0.1));
    b.groupedLinearBackwardWeight(x.g, dy.g, gradsAct.map((g) => g.g));
    cpu.groupedLinearBackwardWeight(x.c, dy.c, gradsAct.map((g) => g.c));
    gradsAct.forEach((g, e) => compare(`groupedLinearBackwardWeight into activation storage, expert ${e}`, g.g, g.c));
    // the weights change in place: their stacked BF16 copies follow, also when one is used alone
    b.scaleInPlaceMany(wg(), -0.5);
    cpu.scaleInPlaceMany(wc(), -0.5);
    compare('linear of one expert weight after the change', b.linear(x.g, ws[2]!.g), cpu.linear(x.c, ws[2]!.c));
    compare('groupedLinear after the change', b.groupedLinear(x.g, wg()), cpu.groupedLinear(x.c, wc()));
    const w3 = data(out * inp, 0.2);
    b.copyFromHost(ws[3]!.g, w3);
    cpu.copyFromHost(ws[3]!.c, w3);
    compare('groupedLinearBackwardInput after one weight changed', b.groupedLinearBackwardInput(dy.g, wg()), cpu.groupedLinearBackwardInput(dy.c, wc()));
    // the same weights in another order: stacked anew
    const rev = [...ws].reverse();
    compare('groupedLinear, experts in another order', b.groupedLinear(x.g, rev.map((w) => w.g)), cpu.groupedLinear(x.c, rev.map((w) => w.c)));
    compare('groupedLinear, the first order again', b.groupedLinear(x.g, wg()), cpu.groupedLinear(x.c, wc()));
    b.free(ws[1]!.g);
    const rest = [ws[0]!, ...ws.slice(2)];
    const x4 = act([4 * C, inp]);
    compare('groupedLinear after one weight was freed', b.groupedLinear(x4.g, rest.map((w) => w.g)), cpu.groupedLinear(x4.c, rest.map((w) => w.c)));
    assert.throws(() => b.groupedLinear(act([E * C + 1, inp]).g, rest.map((w) => w.g)), /do not split/);
    assert.throws(() => b.groupedLinear(x.g, [ws[0]!.g, param([out + 1, inp]).g]), /weights of shapes/);
  });

  test(name('rmsNorm, swiglu, embedding and column backward'), opts, () => {
    const b = cuda();
    const M = 29, d = L ? 7168 : 136;
    const x = act([M, d]), w = param([d]), dy = act([M, d]);
    compare('rmsNormBackwardInput', b.rmsNormBackwardInput(x.g, w.g, dy.g, 1e-6), cpu.rmsNormBackwardInput(x.c, w.c, dy.c, 1e-6));
    const dw = param([d]);
    b.rmsNormBackwardWeight(x.g, dy.g, 1e-6, dw.g);
    cpu.rmsNormBackwardWeight(x.c, dy.c, 1e-6, dw.c);
    compare('rmsNormBackwardWeight (accumulated)', dw.g, dw.c);
    const dwAct = act([d]); // a gradient kept in the activation dtype
    b.rmsNormBackwardWeight(x.g, dy.g, 1e-6, dwAct.g);
    cpu.rmsNormBackwardWeight(x.c, dy.c, 1e-6, dwAct.c);
    compare('rmsNormBackwardWeight into activation storage', dwAct.g, dwAct.c);
    const rows = L ? 5000 : 300; // more rows than one chunk of the column sums
    const xl = act([rows, 24]), dyl = act([rows, 24]), dwl = param([24]);
    b.rmsNormBackwardWeight(xl.g, dyl.g, 1e-6, dwl.g);
    cpu.rmsNormBackwardWeight(xl.c, dyl.c, 1e-6, dwl.c);
    compare(`rmsNormBackwardWeight over ${rows} rows`, dwl.g, dwl.c);

    const I = L ? 1408 : 72;
    const gate = act([17, I], 3), up = act([17, I]), dAct = param([17, I]);
    const sg = b.swigluBackward(gate.g, up.g, dAct.g), sc = cpu.swigluBackward(gate.c, up.c, dAct.c);
    compare('swigluBackward dGate', sg.dGate, sc.dGate);
    compare('swigluBackward dUp', sg.dUp, sc.dUp);

    const V = 50, n = 64;
    const ids = ints(Int32Array.from({ length: n }, () => rng.int(0, 9) * 5), [n]); // repeated ids: atomics collide
    const dE = act([n, 32]), dTable = param([V, 32]);
    b.embeddingBackward(ids.g, dE.g, dTable.g);
    cpu.embeddingBackward(ids.c, dE.c, dTable.c);
    compare('embeddingBackward', dTable.g, dTable.c);

    const dst = param([13, 40]), src = act([13, 12]);
    b.addToCols(dst.g, src.g, 25);
    cpu.addToCols(dst.c, src.c, 25);
    compare('addToCols', dst.g, dst.c);
    const dstAct = act([13, 40]), srcF32 = param([13, 12]);
    b.addToCols(dstAct.g, srcF32.g, 3);
    cpu.addToCols(dstAct.c, srcF32.c, 3);
    compare('addToCols into activation storage', dstAct.g, dstAct.c);
    const heads = act([9, 5, 16]);
    compare('sumHeads', b.sumHeads(heads.g), cpu.sumHeads(heads.c));
  });

  test(name('attention backward (full causal and a chunk at an offset)'), opts, () => {
    const b = cuda();
    const cases = L
      ? [{ B: 2, Tq: 128, Tk: 128, H: 4, Dk: 192, Dv: 128, qStart: 0 }, { B: 1, Tq: 33, Tk: 97, H: 3, Dk: 40, Dv: 24, qStart: 64 }]
      : [{ B: 2, Tq: 9, Tk: 9, H: 3, Dk: 24, Dv: 16, qStart: 0 }, { B: 1, Tq: 5, Tk: 40, H: 2, Dk: 40, Dv: 33, qStart: 35 }];
    for (const { B, Tq, Tk, H, Dk, Dv, qStart } of cases) {
      const scale = 1 / Math.sqrt(Dk);
      const q = act([B, Tq, H, Dk]), k = act([B, Tk, H, Dk]), v = act([B, Tk, H, Dv]), dOut = act([B, Tq, H, Dv]);
      const outD = cpu.download(cpu.attention(q.c, k.c, v.c, scale, qStart)) as Float32Array;
      const outV = mode === 'bf16' ? roundBf16(outD) : outD;
      const out = { c: cpu.upload(outV, [B, Tq, H, Dv]), g: b.upload(outV, [B, Tq, H, Dv], mode) };
      const gg = b.attentionBackward(q.g, k.g, v.g, out.g, dOut.g, scale, qStart);
      const gc = cpu.attentionBackward(q.c, k.c, v.c, out.c, dOut.c, scale, qStart);
      const what = `attentionBackward B=${B} Tq=${Tq} Tk=${Tk} qStart=${qStart}`;
      // BF16 mode runs FlashAttention-2's backward, whose tensor-core products take the
      // probabilities and dS rounded to BF16: elements reach ~2e-2 (measured on an H200 and in
      // test/backend/cuda/flash-attention.gpu.ts), the whole tensor stays at BF16's ~3e-3
      const rtol = mode === 'bf16' ? 4e-2 : tol;
      compare(`${what} dq`, gg.dq, gc.dq, rtol);
      compare(`${what} dk`, gg.dk, gc.dk, rtol);
      compare(`${what} dv`, gg.dv, gc.dv, rtol);
    }
  });

  test(name('MoE and router backward, sequence balance loss'), opts, () => {
    const b = cuda();
    const N = 48, E = 16, K = 4, d = 40;
    const cfg: RouterConfig = { topK: K, nGroup: 4, topkGroup: 2, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 2.5 };
    const { logits, rc, rg } = routeCase(N, E, cfg);
    const x = act([N, d]);
    const pc = cpu.moePermute(x.c, rc.indices, E);
    const slots = { c: pc.sourceSlot, g: b.uploadInt(cpu.downloadInt(pc.sourceSlot), [N * K]) };
    const dy = act([N, d]), expertOut = param([N * K, d]);
    const ug = b.moeUnpermuteBackward(dy.g, expertOut.g, slots.g, rg.weights), uc = cpu.moeUnpermuteBackward(dy.c, expertOut.c, slots.c, rc.weights);
    compare('moeUnpermuteBackward dExpertOut', ug.dExpertOut, uc.dExpertOut);
    compare('moeUnpermuteBackward dWeights', ug.dWeights, uc.dWeights);
    const dRows = param([N * K, d]);
    compare('moePermuteBackward', b.moePermuteBackward(dRows.g, slots.g, N), cpu.moePermuteBackward(dRows.c, slots.c, N));
    // a padded permutation: zero gradient for padding rows, which the permutation's backward skips
    const ppc = cpu.moePermute(x.c, rc.indices, E, { blockRows: 4, maxRatio: Infinity });
    const R = ppc.rows.shape[0];
    assert.ok(ppc.capacity !== null && R > N * K);
    const padSlots = { c: ppc.sourceSlot, g: b.uploadInt(cpu.downloadInt(ppc.sourceSlot), [R]) };
    const padOut = param([R, d]);
    const pug = b.moeUnpermuteBackward(dy.g, padOut.g, padSlots.g, rg.weights), puc = cpu.moeUnpermuteBackward(dy.c, padOut.c, padSlots.c, rc.weights);
    compare('moeUnpermuteBackward dExpertOut, padded', pug.dExpertOut, puc.dExpertOut);
    compare('moeUnpermuteBackward dWeights, padded', pug.dWeights, puc.dWeights);
    const padRows = param([R, d]);
    compare('moePermuteBackward, padded', b.moePermuteBackward(padRows.g, padSlots.g, N, N * K), cpu.moePermuteBackward(padRows.c, padSlots.c, N, N * K));

    const dW = param([N, K]);
    const seq = 16, batch = N / seq;
    // into an accumulator on the device (a view, as a step's sums are): the calls add to what it held
    const start = data(2);
    const acc = { g: b.zeros([2], 'f32'), c: cpu.zeros([2], 'f32') };
    b.copyFromHost(acc.g, start);
    cpu.copyFromHost(acc.c, start);
    const sum = { g: b.rows(acc.g, 1, 1), c: cpu.rows(acc.c, 1, 1) };
    const bg = b.sequenceBalanceLossInto(rg, batch, seq, 0.01, sum.g), bc = cpu.sequenceBalanceLossInto(rc, batch, seq, 0.01, sum.c);
    compare('sequenceBalanceLossInto dScores', bg, bc, 1e-5);
    compare('sequenceBalanceLossInto sum', acc.g, acc.c, 1e-6);
    // sequences longer than one block's share of tokens (64), the last block partly filled
    const long = routeCase(2 * 150, E, cfg);
    compare('sequenceBalanceLossInto dScores, 2 × 150 tokens', b.sequenceBalanceLossInto(long.rg, 2, 150, 0.01, sum.g),
      cpu.sequenceBalanceLossInto(long.rc, 2, 150, 0.01, sum.c), 1e-5);
    assert.equal(b.download(acc.g)[0], start[0], 'the element before the view is left alone');
    compare('sequenceBalanceLossInto: the sum after two calls, against the CPU', acc.g, acc.c, 1e-6);
    compare('routerBackward (sigmoid, normalised, with dScores)', b.routerBackward(logits.g, rg, dW.g, bg, cfg), cpu.routerBackward(logits.c, rc, dW.c, bc, cfg));
    for (const variant of [{ scoring: 'softmax' as const, normTopkProb: false }, { scoring: 'sigmoid' as const, normTopkProb: false }]) {
      const c2: RouterConfig = { ...cfg, ...variant, groupLimited: false, groupScoreTop2: false };
      const r = routeCase(N, E, c2);
      compare(`routerBackward (${variant.scoring}, ${variant.normTopkProb ? '' : 'not '}normalised, no dScores)`,
        b.routerBackward(r.logits.g, r.rg, dW.g, null, c2), cpu.routerBackward(r.logits.c, r.rc, dW.c, null, c2));
    }
  });

  test(name('cross-entropy, sum of squares, scale, AdamW'), opts, () => {
    const b = cuda();
    const M = 37, V = L ? 32000 : 500;
    const logits = act([M, V], 3);
    const t = Int32Array.from({ length: M }, (_, i) => (i % 7 === 3 ? -1 : rng.int(0, V - 1)));
    const targets = ints(t, [M]);
    // into accumulators on the device (a view, as a step's sums are): two calls add to what they held
    const start = data(3);
    const acc = { g: b.zeros([3], 'f32'), c: cpu.zeros([3], 'f32') };
    b.copyFromHost(acc.g, start);
    cpu.copyFromHost(acc.c, start);
    const sums = { g: b.rows(acc.g, 1, 2), c: cpu.rows(acc.c, 1, 2) };
    compare('crossEntropyInto dLogits', b.crossEntropyInto(logits.g, targets.g, 0.37, sums.g), cpu.crossEntropyInto(logits.c, targets.c, 0.37, sums.c));
    const counted = t.filter((x) => x >= 0).length;
    assert.equal(b.download(acc.g)[2], Math.fround(start[2]! + counted), 'the count of rows with a target');
    const logits2 = act([M, V], 3);
    compare('crossEntropyInto dLogits, second call', b.crossEntropyInto(logits2.g, targets.g, 0.37, sums.g), cpu.crossEntropyInto(logits2.c, targets.c, 0.37, sums.c));
    const summed = b.download(acc.g);
    assert.equal(summed[0], start[0], 'the element before the view is left alone');
    // each call adds its count once, rounded to FP32
    assert.equal(summed[2], Math.fround(Math.fround(start[2]! + counted) + counted));
    compare('crossEntropyInto sums against the CPU', acc.g, acc.c, 1e-5);
    // a target outside the vocabulary cannot be reported from the device: it makes the loss sum NaN
    // (callers check ids on the host: checkTokenIds); the CPU throws
    const bad = Int32Array.from(t);
    bad[5] = V;
    b.free(b.crossEntropyInto(logits.g, b.uploadInt(bad, [M]), 1, sums.g));
    assert.ok(Number.isNaN(b.download(acc.g)[1]), 'NaN loss sum after a target outside the vocabulary');
    assert.throws(() => cpu.crossEntropyInto(logits.c, cpu.uploadInt(bad, [M]), 1, sums.c), /outside the vocabulary/);

    const big = param([L ? 3_000_017 : 100_003]);
    near('sumSquares (FP32 storage)', b.sumSquares(big.g), cpu.sumSquares(big.c), 1e-9);
    const small = act([1001]);
    near('sumSquares (activation storage)', b.sumSquares(small.g), cpu.sumSquares(small.c), 1e-9);
    b.scaleInPlace(big.g, -0.3);
    cpu.scaleInPlace(big.c, -0.3);
    compare('scaleInPlace', big.g, big.c, 1e-6);
    b.scaleInPlace(small.g, 1.5);
    cpu.scaleInPlace(small.c, 1.5);
    compare('scaleInPlace of activation storage', small.g, small.c, mode === 'f32' ? 1e-6 : tol);
    // many tensors at once: several chunks (big), both storages, a view, an empty tensor
    const third = param([7, 3]), empty = { g: b.zeros([0]), c: cpu.zeros([0]) };
    const many = { g: [big.g, small.g, third.g, b.rows(big.g, 5, 0), empty.g, b.rows(third.g, 0, 1)], c: [big.c, small.c, third.c, cpu.rows(big.c, 5, 0), empty.c, cpu.rows(third.c, 0, 1)] };
    // the same sum as one sumSquares per tensor (FP64 both: up to the order of additions); against
    // the CPU, scaleInPlace above rounded alpha to FP32 (and its results to BF16 in BF16 storage)
    near('sumSquaresMany (mixed storage, views, an empty tensor)', b.sumSquaresMany(many.g), many.g.reduce((s, t) => s + b.sumSquares(t), 0), 1e-12);
    near('sumSquaresMany against the CPU', b.sumSquaresMany(many.g), cpu.sumSquaresMany(many.c), mode === 'f32' ? 1e-6 : tol);
    assert.equal(b.sumSquaresMany([]), 0);
    // the norm and its clipping coefficient on the device: sqrt of the very sum sumSquaresMany
    // returns, and maxNorm / norm in FP64, each rounded to FP32; skip 0 for a finite norm
    const norm = Math.sqrt(b.sumSquaresMany(many.g));
    const out = { g: b.zeros([2], 'f32'), c: cpu.zeros([2], 'f32') }, skip = { g: b.uploadInt(Int32Array.of(7), [1]), c: cpu.uploadInt(Int32Array.of(7), [1]) };
    for (const maxNorm of [norm / 3, 3 * norm, 0]) {
      b.copyFromHost(out.g, data(2));
      b.gradNormClip(many.g, maxNorm, out.g, skip.g);
      cpu.gradNormClip(many.c, maxNorm, out.c, skip.c);
      const clipped = maxNorm > 0 && norm > maxNorm;
      assert.deepEqual(b.download(out.g), Float32Array.of(norm, clipped ? maxNorm / norm : 1), `${mode} gradNormClip to ${maxNorm} (clipped: ${clipped})`);
      assert.deepEqual([b.downloadInt(skip.g)[0], cpu.downloadInt(skip.c)[0]], [0, 0], 'skip 0 for a finite norm');
      compare(`gradNormClip to ${maxNorm} against the CPU`, out.g, out.c, mode === 'f32' ? 1e-6 : tol);
    }
    // a NaN or infinite gradient: skip set on both backends
    for (const poison of [NaN, Infinity]) {
      const x = data(40);
      x[17] = poison;
      b.gradNormClip([third.g, b.upload(x, [40])], 1, out.g, skip.g);
      cpu.gradNormClip([third.c, cpu.upload(x, [40])], 1, out.c, skip.c);
      assert.deepEqual([b.downloadInt(skip.g)[0], cpu.downloadInt(skip.c)[0]], [1, 1], `skip set for a norm of ${b.download(out.g)[0]}`);
    }
    b.gradNormClip([], 1, out.g, null);
    assert.deepEqual(b.download(out.g), Float32Array.of(0, 1), 'no gradients: norm 0, no clipping');
    b.scaleInPlaceMany([big.g, small.g, third.g, empty.g], 0.75);
    cpu.scaleInPlaceMany([big.c, small.c, third.c, empty.c], 0.75);
    compare('scaleInPlaceMany (FP32 storage)', big.g, big.c, 1e-6);
    compare('scaleInPlaceMany (activation storage)', small.g, small.c, mode === 'f32' ? 1e-6 : tol);
    compare('scaleInPlaceMany (a small tensor)', third.g, third.c, 1e-6);
    assert.throws(() => b.scaleInPlaceMany([third.g, b.rows(third.g, 2, 3)], 2), /overlap/);
    // zeroing writes zeros without reading: NaN and Inf are cleared too (gradients before a step)
    const poisoned = (n: number) => data(n).map((e, i) => (i % 3 === 0 ? NaN : i % 3 === 1 ? -Infinity : e));
    const zeroed = [big, small, third];
    for (const t of zeroed) {
      b.copyFromHost(t.g, poisoned(count(t.g.shape)));
      cpu.copyFromHost(t.c, poisoned(count(t.c.shape)));
    }
    b.scaleInPlaceMany(zeroed.map((t) => t.g), 0);
    cpu.scaleInPlaceMany(zeroed.map((t) => t.c), 0);
    for (const t of zeroed) {
      assert.deepEqual(b.download(t.g), new Float32Array(count(t.g.shape)), `${mode} scaleInPlaceMany by 0 of ${t.g.dtype} [${t.g.shape}]`);
      assert.deepEqual(cpu.download(t.c), new Float32Array(count(t.c.shape)), 'the CPU zeroes alike');
      b.copyFromHost(t.g, poisoned(count(t.g.shape)));
      b.scaleInPlace(t.g, 0);
      assert.deepEqual(b.download(t.g), new Float32Array(count(t.g.shape)), `${mode} scaleInPlace by 0 of ${t.g.dtype} [${t.g.shape}]`);
    }

    for (const momentsBf16 of [false, true]) {
      const shape = [L ? 1024 : 64, 33];
      const p = param(shape, 0.02), m = { c: cpu.zeros(shape), g: b.zeros(shape) }, v = { c: cpu.zeros(shape), g: b.zeros(shape) };
      for (let step = 1; step <= 3; step++) {
        const g = param(shape, 0.01);
        const h: AdamWHyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16 };
        b.adamw(p.g, g.g, m.g, v.g, h, 0.1, adamwScalars(b, h, 1e-3 * step, step));
        cpu.adamw(p.c, g.c, m.c, v.c, h, 0.1, adamwScalars(cpu, h, 1e-3 * step, step));
      }
      // BF16 moments: a moment within an FP32 rounding of a BF16 boundary may round the other way
      // than the CPU's FP64 value (one BF16 step, 2^-8), which moves that parameter's later updates
      // by up to ~0.4% of lr.
      const what = `adamw${momentsBf16 ? ' (BF16 moments)' : ''}`;
      compare(`${what} param`, p.g, p.c, momentsBf16 ? 5e-3 : 1e-5);
      compare(`${what} m`, m.g, m.c, momentsBf16 ? 2e-2 : 1e-5);
      compare(`${what} v`, v.g, v.c, momentsBf16 ? 2e-2 : 1e-5);
    }
    if (mode === 'bf16') {
      const p = b.upload(new Float32Array(4), [4], 'bf16'), z = b.zeros([4]);
      const h = { beta1: 0.9, beta2: 0.9, eps: 1e-8, momentsBf16: false };
      assert.throws(() => b.adamw(p, z, z, z, h, 0, adamwScalars(b, h, 1, 1)), /must be FP32/);
    }
  });

  test(name('adamwMany equals adamw per tensor bit for bit (FP32 and BF16 moments, mixed decays, views, a BF16 gradient)'), opts, () => {
    const b = cuda();
    // A tensor of two chunks (ADAMW_CHUNK = 2^15 elements; odd: a scalar tail), matrices, vectors,
    // an empty one, and views at an odd offset (the element-wise loop); decays as the optimizer
    // gives them (matrices) and others.
    const shapes = [[L ? 1024 : 257, L ? 257 : 129], [64, 33], [33], [5], [0], [2, 7]];
    const decays = [0.1, 0.1, 0, 0.05, 0.1, 0.02];
    const VIEW = shapes.length - 1;
    for (const momentsBf16 of [false, true]) {
      const init = shapes.map((s) => {
        const n = count(s);
        // moments of some history: v ≥ m², so that an update stays within a few lr (as in training)
        const m = data(n, 0.01), w = data(n, 0.01);
        return { p: data(n, 0.02), m, v: m.map((e, i) => e * e + w[i]! * w[i]!) };
      });
      type Group = { p: Tensor[]; m: Tensor[]; v: Tensor[] };
      // FP32 storage on both backends; the last tensor a view at an odd offset on the CUDA side
      const make = (be: Backend, viaView: boolean): Group => {
        const out: Group = { p: [], m: [], v: [] };
        init.forEach((d, i) => {
          for (const k of ['p', 'm', 'v'] as const) {
            let t: Tensor;
            if (i === VIEW && viaView) {
              const [r, c] = shapes[i] as [number, number];
              const whole = be.upload(new Float32Array((r + 1) * c), [r + 1, c]);
              t = be.rows(whole, 1, r);
            } else {
              t = be.upload(new Float32Array(count(shapes[i]!)), shapes[i]!);
            }
            be.copyFromHost(t, d[k]);
            out[k].push(t);
          }
        });
        return out;
      };
      const one = make(b, false), many = make(b, true), ref = make(cpu, false);
      // in BF16 mode the BF16 copies of the weights exist before the step: the step must mark them stale
      const x = act([5, 33]);
      if (mode === 'bf16') b.free(b.linear(x.g, many.p[1]!));
      for (let step = 1; step <= 3; step++) {
        // gradients shared by both CUDA paths (read only); in BF16 mode one is stored in BF16
        const gd = shapes.map((s) => data(count(s), 0.01));
        const g = gd.map((d, i) => (mode === 'bf16' && i === 1 ? b.upload(d, shapes[i]!, 'bf16') : b.upload(d, shapes[i]!)));
        const gc = gd.map((d, i) => cpu.upload(d, shapes[i]!));
        const h = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16 };
        const s = adamwScalars(b, h, 1e-3 * step, step, 0.8);
        one.p.forEach((_, i) => b.adamw(one.p[i]!, g[i]!, one.m[i]!, one.v[i]!, h, decays[i]!, s));
        b.adamwMany(many.p, g, many.m, many.v, h, decays, s);
        cpu.adamwMany(ref.p, gc, ref.m, ref.v, h, decays, adamwScalars(cpu, h, 1e-3 * step, step, 0.8));
        g.forEach((t) => b.free(t));
      }
      const what = `adamwMany${momentsBf16 ? ' (BF16 moments)' : ''}`;
      shapes.forEach((s, i) => {
        sameBits(`${what} param ${i} [${s}]`, many.p[i]!, one.p[i]!);
        sameBits(`${what} m ${i} [${s}]`, many.m[i]!, one.m[i]!);
        sameBits(`${what} v ${i} [${s}]`, many.v[i]!, one.v[i]!);
        if (count(s) === 0) return;
        // BF16 moments: a moment that rounds to the other BF16 neighbour than the CPU's FP64 value
        // stays one BF16 step (2^-8) off for the later steps too, so each update may be off by
        // 2^-8 of up to ~2.2·lr (v ≥ m² bounds m̂/√v̂ by √c2/c1 ≈ 2.2 at step 1): with Σ lr = 6e-3
        // over the three steps, up to ~2.6e-3 against the 0.02 scale of the parameters, ~4e-3 with v's
        compare(`${what} param ${i} against the CPU`, many.p[i]!, ref.p[i]!, momentsBf16 ? 1e-2 : 1e-5);
        compare(`${what} m ${i} against the CPU`, many.m[i]!, ref.m[i]!, momentsBf16 ? 2e-2 : 1e-5);
      });
      // the weight's BF16 copy was refreshed: the same product as from the per-tensor update
      sameBits(`${what}: linear after the step`, b.linear(x.g, many.p[1]!), b.linear(x.g, one.p[1]!));
    }
    const p = b.upload(new Float32Array(6), [2, 3]), z = () => b.zeros([2, 3]);
    const h = { beta1: 0.9, beta2: 0.9, eps: 1e-8, momentsBf16: false };
    const s = adamwScalars(b, h, 1, 1);
    assert.throws(() => b.adamwMany([p], [z()], [z()], [z(), z()], h, [0], s), /1 params, 1 grads, 1 m, 2 v and 1 weight decays/);
    assert.throws(() => b.adamwMany([p], [z()], [z()], [b.zeros([3, 2])], h, [0], s), /tensor 0: param \[2, 3\]/);
    const m0 = z();
    assert.throws(() => b.adamwMany([p, b.rows(p, 1, 1)], [z(), b.zeros([1, 3])], [m0, b.zeros([1, 3])], [z(), b.zeros([1, 3])], h, [0, 0], s), /param 0 and param 1 overlap/);
    assert.throws(() => b.adamwMany([p], [m0], [m0], [z()], h, [0], s), /overlap/);
    // the scalars: FP32 lr and bias corrections, an FP32 gradient scale, an i32 skip
    assert.throws(() => b.adamwMany([p], [z()], [z()], [z()], h, [0], { ...s, hyper: b.zeros([2], 'f32') }), /hyper: expected 3 FP32 number/);
    if (mode === 'bf16') assert.throws(() => b.adamwMany([p], [z()], [z()], [z()], h, [0], { ...s, hyper: b.zeros([3], 'bf16') }), /hyper: expected 3 FP32 number/);
    assert.throws(() => b.adamwMany([p], [z()], [z()], [z()], h, [0], { ...s, skip: b.zeros([1], 'f32') }), /skip: expected an i32/);
    // a gradient may be shared (read only)
    const g0 = z();
    b.adamwMany([p, z()], [g0, g0], [z(), z()], [z(), z()], h, [0, 0], s);
    b.adamwMany([], [], [], [], h, [], s);
    if (mode === 'bf16') {
      const pb = b.upload(new Float32Array(6), [2, 3], 'bf16');
      assert.throws(() => b.adamwMany([pb], [z()], [z()], [z()], h, [0], s), /tensor 0: param must be FP32/);
    }
  });

  test(name('AdamW with a gradient scale, BF16-stored moments and the BF16 weight copies written beside the weights: the bits of separate passes'), opts, () => {
    const b = cuda();
    // Weights as training has them, their BF16 copies (BF16 mode) made before the first step:
    // experts read through one stacked copy (groupedLinear), a dense weight, one updated through a
    // view of its last rows (odd offset: the element-wise loop), one by adamw alone; odd sizes.
    const E = 3, inp = 33, gradScale = 0.37;
    const shapes = [[16, inp], [16, inp], [16, inp], [16, inp], [4, inp], [5, 7]];
    const VIEWED = 4, SINGLE = 5;
    const init = shapes.map((s) => data(count(s), 0.1));
    const x = act([E * 4, inp]), xs = act([4, 7]);
    /** The products that read the weights through their BF16 copies in BF16 mode. */
    const products = (w: Tensor[]) => [b.groupedLinear(x.g, w.slice(0, E)), b.linear(x.g, w[3]!), b.linear(x.g, w[VIEWED]!), b.linear(xs.g, w[SINGLE]!)];
    /** The weights, the tensors AdamW updates (rows 1..3 of weight VIEWED) and their moments, of one dtype. */
    const setup = (moments: 'bf16' | 'f32') => {
      const w = init.map((d, i) => b.upload(d, shapes[i]!));
      const zeros = () => shapes.map((s, i) => (i === VIEWED ? b.rows(b.zeros(s, moments), 1, 3) : b.zeros(s, moments)));
      return { w, params: w.map((t, i) => (i === VIEWED ? b.rows(t, 1, 3) : t)), m: zeros(), v: zeros() };
    };
    // fused: the scale inside AdamW, BF16 moments, copies written by AdamW; separate: the gradients
    // scaled first, FP32 moments rounded to BF16, weights without copies (cast when used below)
    const fused = setup('bf16'), separate = setup('f32');
    products(fused.w).forEach((t) => b.free(t));
    const decays = shapes.map(() => 0.1);
    const h: AdamWHyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16: true };
    const update = (o: ReturnType<typeof setup>, g: Tensor[], s: AdamWScalars) => {
      b.adamwMany(o.params.slice(0, SINGLE), g.slice(0, SINGLE), o.m.slice(0, SINGLE), o.v.slice(0, SINGLE), h, decays.slice(0, SINGLE), s);
      b.adamw(o.params[SINGLE]!, g[SINGLE]!, o.m[SINGLE]!, o.v[SINGLE]!, h, decays[SINGLE]!, s);
    };
    for (let step = 1; step <= 3; step++) {
      const gd = fused.params.map((p) => data(count(p.shape), 0.01));
      const grads = () => gd.map((d, i) => b.upload(d, fused.params[i]!.shape));
      const gf = grads(), gs = grads();
      update(fused, gf, adamwScalars(b, h, 1e-2, step, gradScale));
      b.scaleInPlaceMany(gs, gradScale);
      update(separate, gs, adamwScalars(b, h, 1e-2, step));
      shapes.forEach((s, i) => {
        sameBits(`step ${step}: weight ${i} [${s}]`, fused.w[i]!, separate.w[i]!);
        sameBits(`step ${step}: BF16-stored m ${i}`, fused.m[i]!, separate.m[i]!);
        sameBits(`step ${step}: BF16-stored v ${i}`, fused.v[i]!, separate.v[i]!);
        assert.deepEqual(b.download(gf[i]!), gd[i], `step ${step}: gradient ${i} read, not written`);
      });
      if (mode === 'bf16') {
        for (const w of fused.w) assert.ok((w as CudaTensor).bf16Copy !== 0 && !(w as CudaTensor).bf16Stale, `step ${step}: the copy is up to date, no cast left`);
      }
      // the products through the copies AdamW wrote: the bits of casting the new weights
      const fresh = separate.w.map((w) => b.upload(b.download(w), w.shape));
      const want = products(fresh), got = products(fused.w);
      got.forEach((t, i) => sameBits(`step ${step}: product ${i} after the step`, t, want[i]!));
      for (const t of [...fresh, ...want, ...got, ...gf, ...gs]) b.free(t);
    }
    const p = b.upload(new Float32Array(6), [2, 3]);
    const fp32 = { ...h, momentsBf16: false }, s = adamwScalars(b, h, 1, 1);
    assert.throws(() => b.adamw(p, b.zeros([2, 3]), b.zeros([2, 3], 'bf16'), b.zeros([2, 3], 'bf16'), fp32, 0, s), /BF16 moments need momentsBf16/);
    assert.throws(() => b.adamw(p, b.zeros([2, 3]), b.zeros([2, 3], 'bf16'), b.zeros([2, 3]), h, 0, s), /m is bf16 but v f32/);
  });

  test(name('gradNormClip then adamwMany on their device scalars: captured in a graph, replays with new gradients and hyperparameters match eager steps; skip changes nothing'), opts, () => {
    const b = cuda();
    const shapes = [[65, 33], [33], [7, 5]];
    const decays = [0.1, 0, 0.1];
    const MAX_NORM = 1;
    const h: AdamWHyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16: mode === 'bf16' };
    const init = shapes.map((s) => {
      const m = data(count(s), 0.01), w = data(count(s), 0.01), v = m.map((e, i) => e * e + w[i]! * w[i]!);
      return { p: data(count(s), 0.1), m, v: mode === 'bf16' ? roundBf16(v) : v };
    });
    /** Weights, moments (BF16 in BF16 mode), gradients and a step's device scalars on `be`, from the same values each time. */
    const makeReplica = (be: Backend) => {
      const moments = (k: 'm' | 'v') => init.map((d, i) => {
        const t = be.zeros(shapes[i]!, mode === 'bf16' ? 'bf16' : 'f32');
        be.copyFromHost(t, d[k]);
        return t;
      });
      return {
        be, p: init.map((d, i) => be.upload(d.p, shapes[i]!)), m: moments('m'), v: moments('v'), g: shapes.map((s) => be.zeros(s)),
        out: be.zeros([2], 'f32'), skip: be.uploadInt(Int32Array.of(0), [1]), hyper: be.zeros([3], 'f32'),
      };
    };
    type Replica = ReturnType<typeof makeReplica>;
    const step = (o: Replica) => () => {
      o.be.gradNormClip(o.g, MAX_NORM, o.out, o.skip);
      o.be.adamwMany(o.p, o.g, o.m, o.v, h, decays, { hyper: o.hyper, gradScale: o.be.rows(o.out, 1, 1), skip: o.skip });
    };
    /** New gradients (of about 47·scale in norm; `poison`: one NaN) and step t's hyperparameters, written into every set. */
    const feed = (replicas: Replica[], t: number, scale: number, poison = false) => {
      const gd = shapes.map((s) => data(count(s), scale));
      if (poison) gd[1]![3] = NaN;
      const hyper = adamwHyperValues(2e-3 * t, h, t);
      for (const o of replicas) {
        o.g.forEach((g, i) => o.be.copyFromHost(g, gd[i]!));
        o.be.copyFromHost(o.hyper, hyper);
      }
    };
    const state = (o: Replica) => [...o.p, ...o.m, ...o.v];
    const same = (what: string, got: Replica, want: Replica) => {
      state(got).forEach((t, i) => sameBits(`${what}: state tensor ${i}`, t, state(want)[i]!));
      sameBits(`${what}: norm and clipping coefficient`, got.out, want.out);
      assert.deepEqual(b.downloadInt(got.skip), b.downloadInt(want.skip), `${what}: skip`);
    };

    // eager and captured on the CUDA backend, and the CPU backend's steps (on BF16-rounded moments in BF16 mode)
    const eager = makeReplica(b), captured = makeReplica(b), ref = makeReplica(cpu);
    // in BF16 mode the first weight's BF16 copy exists before the steps: eager ones keep it up to
    // date, replays of the captured one mark it stale (refreshed at its next use)
    const x = act([3, 33]);
    const product = (o: Replica) => b.linear(x.g, o.p[0]!);
    for (const o of [eager, captured]) b.free(product(o));
    assert.throws(() => b.captureGraph(step(captured)), /run the captured work once before/, 'the multi-tensor tables come from an eager run');
    feed([eager, captured, ref], 1, 0.1);
    for (const o of [eager, captured, ref]) step(o)();
    const graph = b.captureGraph(step(captured));
    const coefficients: number[] = [];
    for (const [t, scale] of [[2, 0.1], [3, 0.005]] as const) {
      feed([eager, captured, ref], t, scale);
      step(eager)();
      graph.replay();
      step(ref)();
      same(`replay at step ${t}`, captured, eager);
      const [pc, pe] = [product(captured), product(eager)];
      sameBits(`replay at step ${t}: the product through the weight's copy`, pc, pe);
      b.free(pc);
      b.free(pe);
      coefficients.push(b.download(captured.out)[1]!);
    }
    assert.ok(coefficients[0]! < 1 && coefficients[1] === 1, `clipped at step 2, not at step 3: ${coefficients}`);
    compare('norm and clipping coefficient against the CPU', eager.out, ref.out, mode === 'f32' ? 1e-6 : tol);
    // BF16 moments: one rounded to the other BF16 neighbour than the CPU's moves later updates by ~2^-8 of lr (see adamwMany's test)
    state(eager).forEach((t, i) => compare(`state tensor ${i} against the CPU`, t, state(ref)[i]!, mode === 'f32' ? 1e-5 : 2e-2));

    // a NaN gradient: the norm is NaN, skip is set, and neither a replay nor an eager step changes
    // anything, the weight's BF16 copy (BF16 mode) included
    const before = state(eager).map((t) => b.download(t));
    const productBefore = product(eager);
    feed([eager, captured], 4, 0.1, true);
    graph.replay();
    step(eager)();
    assert.deepEqual([b.downloadInt(eager.skip)[0], b.downloadInt(captured.skip)[0]], [1, 1], 'skip set');
    assert.ok(Number.isNaN(b.download(eager.out)[0]), 'NaN norm');
    state(eager).forEach((t, i) => assert.deepEqual(b.download(t), before[i], `skipped step: state tensor ${i} unchanged`));
    same('skipped step', captured, eager);
    sameBits('skipped step: the product through the weight\'s copy', product(eager), productBefore);
    graph.free();
  });

  test(name('a checkpoint loads into BF16 moments exactly, which stay BF16'), opts, () => withTempDir('dsv3-moments-', (dir) => {
    const b = cuda();
    const values = roundBf16(data(70, 0.01));
    const state = { step: 0, m: new Map([['w', b.zeros([7, 10], 'bf16')]]), v: new Map([['w', b.zeros([7, 10], 'bf16')]]) };
    const saved = (k: string) => ({ name: `optimizer.${k}.w`, dtype: 'BF16' as const, shape: [7, 10], data: encodeFromFloat('BF16', values) });
    writeSafetensors(join(dir, TRAINER_STATE_FILE), [saved('m'), saved('v')], { trainer: JSON.stringify({ step: 3 }), optimizer_step: '3' });
    loadTrainerState(dir, b, state);
    assert.equal(state.step, 3);
    for (const t of [state.m.get('w')!, state.v.get('w')!]) {
      assert.equal(t.dtype, 'bf16');
      assert.deepEqual(b.download(t), values);
    }
  }));

  test(name('the class implements every Backend op'), opts, () => {
    const b: Backend = cuda();
    const ops: (keyof Backend)[] = ['upload', 'uploadInt', 'download', 'downloadInt', 'zeros', 'rows', 'reshape', 'free', 'copyFromHost', 'markAllocations',
      'releaseAllocations', 'gemm', 'linear', 'add', 'addInPlace', 'rmsNorm', 'swiglu', 'sliceCols', 'concatHeads', 'embedding', 'rope', 'attention',
      'mlaLatentAttention', 'writeCache', 'routerTopK', 'moePermute', 'moeUnpermute', 'rmsNormBackwardInput', 'rmsNormBackwardWeight', 'swigluBackward',
      'embeddingBackward', 'addToCols', 'sumHeads', 'attentionBackward', 'moeUnpermuteBackward', 'moePermuteBackward', 'routerBackward',
      'sumSquares', 'sumSquaresMany', 'scaleInPlace', 'scaleInPlaceMany', 'adamw', 'adamwMany', 'groupedLinear',
      'groupedLinearBackwardInput', 'groupedLinearBackwardWeight', 'copyFromHostInt', 'moeExpertsDirect', 'captureGraph', 'expertLoadInto', 'correctionBiasUpdate',
      'sequenceBalanceLossInto', 'crossEntropyInto', 'gradNormClip'];
    for (const op of ops) assert.equal(typeof b[op], 'function', op);
    assert.equal(b.floatDType, mode);
  });
}
