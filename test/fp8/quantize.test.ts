// Fine-grained FP8 quantization: scales are exactly max(amax, 1e-12)/448 of their own tile (or the
// smallest power of two at least amax/448), every element lands on the E4M3 code nearest to it
// (error within half an E4M3 ulp of the scaled value), partial edge tiles use only their own
// elements, and a tile that is already FP8 times a power of two round-trips exactly.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dequantizeTiles1x128, dequantizeWeightBlocks128, fp8ScaleInv, quantizeTiles1x128,
  quantizeWeightBlocks128 } from '../../src/fp8/quantize.js';
import { e4m3BitsToFloat32 } from '../../src/tensor/fp8.js';
import { seededRandom, type TestRandom } from '../helpers/random.js';

/** Half the E4M3 spacing around a scaled magnitude y (E4M3 has 3 mantissa bits, subnormal quantum 2^-9). */
function e4m3HalfUlp(y: number): number {
  return y < 2 ** -6 ? 2 ** -10 : 2 ** (Math.floor(Math.log2(y)) - 4);
}

/** A [rows, cols] matrix whose 128×128 blocks (or 1×128 tiles) have very different magnitudes, with outliers. */
function randomMatrix(rows: number, cols: number, rng: TestRandom, tileRows: number): Float32Array {
  const x = new Float32Array(rows * cols);
  const tileMagnitude = new Map<string, number>();
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const key = `${Math.floor(r / tileRows)},${Math.floor(c / 128)}`;
      if (!tileMagnitude.has(key)) tileMagnitude.set(key, 2 ** Math.floor(rng.uniform() * 40 - 20));
      const outlier = rng.uniform() < 0.002 ? 50 : 1;
      x[r * cols + c] = rng.normal() * tileMagnitude.get(key)! * outlier;
    }
  }
  return x;
}

/** Largest magnitude of x over [r0, r1) × [c0, c1). */
function amaxOf(x: Float32Array, cols: number, r0: number, r1: number, c0: number, c1: number): number {
  let amax = 0;
  for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
  return amax;
}

/**
 * Each dequantized element is within half an E4M3 ulp (at the scaled value) of the input, plus the
 * float32 roundings of the quotient and product, and no neighbouring code would have been nearer.
 */
function checkNearest(x: Float32Array, codes: Uint8Array, back: Float32Array, scaleOf: (i: number) => number, where: string): void {
  for (let i = 0; i < x.length; i++) {
    const s = scaleOf(i);
    const w = x[i]!;
    const y = Math.abs(w) / s;
    const bound = s * e4m3HalfUlp(y * (1 + 2 ** -22)) + Math.abs(w) * 2 ** -22;
    const error = Math.abs(back[i]! - w);
    assert.ok(error <= bound, `${where}: element ${i} = ${w}, scale ${s}: dequantized ${back[i]} is ${error} off (bound ${bound})`);
    assert.equal(back[i], Math.fround(e4m3BitsToFloat32(codes[i]!) * s), `${where}: element ${i} dequantizes to code · scale`);
    const magnitude = codes[i]! & 0x7f;
    for (const neighbour of [magnitude - 1, magnitude + 1]) {
      if (neighbour < 0 || neighbour > 0x7e) continue;
      const neighbourValue = Math.sign(w) * e4m3BitsToFloat32(neighbour) * s;
      assert.ok(Math.abs(neighbourValue - w) >= error - Math.abs(w) * 2 ** -22,
        `${where}: element ${i} = ${w}: code ${neighbour} would be nearer than ${magnitude}`);
    }
  }
}

test('128×128 blocks: exact per-block scales, nearest codes, partial edge blocks', () => {
  const rng = seededRandom();
  for (const [rows, cols] of [[256, 384], [300, 200], [130, 257], [7, 5]] as const) {
    const where = `seed ${rng.seed}: [${rows}, ${cols}]`;
    const w = randomMatrix(rows, cols, rng, 128);
    const { codes, scaleInv } = quantizeWeightBlocks128(w, rows, cols);
    const blockRows = Math.ceil(rows / 128);
    const blockCols = Math.ceil(cols / 128);
    assert.equal(scaleInv.length, blockRows * blockCols, where);
    assert.equal(codes.length, rows * cols, where);
    for (let br = 0; br < blockRows; br++) {
      for (let bc = 0; bc < blockCols; bc++) {
        const amax = amaxOf(w, cols, br * 128, Math.min(rows, br * 128 + 128), bc * 128, Math.min(cols, bc * 128 + 128));
        assert.equal(scaleInv[br * blockCols + bc], Math.fround(amax / 448), `${where}: scale of block (${br}, ${bc})`);
      }
    }
    const back = dequantizeWeightBlocks128(codes, scaleInv, rows, cols);
    const scaleOf = (i: number) => scaleInv[Math.floor(Math.floor(i / cols) / 128) * blockCols + Math.floor((i % cols) / 128)]!;
    checkNearest(w, codes, back, scaleOf, where);
  }
});

test('128×128 blocks: an edge block scaled only by its own elements', () => {
  const rng = seededRandom();
  const rows = 130;
  const cols = 257;
  const w = new Float32Array(rows * cols).map(() => rng.normal() * 1000);
  // The bottom-right block is 2×1; make it tiny so borrowing any neighbour's amax would show.
  w[128 * cols + 256] = 0.001;
  w[129 * cols + 256] = -0.0005;
  const { codes, scaleInv } = quantizeWeightBlocks128(w, rows, cols);
  assert.equal(scaleInv.length, 2 * 3);
  const amax = Math.fround(0.001);
  assert.equal(scaleInv[5], Math.fround(amax / 448), `seed ${rng.seed}`);
  const back = dequantizeWeightBlocks128(codes, scaleInv, rows, cols);
  assert.ok(Math.abs(back[128 * cols + 256]! - amax) <= amax * 2 ** -20, `seed ${rng.seed}: the amax element is exact up to float32 rounding`);
  assert.ok(Math.abs(back[129 * cols + 256]! + 0.0005) <= 0.0005 / 16, `seed ${rng.seed}`);
});

test('a block whose amax is exactly representable round-trips exactly', () => {
  const rng = seededRandom();
  for (const exponent of [-20, -3, 0, 7]) {
    const scale = 2 ** exponent;
    const w = new Float32Array(128 * 128);
    for (let i = 0; i < w.length; i++) {
      let code: number;
      do code = rng.uint32() & 0xff; while ((code & 0x7f) === 0x7f);
      w[i] = e4m3BitsToFloat32(code) * scale;
    }
    w[rng.uint32() % w.length] = (rng.uniform() < 0.5 ? -448 : 448) * scale;
    for (const options of [{}, { powerOfTwo: true }]) {
      const { codes, scaleInv } = quantizeWeightBlocks128(w, 128, 128, options);
      assert.equal(scaleInv[0], scale, `seed ${rng.seed}: 2^${exponent} ${JSON.stringify(options)}`);
      assert.deepEqual(dequantizeWeightBlocks128(codes, scaleInv, 128, 128), w, `seed ${rng.seed}: 2^${exponent}`);
    }
  }
});

test('power-of-two scales: the smallest 2^e with 448 · 2^e ≥ amax', () => {
  const rng = seededRandom();
  const rows = 200;
  const cols = 300;
  const w = randomMatrix(rows, cols, rng, 128);
  const { codes, scaleInv } = quantizeWeightBlocks128(w, rows, cols, { powerOfTwo: true });
  for (let b = 0; b < scaleInv.length; b++) {
    const br = Math.floor(b / 3);
    const bc = b % 3;
    const amax = amaxOf(w, cols, br * 128, Math.min(rows, br * 128 + 128), bc * 128, Math.min(cols, bc * 128 + 128));
    const s = scaleInv[b]!;
    assert.equal(2 ** Math.round(Math.log2(s)), s, `seed ${rng.seed}: block ${b} scale ${s} is a power of two`);
    assert.ok(448 * s >= amax && 448 * (s / 2) < amax, `seed ${rng.seed}: block ${b} scale ${s} for amax ${amax}`);
  }
  const back = dequantizeWeightBlocks128(codes, scaleInv, rows, cols);
  checkNearest(w, codes, back, (i) => scaleInv[Math.floor(Math.floor(i / cols) / 128) * 3 + Math.floor((i % cols) / 128)]!,
    `seed ${rng.seed}: powerOfTwo`);
  assert.equal(fp8ScaleInv(448, { powerOfTwo: true }), 1);
  assert.equal(fp8ScaleInv(448.0001, { powerOfTwo: true }), 2);
  assert.equal(fp8ScaleInv(224, { powerOfTwo: true }), 0.5);
});

test('1×128 activation tiles: one exact scale per row per 128 columns', () => {
  const rng = seededRandom();
  for (const [rows, cols] of [[5, 300], [64, 128], [3, 17]] as const) {
    const where = `seed ${rng.seed}: [${rows}, ${cols}]`;
    const x = randomMatrix(rows, cols, rng, 1);
    const { codes, scaleInv } = quantizeTiles1x128(x, rows, cols);
    const tiles = Math.ceil(cols / 128);
    assert.equal(scaleInv.length, rows * tiles, where);
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < tiles; t++) {
        const amax = amaxOf(x, cols, r, r + 1, t * 128, Math.min(cols, t * 128 + 128));
        assert.equal(scaleInv[r * tiles + t], Math.fround(amax / 448), `${where}: scale of row ${r} tile ${t}`);
      }
    }
    const back = dequantizeTiles1x128(codes, scaleInv, rows, cols);
    checkNearest(x, codes, back, (i) => scaleInv[Math.floor(i / cols) * tiles + Math.floor((i % cols) / 128)]!, where);
  }
});

test('an all-zero tile gets the floor scale and zero codes; sizes are checked', () => {
  const x = new Float32Array(2 * 256);
  x.fill(3, 256);
  const { codes, scaleInv } = quantizeTiles1x128(x, 2, 256);
  assert.deepEqual([...scaleInv], [Math.fround(1e-12 / 448), Math.fround(1e-12 / 448), Math.fround(3 / 448), Math.fround(3 / 448)]);
  assert.ok(codes.subarray(0, 256).every((c) => c === 0));
  assert.ok(codes.subarray(256).every((c) => c === 0x7e));
  assert.throws(() => quantizeWeightBlocks128(new Float32Array(10), 3, 4), /expected 12 elements, got 10/);
  assert.throws(() => dequantizeWeightBlocks128(new Uint8Array(12), new Float32Array(2), 3, 4), /scaleInv: expected 1/);
  assert.throws(() => dequantizeTiles1x128(new Uint8Array(12), new Float32Array(2), 3, 4), /scaleInv: expected 3/);
});
