// DeepSeek-V3's fine-grained FP8 on the GPU (fp8-matmul.ts, kernels/fp8-quantize.cu):
// - the 1×128 and 128×128 quantization kernels give exactly the codes and scales of the CPU
//   emulation (src/fp8/quantize.ts) on fresh random data whose tiles span many magnitudes;
// - the cuBLASLt block-scaled GEMM equals the FP64 product of the dequantized operands within the
//   tolerance of its accumulation (and BF16 output), at M, N, K that are not multiples of 128 too;
// - quantizing on the GPU and on the CPU feeds the GEMM identical operands (bitwise equal outputs).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { quantizeTiles1x128, quantizeWeightBlocks128, dequantizeTiles1x128, dequantizeWeightBlocks128 } from '../../../src/fp8/quantize.js';
import {
  Fp8BlockScaledGemm, fp8GemmUnsupported, quantizeActivations1x128, quantizeWeights128x128, activationScaleLayout, weightScaleLayout,
  activationScalesToDevice, activationScalesFromDevice, weightScalesToDevice, weightScalesFromDevice, type Fp8InputType, type Fp8OutputType,
} from '../../../src/backend/cuda/fp8-matmul.js';
import { openGpu, seededRandom, roundBf16, uploadAs, downloadAs, assertClose, type Rng } from './gpu-helpers.js';

const { ctx, skip } = openGpu();
let gemmSkip: string | false = skip;
if (!gemmSkip && ctx) {
  const reason = fp8GemmUnsupported(ctx);
  if (reason) {
    console.log(`# skipping the FP8 GEMM tests: ${reason}`);
    gemmSkip = reason;
  }
}
const gemm = ctx && !gemmSkip ? new Fp8BlockScaledGemm(ctx) : undefined;
after(() => {
  gemm?.dispose();
  ctx?.dispose();
});

/**
 * Normal values whose tiles (blockRows × 128) each get their own magnitude, 2^-12 … 2^12, plus an
 * all-zero tile, a tile near the 1e-12 floor, a huge tile and single outliers: scales then differ a
 * lot between tiles (a scale read from the wrong place shows), and codes cover subnormals,
 * saturation and every binade.
 */
function spreadValues(rng: Rng, rows: number, cols: number, blockRows: number): Float32Array {
  const x = new Float32Array(rows * cols);
  const tileRows = Math.ceil(rows / blockRows), tileCols = Math.ceil(cols / 128);
  const magnitude = new Float64Array(tileRows * tileCols);
  for (let t = 0; t < magnitude.length; t++) magnitude[t] = 2 ** (rng.uniform() * 24 - 12);
  if (magnitude.length > 3) {
    magnitude[1] = 0;
    magnitude[2] = 1e-13;
    magnitude[3] = 1e30;
  }
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      x[r * cols + c] = rng.normal() * magnitude[Math.floor(r / blockRows) * tileCols + Math.floor(c / 128)]!;
    }
  }
  for (let i = 0; i < 8; i++) {
    const at = rng.int(0, x.length - 1);
    x[at] = x[at]! * 300;
  }
  return x;
}

/** First difference of two byte arrays, for a message that says where. */
function assertSameBytes(what: string, got: Uint8Array, want: Uint8Array, seed: number): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let mismatches = 0, first = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      mismatches++;
    }
  }
  assert.equal(mismatches, 0, `${what}: ${mismatches} of ${want.length} codes differ, first at ${first} (got 0x${got[first]?.toString(16)}, want 0x${want[first]?.toString(16)}) (seed ${seed})`);
}

/** Scales compared as bit patterns. */
function assertSameScales(what: string, got: Float32Array, want: Float32Array, seed: number): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length), w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < w.length; i++) {
    assert.equal(g[i], w[i], `${what}: scale ${i} is ${got[i]}, the emulation's ${want[i]} (seed ${seed})`);
  }
}

type QuantizeCase = { rows: number; cols: number; type: Fp8InputType; pow2: boolean; offset?: number };

function runQuantizeCase(kind: 'activations' | 'weights', c: QuantizeCase): void {
  const g = ctx!;
  const rng = seededRandom();
  const { rows, cols, type, pow2 } = c;
  const offset = c.offset ?? 0; // elements: an input that does not start on a 16-byte boundary
  const raw = spreadValues(rng, rows, cols, kind === 'activations' ? 1 : 128);
  const x = type === 'bf16' ? roundBf16(raw) : raw;
  const padded = new Float32Array(offset + x.length);
  padded.set(x, offset);
  const input = uploadAs(g, type, padded);
  const layout = kind === 'activations' ? activationScaleLayout(rows, cols) : weightScaleLayout(rows, cols);
  const codes = g.alloc(Math.max(1, rows * cols));
  const scales = g.alloc(4 * layout.elements);
  const args = { rows, cols, input: input + offset * (type === 'bf16' ? 2 : 4), inputType: type, codes, scales, powerOfTwo: pow2 };
  if (kind === 'activations') quantizeActivations1x128(g, args);
  else quantizeWeights128x128(g, args);
  const gotCodes = new Uint8Array(rows * cols);
  g.copyToHost(gotCodes, codes);
  const gotScales = new Float32Array(layout.elements);
  g.copyToHost(gotScales, scales);
  const want = kind === 'activations' ? quantizeTiles1x128(x, rows, cols, { powerOfTwo: pow2 }) : quantizeWeightBlocks128(x, rows, cols, { powerOfTwo: pow2 });
  const label = `${kind} [${rows}, ${cols}] ${type}${pow2 ? ' pow2' : ''}${offset ? ` offset ${offset}` : ''}`;
  assertSameBytes(label, gotCodes, want.codes, rng.seed);
  const scalesRowMajor = kind === 'activations' ? activationScalesFromDevice(gotScales, rows, cols) : weightScalesFromDevice(gotScales, rows, cols);
  assertSameScales(label, scalesRowMajor, want.scaleInv, rng.seed);
  console.log(`# ${label}: ${rows * cols} codes and ${want.scaleInv.length} scales identical to the emulation (seed ${rng.seed})`);
  for (const p of [input, codes, scales]) g.free(p);
}

const QUANTIZE_CASES: QuantizeCase[] = [
  { rows: 256, cols: 1024, type: 'bf16', pow2: false },
  { rows: 67, cols: 300, type: 'bf16', pow2: false }, // K % 8 ≠ 0: element-wise path, a partial last tile
  { rows: 33, cols: 200, type: 'f32', pow2: false }, // K % 128 ≠ 0 on the vector path
  { rows: 96, cols: 384, type: 'f32', pow2: true },
  { rows: 45, cols: 256, type: 'bf16', pow2: true, offset: 1 }, // misaligned input: element-wise path
  { rows: 1, cols: 7168, type: 'bf16', pow2: false },
];

test('1×128 activation quantization is bit-exact with the CPU emulation', { skip }, () => {
  for (const c of QUANTIZE_CASES) runQuantizeCase('activations', c);
});

test('128×128 weight quantization is bit-exact with the CPU emulation', { skip }, () => {
  const cases: QuantizeCase[] = [
    { rows: 256, cols: 512, type: 'bf16', pow2: false },
    { rows: 300, cols: 200, type: 'bf16', pow2: false }, // partial blocks in both directions
    { rows: 130, cols: 260, type: 'f32', pow2: false },
    { rows: 200, cols: 1100, type: 'f32', pow2: true }, // ceil(K/128) = 9: scale rows padded to 12
    { rows: 129, cols: 301, type: 'bf16', pow2: true, offset: 3 },
  ];
  for (const c of cases) runQuantizeCase('weights', c);
});

/** D[m, n] = Σ_k a[m, k] · w[n, k] in FP64. */
function referenceProduct(a: Float32Array, w: Float32Array, M: number, N: number, K: number): Float64Array {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    const ar = m * K;
    for (let n = 0; n < N; n++) {
      const wr = n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += a[ar + k]! * w[wr + k]!;
      out[m * N + n] = s;
    }
  }
  return out;
}

/** Random activations [M, K] and weight [N, K] with spread magnitudes (no zero or extreme tiles: those would dominate the error scale). */
function gemmOperands(rng: Rng, M: number, N: number, K: number): { x: Float32Array; w: Float32Array } {
  const spread = (rows: number, blockRows: number) => {
    const v = new Float32Array(rows * K);
    const tileCols = Math.ceil(K / 128);
    const mag = Float64Array.from({ length: Math.ceil(rows / blockRows) * tileCols }, () => 2 ** (rng.uniform() * 8 - 4));
    for (let r = 0; r < rows; r++) for (let c = 0; c < K; c++) v[r * K + c] = rng.normal() * mag[Math.floor(r / blockRows) * tileCols + Math.floor(c / 128)]!;
    return v;
  };
  return { x: spread(M, 1), w: spread(N, 128) };
}

/**
 * Relative tolerance against |want| + rms(want). Inside each 128-wide block of K the tensor cores
 * add FP8 products with a narrower accumulator than FP32 (about 13–14 bits; DeepSeek-V3 §3.3.2),
 * promoted to FP32 at every block boundary (fast accumulation off); BF16 output adds its rounding.
 * A scale read from the wrong place is off by up to 2^8 here (tile magnitudes span 2^±4), far beyond.
 */
const GEMM_RTOL: Record<Fp8OutputType, number> = { f32: 8e-3, bf16: 1e-2 };

function runGemmCase(M: number, N: number, K: number, dType: Fp8OutputType): void {
  const g = ctx!;
  const rng = seededRandom();
  const { x, w } = gemmOperands(rng, M, N, K);
  const qa = quantizeTiles1x128(x, M, K);
  const qw = quantizeWeightBlocks128(w, N, K);
  const a = g.upload(qa.codes), b = g.upload(qw.codes);
  const aScale = g.upload(activationScalesToDevice(qa.scaleInv, M, K));
  const bScale = g.upload(weightScalesToDevice(qw.scaleInv, N, K));
  const d = g.alloc(M * N * (dType === 'bf16' ? 2 : 4));
  gemm!.run({ M, N, K, a, aScale, b, bScale, d, dType });
  const got = downloadAs(g, dType, d, M * N);
  const want = referenceProduct(dequantizeTiles1x128(qa.codes, qa.scaleInv, M, K), dequantizeWeightBlocks128(qw.codes, qw.scaleInv, N, K), M, N, K);
  assertClose(`FP8 GEMM ${M}×${N}×${K} → ${dType}`, got, want, GEMM_RTOL[dType], rng.seed);
  for (const p of [a, b, aScale, bScale, d]) g.free(p);
}

for (const [M, N, K, dType] of [
  [256, 384, 512, 'bf16'],
  [256, 384, 512, 'f32'],
  [200, 336, 320, 'bf16'], // none a multiple of 128; ceil(K/128) = 3, scale rows padded to 4
  [200, 336, 320, 'f32'],
  [72, 208, 272, 'bf16'], // M a multiple of 8 but not of 16 (cuBLASLt 13.1 has no algorithm for M = 77 or 1)
  [8, 144, 400, 'f32'], // a decoding batch padded to 8 tokens
] as const) {
  test(`block-scaled FP8 GEMM ${M}×${N}×${K} → ${dType} equals the FP64 product of the dequantized operands`, { skip: gemmSkip }, () => {
    runGemmCase(M, N, K, dType);
  });
}

test('the GEMM accumulates into D when asked', { skip: gemmSkip }, () => {
  const g = ctx!;
  const rng = seededRandom();
  const M = 64, N = 128, K = 256;
  const { x, w } = gemmOperands(rng, M, N, K);
  const qa = quantizeTiles1x128(x, M, K), qw = quantizeWeightBlocks128(w, N, K);
  const a = g.upload(qa.codes), b = g.upload(qw.codes);
  const aScale = g.upload(activationScalesToDevice(qa.scaleInv, M, K)), bScale = g.upload(weightScalesToDevice(qw.scaleInv, N, K));
  const start = Float32Array.from({ length: M * N }, () => rng.normal() * 10);
  const d = uploadAs(g, 'f32', start);
  gemm!.run({ M, N, K, a, aScale, b, bScale, d, dType: 'f32', accumulate: true });
  const product = referenceProduct(dequantizeTiles1x128(qa.codes, qa.scaleInv, M, K), dequantizeWeightBlocks128(qw.codes, qw.scaleInv, N, K), M, N, K);
  const want = product.map((v, i) => v + start[i]!);
  assertClose(`FP8 GEMM ${M}×${N}×${K}, D += product`, downloadAs(g, 'f32', d, M * N), want, GEMM_RTOL.f32, rng.seed);
  for (const p of [a, b, aScale, bScale, d]) g.free(p);
});

test('operands quantized on the GPU give the GEMM the same result as those quantized on the CPU', { skip: gemmSkip }, () => {
  const g = ctx!;
  const rng = seededRandom();
  const M = 160, N = 272, K = 384;
  const { x: rawX, w: rawW } = gemmOperands(rng, M, N, K);
  const x = roundBf16(rawX), w = roundBf16(rawW);
  // on the GPU, from BF16
  const px = uploadAs(g, 'bf16', x), pw = uploadAs(g, 'bf16', w);
  const aLayout = activationScaleLayout(M, K), bLayout = weightScaleLayout(N, K);
  const a1 = g.alloc(M * K), b1 = g.alloc(N * K), as1 = g.alloc(4 * aLayout.elements), bs1 = g.alloc(4 * bLayout.elements);
  quantizeActivations1x128(g, { rows: M, cols: K, input: px, inputType: 'bf16', codes: a1, scales: as1 });
  quantizeWeights128x128(g, { rows: N, cols: K, input: pw, inputType: 'bf16', codes: b1, scales: bs1 });
  const d1 = g.alloc(4 * M * N);
  gemm!.run({ M, N, K, a: a1, aScale: as1, b: b1, bScale: bs1, d: d1, dType: 'f32' });
  // on the CPU
  const qa = quantizeTiles1x128(x, M, K), qw = quantizeWeightBlocks128(w, N, K);
  const a2 = g.upload(qa.codes), b2 = g.upload(qw.codes);
  const as2 = g.upload(activationScalesToDevice(qa.scaleInv, M, K)), bs2 = g.upload(weightScalesToDevice(qw.scaleInv, N, K));
  const d2 = g.alloc(4 * M * N);
  gemm!.run({ M, N, K, a: a2, aScale: as2, b: b2, bScale: bs2, d: d2, dType: 'f32' });
  const got1 = downloadAs(g, 'f32', d1, M * N), got2 = downloadAs(g, 'f32', d2, M * N);
  let differ = 0;
  for (let i = 0; i < got1.length; i++) if (!Object.is(got1[i], got2[i])) differ++;
  assert.equal(differ, 0, `${differ} of ${got1.length} outputs differ between GPU- and CPU-quantized operands (seed ${rng.seed})`);
  const want = referenceProduct(dequantizeTiles1x128(qa.codes, qa.scaleInv, M, K), dequantizeWeightBlocks128(qw.codes, qw.scaleInv, N, K), M, N, K);
  assertClose(`FP8 linear ${M}×${N}×${K} from BF16 (quantized on the GPU)`, got1, want, GEMM_RTOL.f32, rng.seed);
  for (const p of [px, pw, a1, b1, as1, bs1, d1, a2, b2, as2, bs2, d2]) g.free(p);
});

test('the GEMM rejects shapes and pointers cuBLASLt cannot take, with a clear message', { skip: gemmSkip }, () => {
  const g = ctx!;
  const buf = g.alloc(1 << 16);
  const base = { M: 16, N: 32, K: 128, a: buf, aScale: buf, b: buf, bScale: buf, d: buf };
  assert.throws(() => gemm!.run({ ...base, K: 100 }), /K = 100 must be a positive multiple of 16/);
  assert.throws(() => gemm!.run({ ...base, N: 40 }), /N = 40 must be a multiple of 16/);
  assert.throws(() => gemm!.run({ ...base, M: 77 }), /M = 77 must be a multiple of 8/);
  assert.throws(() => gemm!.run({ ...base, a: buf + 8 }), /a = 0x[0-9a-f]+ must be a 16-byte aligned device pointer/);
  g.free(buf);
});
