// The CUDA backend against the CPU backend (DESIGN §6) on the same random inputs: every
// forward op, with BF16 tolerances (~1e-2 relative) and exact indices. The inputs are rounded
// to BF16 first so both backends start from identical values.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Backend, RouterConfig } from '../../../src/backend/backend.js';
import type { Tensor } from '../../../src/tensor/tensor.js';
import { CudaBackend, type CudaForwardOps } from '../../../src/backend/cuda/cuda-backend.js';
import { openGpu, seededRandom, randomNormal, roundBf16, assertClose } from './gpu-helpers.js';

const gpu = openGpu();
let cpu: Backend | undefined;
let skip: string | false = gpu.skip;
if (!skip) {
  try {
    const { CpuBackend } = await import('../../../src/backend/cpu/cpu-backend.js');
    cpu = new CpuBackend('f32');
  } catch (e) {
    skip = `the CPU backend does not load: ${(e as Error).message}`;
  }
}
const cuda = gpu.ctx && !skip ? new CudaBackend(gpu.ctx) : undefined;
after(() => (cuda ? cuda.dispose() : gpu.ctx?.dispose()));

const rng = seededRandom();
const BF16 = 1e-2;

/** The same BF16-exact values on both backends. */
function both(shape: number[], scale = 1): { c: Tensor; g: Tensor; data: Float32Array } {
  const data = roundBf16(randomNormal(rng, shape.reduce((a, b) => a * b, 1), scale));
  return { c: cpu!.upload(data, shape), g: cuda!.upload(data, shape), data };
}

function bothInt(data: Int32Array, shape: number[]): { c: Tensor; g: Tensor } {
  return { c: cpu!.uploadInt(data, shape), g: cuda!.uploadInt(data, shape) };
}

function compare(what: string, g: Tensor, c: Tensor, rtol = BF16): void {
  assert.deepEqual([...g.shape], [...c.shape], `${what}: shape`);
  assertClose(what, cuda!.download(g), cpu!.download(c), rtol, rng.seed);
}

test('memory: upload/download, ints, zeros, row views, reshape, free', { skip }, () => {
  const b = cuda!;
  const data = randomNormal(rng, 6 * 10);
  const t = b.upload(data, [6, 10]);
  assert.equal(t.dtype, 'bf16');
  assert.deepEqual(b.download(t), roundBf16(data));
  const f64 = Float64Array.from(data);
  assert.deepEqual(b.download(b.upload(f64, [60])), roundBf16(data));
  const view = b.rows(t, 2, 3);
  assert.deepEqual([...view.shape], [3, 10]);
  assert.deepEqual(b.download(view), roundBf16(data).subarray(20, 50));
  assert.deepEqual(b.download(b.reshape(view, [30])), roundBf16(data).subarray(20, 50));
  const ints = Int32Array.from({ length: 17 }, (_, i) => i * 1000 - 5);
  assert.deepEqual(b.downloadInt(b.uploadInt(ints, [17])), ints);
  assert.ok(b.download(b.zeros([4, 5])).every((v) => v === 0));
  b.free(view); // a view owns nothing
  b.free(t);
  assert.throws(() => b.download(t), /was freed/);
  b.free(t); // twice is harmless
});

test('linear and gemm (strided, batched) match the CPU', { skip }, () => {
  const x = both([37, 96]), w = both([80, 96], 0.1);
  compare('linear', cuda!.linear(x.g, w.g), cpu!.linear(x.c, w.c));
  const x3 = both([2, 5, 96]);
  compare('linear on [B, T, K]', cuda!.linear(x3.g, w.g), cpu!.linear(x3.c, w.c));
  // Per-head scores: S[h] = Q[h]·K[h]ᵀ with q [T, H, D] (ld H·D, batch stride D).
  const T = 9, H = 3, D = 16;
  const q = both([T, H, D]), k = both([T, H, D]);
  const sc = cuda!.zeros([H, T, T]), cc = cpu!.zeros([H, T, T]);
  const spec = (qt: Tensor, kt: Tensor, out: Tensor) => ({
    m: T, n: T, k: D, batch: H, alpha: 0.25,
    a: { tensor: qt, ld: H * D, batchStride: D }, b: { tensor: kt, ld: H * D, batchStride: D, trans: true }, c: { tensor: out, ld: T, batchStride: T * T },
  });
  cuda!.gemm(spec(q.g, k.g, sc));
  cpu!.gemm(spec(q.c, k.c, cc));
  compare('batched strided gemm', sc, cc);
});

test('elementwise, normalisation and column ops match the CPU', { skip }, () => {
  const a = both([33, 64]), b2 = both([33, 64]);
  compare('add', cuda!.add(a.g, b2.g), cpu!.add(a.c, b2.c));
  cuda!.addInPlace(a.g, b2.g, -0.5);
  cpu!.addInPlace(a.c, b2.c, -0.5);
  compare('addInPlace', a.g, a.c);
  const x = both([7, 7168]), w = both([7168]);
  compare('rmsNorm', cuda!.rmsNorm(x.g, w.g, 1e-6), cpu!.rmsNorm(x.c, w.c, 1e-6));
  const g = both([19, 1408], 2), u = both([19, 1408]);
  compare('swiglu', cuda!.swiglu(g.g, u.g), cpu!.swiglu(g.c, u.c));
  const m = both([11, 40]);
  compare('sliceCols', cuda!.sliceCols(m.g, 8, 29), cpu!.sliceCols(m.c, 8, 29));
  const kn = both([5, 4, 32]), kpe = both([5, 1, 8]), kpeH = both([5, 4, 8]);
  compare('concatHeads (shared key)', cuda!.concatHeads(kn.g, kpe.g), cpu!.concatHeads(kn.c, kpe.c));
  compare('concatHeads (per head)', cuda!.concatHeads(kn.g, kpeH.g), cpu!.concatHeads(kn.c, kpeH.c));
});

test('embedding and rope match the CPU', { skip }, () => {
  const table = both([500, 64]);
  const ids = Int32Array.from({ length: 40 }, () => rng.int(0, 499));
  const i = bothInt(ids, [40]);
  compare('embedding', cuda!.embedding(table.g, i.g), cpu!.embedding(table.c, i.c), 0);
  const N = 12, H = 4, W = 48, rot = 16, P = 32, half = rot / 2;
  const angles = Float32Array.from({ length: P * half }, (_, k) => Math.floor(k / half) * 10000 ** (-(2 * (k % half)) / rot));
  const cosData = roundBf16(angles.map(Math.cos)), sinData = roundBf16(angles.map(Math.sin));
  const cos = { c: cpu!.upload(cosData, [P, half]), g: cuda!.upload(cosData, [P, half]) };
  const sin = { c: cpu!.upload(sinData, [P, half]), g: cuda!.upload(sinData, [P, half]) };
  const pos = bothInt(Int32Array.from({ length: N }, () => rng.int(0, P - 1)), [N]);
  const x = both([N, H, W]);
  for (const inverse of [false, true]) {
    compare(`rope${inverse ? ' inverse' : ''}`, cuda!.rope(x.g, cos.g, sin.g, pos.g, 32, rot, inverse), cpu!.rope(x.c, cos.c, sin.c, pos.c, 32, rot, inverse));
  }
});

test('attention, latent attention and the cache write match the CPU', { skip }, () => {
  const B = 2, Tq = 6, Tk = 10, H = 3, Dk = 24, Dv = 16;
  const q = both([B, Tq, H, Dk]), k = both([B, Tk, H, Dk]), v = both([B, Tk, H, Dv]);
  compare('attention (chunk at qStart 4)', cuda!.attention(q.g, k.g, v.g, 0.2, 4), cpu!.attention(q.c, k.c, v.c, 0.2, 4));
  const C = 32, R = 8, S = 20, kvLen = 15;
  const qLat = both([B, Tq, H, C]), qPe = both([B, Tq, H, R]);
  const ckvG = cuda!.zeros([B, S, C]), ckvC = cpu!.zeros([B, S, C]), kpeG = cuda!.zeros([B, S, R]), kpeC = cpu!.zeros([B, S, R]);
  const newC = both([B, kvLen, C]), newR = both([B, kvLen, R]);
  cuda!.writeCache(ckvG, newC.g, 0);
  cpu!.writeCache(ckvC, newC.c, 0);
  cuda!.writeCache(kpeG, newR.g, 0);
  cpu!.writeCache(kpeC, newR.c, 0);
  compare('writeCache', ckvG, ckvC, 0);
  const more = both([B, 2, C]);
  cuda!.writeCache(ckvG, more.g, kvLen);
  cpu!.writeCache(ckvC, more.c, kvLen);
  compare('writeCache at an offset', ckvG, ckvC, 0);
  compare('mlaLatentAttention', cuda!.mlaLatentAttention(qLat.g, qPe.g, ckvG, kpeG, 0.15, kvLen - Tq, kvLen), cpu!.mlaLatentAttention(qLat.c, qPe.c, ckvC, kpeC, 0.15, kvLen - Tq, kvLen));
});

test('router, permute and unpermute match the CPU', { skip }, () => {
  const N = 64, E = 32, d = 40;
  const cfg: RouterConfig = { topK: 4, nGroup: 4, topkGroup: 2, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 2.5 };
  const logitsData = randomNormal(rng, N * E, 2);
  const biasData = randomNormal(rng, E, 0.05);
  const logitsG = (cuda as CudaBackend).uploadF32(logitsData, [N, E]), logitsC = cpu!.upload(logitsData, [N, E]);
  const biasG = (cuda as CudaBackend).uploadF32(biasData, [E]), biasC = cpu!.upload(biasData, [E]);
  const rg = cuda!.routerTopK(logitsG, biasG, cfg), rc = cpu!.routerTopK(logitsC, biasC, cfg);
  compare('router scores', rg.scores, rc.scores, 1e-5);
  const ig = cuda!.downloadInt(rg.indices), ic = cpu!.downloadInt(rc.indices);
  let differ = 0;
  for (let n = 0; n < N; n++) if (ig.subarray(n * 4, n * 4 + 4).join() !== ic.subarray(n * 4, n * 4 + 4).join()) differ++;
  assert.ok(differ <= 1, `${differ} tokens routed differently (seed ${rng.seed})`);
  if (differ === 0) compare('router weights', rg.weights, rc.weights, 1e-5);

  // Permute with the CPU's routing on both sides, so the comparison is exact.
  const x = both([N, d]);
  const idx = { g: cuda!.uploadInt(ic, [N, 4]), c: rc.indices };
  const pg = cuda!.moePermute(x.g, idx.g, E), pc = cpu!.moePermute(x.c, idx.c, E);
  assert.deepEqual(pg.counts, pc.counts);
  assert.deepEqual(cuda!.downloadInt(pg.sourceSlot), cpu!.downloadInt(pc.sourceSlot));
  compare('moePermute rows', pg.rows, pc.rows, 0);
  const expertOut = both([N * 4, d]);
  const wData = cpu!.download(rc.weights) as Float32Array;
  const wg = (cuda as CudaBackend).uploadF32(wData, [N, 4]);
  compare('moeUnpermute', cuda!.moeUnpermute(expertOut.g, pg.sourceSlot, wg), cpu!.moeUnpermute(expertOut.c, pc.sourceSlot, rc.weights));
});

test('the class covers the Backend forward ops', { skip }, () => {
  const ops: (keyof CudaForwardOps)[] = ['upload', 'uploadInt', 'download', 'downloadInt', 'zeros', 'rows', 'reshape', 'free', 'gemm', 'linear', 'add', 'addInPlace',
    'rmsNorm', 'swiglu', 'sliceCols', 'concatHeads', 'embedding', 'rope', 'attention', 'mlaLatentAttention', 'writeCache', 'routerTopK', 'moePermute', 'moeUnpermute'];
  for (const op of ops) assert.equal(typeof cuda![op], 'function', op);
});
