// cuBLASLt GEMMs (matmul.ts) against an FP64 reference: BF16 and FP32 operands, every
// transpose, padded leading dimensions, strided batches, alpha/beta accumulation, FP32 output
// from BF16 inputs, and operands at unaligned addresses. Prints one large GEMM's throughput.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { CublasLtMatmul, type RowMajorGemm } from '../../../src/backend/cuda/matmul.js';
import { openGpu, seededRandom, randomNormal, roundBf16, uploadAs, downloadAs, assertClose, type Kind } from './gpu-helpers.js';

const { ctx, skip } = openGpu();
const matmul = ctx ? new CublasLtMatmul(ctx) : undefined;
after(() => {
  matmul?.dispose();
  ctx?.dispose();
});

/** C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b] in FP64, row-major with the spec's strides. */
function gemmReference(g: RowMajorGemm, a: Float32Array, b: Float32Array, c: Float32Array, alpha: number, beta: number): Float64Array {
  const out = Float64Array.from(c);
  for (let bt = 0; bt < (g.batch ?? 1); bt++) {
    const oa = bt * (g.strideA ?? 0), ob = bt * (g.strideB ?? 0), oc = bt * (g.strideC ?? 0);
    for (let i = 0; i < g.m; i++) {
      for (let j = 0; j < g.n; j++) {
        let s = 0;
        for (let k = 0; k < g.k; k++) {
          const av = g.transA ? a[oa + k * g.lda + i]! : a[oa + i * g.lda + k]!;
          const bv = g.transB ? b[ob + j * g.ldb + k]! : b[ob + k * g.ldb + j]!;
          s += av * bv;
        }
        out[oc + i * g.ldc + j] = alpha * s + beta * c[oc + i * g.ldc + j]!;
      }
    }
  }
  return out;
}

function elements(rows: number, ld: number, batch: number, stride: number): number {
  return (batch - 1) * stride + rows * ld;
}

function runCase(label: string, g: RowMajorGemm, alpha: number, beta: number, offsetElems = 0): void {
  const c = ctx!;
  const rng = seededRandom();
  const batch = g.batch ?? 1;
  const ab = g.abType as Kind, ck = g.cType as Kind;
  const store = (k: Kind, x: Float32Array) => (k === 'bf16' ? roundBf16(x) : x);
  const nA = elements(g.transA ? g.k : g.m, g.lda, batch, g.strideA ?? 0);
  const nB = elements(g.transB ? g.n : g.k, g.ldb, batch, g.strideB ?? 0);
  const nC = elements(g.m, g.ldc, batch, g.strideC ?? 0);
  const a = store(ab, randomNormal(rng, nA + offsetElems)), b = store(ab, randomNormal(rng, nB + offsetElems)), cIn = store(ck, randomNormal(rng, nC + offsetElems));
  const eAB = ab === 'bf16' ? 2 : 4, eC = ck === 'bf16' ? 2 : 4;
  const pa = uploadAs(c, ab, a), pb = uploadAs(c, ab, b), pc = uploadAs(c, ck, cIn);
  matmul!.run(g, pa + eAB * offsetElems, pb + eAB * offsetElems, pc + eC * offsetElems, alpha, beta);
  const got = downloadAs(c, ck, pc, nC + offsetElems).subarray(offsetElems);
  const want = gemmReference(g, a.subarray(offsetElems), b.subarray(offsetElems), cIn.subarray(offsetElems), alpha, beta);
  // Only the matrices' own elements: padding columns keep their old values.
  const gotM: number[] = [], wantM: number[] = [];
  for (let bt = 0; bt < batch; bt++) {
    for (let i = 0; i < g.m; i++) {
      for (let j = 0; j < g.n; j++) {
        const at = bt * (g.strideC ?? 0) + i * g.ldc + j;
        gotM.push(got[at]!);
        wantM.push(want[at]!);
      }
    }
  }
  const rtol = ck === 'bf16' ? 1e-2 : ab === 'bf16' ? 1e-4 : 2e-5;
  assertClose(label, gotM, wantM, rtol, rng.seed);
  for (const p of [pa, pb, pc]) c.free(p);
}

test('BF16 GEMM, every transpose, padded leading dimensions', { skip }, () => {
  for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]] as const) {
    const m = 96, n = 80, k = 136;
    const lda = (transA ? m : k) + 8, ldb = (transB ? k : n) + 16, ldc = n + 24;
    runCase(`bf16 ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'} ${m}×${n}×${k}`, { m, n, k, abType: 'bf16', cType: 'bf16', transA, transB, lda, ldb, ldc }, 1, 0);
  }
});

test('the Linear layer: y = x·Wᵀ for odd shapes', { skip }, () => {
  for (const [m, n, k] of [[1, 7168, 512], [33, 65, 47], [257, 129, 1024], [5, 3, 2]] as const) {
    runCase(`linear ${m}×${n}×${k}`, { m, n, k, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: k, ldb: k, ldc: n }, 1, 0);
  }
});

test('alpha, beta, FP32 output from BF16 inputs, FP32 GEMM', { skip }, () => {
  const g = { m: 64, n: 48, k: 160, transA: false, transB: true, lda: 160, ldb: 160, ldc: 48 };
  runCase('bf16 accumulate alpha=0.5 beta=1', { ...g, abType: 'bf16', cType: 'bf16' }, 0.5, 1);
  runCase('bf16 → f32 (router logits)', { ...g, abType: 'bf16', cType: 'f32' }, 1, 0);
  runCase('bf16 → f32 accumulate beta=1', { ...g, abType: 'bf16', cType: 'f32' }, 1, 1);
  runCase('f32 GEMM', { ...g, abType: 'f32', cType: 'f32' }, 1, 0);
  runCase('f32 GEMM NN beta=-2', { ...g, transB: false, ldb: 48, abType: 'f32', cType: 'f32' }, 1.5, -2);
});

test('strided batched GEMM', { skip }, () => {
  const m = 24, n = 40, k = 56, batch = 5;
  runCase('batched bf16 NT', { m, n, k, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: k, ldb: k, ldc: n, batch, strideA: m * k + 8, strideB: n * k, strideC: m * n + 16 }, 1, 0);
  runCase('batched f32 TN', { m, n, k, abType: 'f32', cType: 'f32', transA: true, transB: false, lda: m, ldb: n, ldc: n, batch, strideA: m * k, strideB: k * n, strideC: m * n }, 1, 0);
  // A shared B (stride 0): the same weight for every batch entry.
  runCase('batched bf16, shared B', { m, n, k, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: k, ldb: k, ldc: n, batch, strideA: m * k, strideB: 0, strideC: m * n }, 1, 0);
});

test('operands at 2-byte-aligned addresses (row views)', { skip }, () => {
  runCase('bf16 NT at +1 element', { m: 31, n: 17, k: 63, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: 63, ldb: 63, ldc: 17 }, 1, 0, 1);
  runCase('bf16 NT at +8 elements', { m: 32, n: 64, k: 64, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: 64, ldb: 64, ldc: 64 }, 1, 0, 8);
});

test('BF16 throughput of an 8192³ GEMM (printed)', { skip }, () => {
  const c = ctx!;
  const n = 8192;
  const g: RowMajorGemm = { m: n, n, k: n, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: n, ldb: n, ldc: n };
  const pa = c.alloc(2 * n * n), pb = c.alloc(2 * n * n), pc = c.alloc(2 * n * n);
  c.memset32(pa, 0x3c003c00, (n * n) / 2); // bf16 0.0078125 pairs
  c.memset32(pb, 0x3c003c00, (n * n) / 2);
  for (let i = 0; i < 3; i++) matmul!.run(g, pa, pb, pc);
  const start = c.createEvent(), end = c.createEvent();
  start.record();
  const reps = 10;
  for (let i = 0; i < reps; i++) matmul!.run(g, pa, pb, pc);
  end.record();
  end.synchronize();
  const ms = end.elapsedSince(start) / reps;
  const tflops = (2 * n ** 3) / (ms * 1e-3) / 1e12;
  console.log(`# bf16 ${n}³ GEMM: ${ms.toFixed(3)} ms, ${tflops.toFixed(0)} TFLOP/s`);
  const check = new Uint16Array(4);
  c.copyToHost(check, pc);
  // 8192 · 0.0078125² = 0.5 exactly.
  assert.equal(check[0], 0x3f00);
  assert.ok(tflops > 50, 'a tensor-core algorithm was chosen');
  for (const p of [pa, pb, pc]) c.free(p);
  start.destroy();
  end.destroy();
});
