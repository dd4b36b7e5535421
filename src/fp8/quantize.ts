// DeepSeek-V3's fine-grained FP8 quantization (SPEC §5) on host arrays: the exact CPU emulation the
// GPU kernels are checked against, and the converter of checkpoints to the FP8 layout.
//
// A tile's scale is chosen online from its own largest magnitude, so one outlier only costs
// precision inside its 128×128 weight block or its 1×128 activation tile:
//   scaleInv = max(amax, 1e-12) / 448            (or 2^ceil(log2(amax / 448)) with powerOfTwo)
//   code     = e4m3(x / scaleInv)                 (round to nearest even, saturating at ±448)
//   x'       = e4m3value(code) · scaleInv         (what the checkpoint's weight_scale_inv multiplies)
// scaleInv is a float32, and the quotient and product are rounded to float32, because that is what
// the GPU computes; the emulation is then bit-exact with a kernel doing x / s and q · s in FP32.

import { E4M3_MAX, e4m3BitsToFloat32, float32ToE4M3Bits } from '../tensor/fp8.js';

/** Edge length of a weight block and width of an activation tile. */
export const FP8_TILE = 128;

/** Keeps an all-zero tile from dividing by zero. */
const MIN_AMAX = 1e-12;

export interface QuantizeOptions {
  /** Round each scale up to a power of two, so that scaling is exact and only the rounding to FP8 loses bits. */
  powerOfTwo?: boolean;
}

export interface Fp8Quantized {
  /** E4M3 codes, same layout as the input [rows, cols]. */
  codes: Uint8Array;
  /** Float32 dequantization multipliers, row-major (see each function for the grid). */
  scaleInv: Float32Array;
}

/** The dequantization multiplier for a tile whose largest magnitude is amax. */
export function fp8ScaleInv(amax: number, options: QuantizeOptions = {}): number {
  const bounded = Math.max(amax, MIN_AMAX);
  if (!options.powerOfTwo || !Number.isFinite(bounded)) return Math.fround(bounded / E4M3_MAX);
  // The smallest 2^e with 448 · 2^e ≥ amax; log2 only guesses, the exact products decide.
  let e = Math.ceil(Math.log2(bounded / E4M3_MAX));
  while (E4M3_MAX * 2 ** (e - 1) >= bounded) e--;
  while (E4M3_MAX * 2 ** e < bounded) e++;
  return 2 ** e;
}

function tileCount(n: number): number {
  return Math.ceil(n / FP8_TILE);
}

function checkSize(what: string, array: ArrayLike<number>, expected: number): void {
  if (array.length !== expected) throw new Error(`${what}: expected ${expected} elements, got ${array.length}`);
}

/** Quantizes the rectangle [r0, r1) × [c0, c1) of a row-major [rows, cols] matrix with one scale. */
function quantizeRectangle(x: Float32Array, cols: number, r0: number, r1: number, c0: number, c1: number,
  codes: Uint8Array, options: QuantizeOptions): number {
  let amax = 0;
  for (let r = r0; r < r1; r++) {
    for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
  }
  const scaleInv = fp8ScaleInv(amax, options);
  for (let r = r0; r < r1; r++) {
    for (let c = c0; c < c1; c++) codes[r * cols + c] = float32ToE4M3Bits(Math.fround(x[r * cols + c]! / scaleInv));
  }
  return scaleInv;
}

/** Weights [rows, cols] → E4M3 codes and scaleInv [ceil(rows/128), ceil(cols/128)], one per 128×128 block. */
export function quantizeWeightBlocks128(w: Float32Array, rows: number, cols: number,
  options: QuantizeOptions = {}): Fp8Quantized {
  checkSize('quantizeWeightBlocks128 weights', w, rows * cols);
  const codes = new Uint8Array(rows * cols);
  const blockCols = tileCount(cols);
  const scaleInv = new Float32Array(tileCount(rows) * blockCols);
  for (let br = 0; br < tileCount(rows); br++) {
    for (let bc = 0; bc < blockCols; bc++) {
      scaleInv[br * blockCols + bc] = quantizeRectangle(w, cols, br * FP8_TILE, Math.min(rows, (br + 1) * FP8_TILE),
        bc * FP8_TILE, Math.min(cols, (bc + 1) * FP8_TILE), codes, options);
    }
  }
  return { codes, scaleInv };
}

/** value(i, j) = e4m3(codes[i, j]) · scaleInv[i/128][j/128], as float32 [rows, cols]. */
export function dequantizeWeightBlocks128(codes: Uint8Array, scaleInv: Float32Array, rows: number, cols: number): Float32Array {
  checkSize('dequantizeWeightBlocks128 codes', codes, rows * cols);
  const blockCols = tileCount(cols);
  checkSize('dequantizeWeightBlocks128 scaleInv', scaleInv, tileCount(rows) * blockCols);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const scaleRow = Math.floor(r / FP8_TILE) * blockCols;
    for (let c = 0; c < cols; c++) {
      out[r * cols + c] = e4m3BitsToFloat32(codes[r * cols + c]!) * scaleInv[scaleRow + Math.floor(c / FP8_TILE)]!;
    }
  }
  return out;
}

/** Activations [rows, cols] → E4M3 codes and scaleInv [rows, ceil(cols/128)], one per row per 128 columns. */
export function quantizeTiles1x128(x: Float32Array, rows: number, cols: number,
  options: QuantizeOptions = {}): Fp8Quantized {
  checkSize('quantizeTiles1x128 input', x, rows * cols);
  const codes = new Uint8Array(rows * cols);
  const tiles = tileCount(cols);
  const scaleInv = new Float32Array(rows * tiles);
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < tiles; t++) {
      scaleInv[r * tiles + t] = quantizeRectangle(x, cols, r, r + 1, t * FP8_TILE, Math.min(cols, (t + 1) * FP8_TILE), codes, options);
    }
  }
  return { codes, scaleInv };
}

/** value(i, j) = e4m3(codes[i, j]) · scaleInv[i][j/128], as float32 [rows, cols]. */
export function dequantizeTiles1x128(codes: Uint8Array, scaleInv: Float32Array, rows: number, cols: number): Float32Array {
  checkSize('dequantizeTiles1x128 codes', codes, rows * cols);
  const tiles = tileCount(cols);
  checkSize('dequantizeTiles1x128 scaleInv', scaleInv, rows * tiles);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      out[r * cols + c] = e4m3BitsToFloat32(codes[r * cols + c]!) * scaleInv[r * tiles + Math.floor(c / FP8_TILE)]!;
    }
  }
  return out;
}
