// Causal attention on the CPU, as GEMMs around a row softmax. The [Tq, Tk] score matrix of one
// head is materialised (fine on the CPU; the GPU kernel is the flash-style one).

import { gemm } from './gemm/index.js';
import type { FloatArray } from './cpu-tensor.js';

/** In place: row r of scores [rows, cols] keeps columns j < visible(r), softmaxed; the rest become 0. */
function causalSoftmaxRows(scores: FloatArray, rows: number, cols: number, visible: (r: number) => number): void {
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const end = Math.min(visible(r), cols);
    let max = -Infinity;
    for (let j = 0; j < end; j++) if (scores[base + j] > max) max = scores[base + j];
    let sum = 0;
    for (let j = 0; j < end; j++) {
      const e = Math.exp(scores[base + j] - max);
      scores[base + j] = e;
      sum += e;
    }
    const inv = end > 0 ? 1 / sum : 0;
    for (let j = 0; j < end; j++) scores[base + j] *= inv;
    for (let j = end; j < cols; j++) scores[base + j] = 0;
  }
}

/**
 * q [B, Tq, H, Dk], k [B, Tk, H, Dk], v [B, Tk, H, Dv] → out [B, Tq, H, Dv]; query i sees keys j ≤ qStart + i.
 * scratch holds at least Tq·Tk elements.
 */
export function causalAttention(
  q: FloatArray, k: FloatArray, v: FloatArray, out: FloatArray, scratch: FloatArray,
  dims: { B: number; Tq: number; Tk: number; H: number; Dk: number; Dv: number },
  scale: number, qStart: number,
): void {
  const { B, Tq, Tk, H, Dk, Dv } = dims;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      // scores[Tq, Tk] = scale · Q_bh K_bhᵀ
      gemm({
        transA: false, transB: true, m: Tq, n: Tk, k: Dk, alpha: scale, beta: 0,
        a: q, aOffset: (b * Tq * H + h) * Dk, lda: H * Dk,
        b: k, bOffset: (b * Tk * H + h) * Dk, ldb: H * Dk,
        c: scratch, cOffset: 0, ldc: Tk,
      } as Parameters<typeof gemm>[0]);
      causalSoftmaxRows(scratch, Tq, Tk, (i) => qStart + i + 1);
      // out_bh[Tq, Dv] = P V_bh
      gemm({
        transA: false, transB: false, m: Tq, n: Dv, k: Tk, alpha: 1, beta: 0,
        a: scratch, aOffset: 0, lda: Tk,
        b: v, bOffset: (b * Tk * H + h) * Dv, ldb: H * Dv,
        c: out, cOffset: (b * Tq * H + h) * Dv, ldc: H * Dv,
      } as Parameters<typeof gemm>[0]);
    }
  }
}

/**
 * Absorbed MLA attention over a latent cache (SPEC §2): qLat [B, Tq, H, C], qPe [B, Tq, H, R],
 * ckv [B, S, C], kpe [B, S, R], positions [B·Tq] → out [B, Tq, H, C]; token t of row b sees cache
 * positions 0..positions[b·Tq + t] (each < S). All heads of a batch row share the keys, so the
 * (token, head) pairs form one [Tq·H, ·] matrix. scratch holds at least Tq·H·(1 + the largest position).
 */
export function latentAttentionAt(
  qLat: FloatArray, qPe: FloatArray, ckv: FloatArray, kpe: FloatArray, out: FloatArray, scratch: FloatArray,
  dims: { B: number; Tq: number; H: number; C: number; R: number; S: number },
  scale: number, positions: Int32Array,
): void {
  const { B, Tq, H, C, R, S } = dims;
  const rows = Tq * H;
  for (let b = 0; b < B; b++) {
    const pos = positions.subarray(b * Tq, (b + 1) * Tq);
    // the columns any row of this batch row sees
    const kvLen = pos.reduce((m, p) => Math.max(m, p + 1), 0);
    if (kvLen === 0) {
      out.fill(0, b * rows * C, (b + 1) * rows * C);
      continue;
    }
    gemm({
      transA: false, transB: true, m: rows, n: kvLen, k: C, alpha: scale, beta: 0,
      a: qLat, aOffset: b * rows * C, lda: C,
      b: ckv, bOffset: b * S * C, ldb: C,
      c: scratch, cOffset: 0, ldc: kvLen,
    } as Parameters<typeof gemm>[0]);
    gemm({
      transA: false, transB: true, m: rows, n: kvLen, k: R, alpha: scale, beta: 1,
      a: qPe, aOffset: b * rows * R, lda: R,
      b: kpe, bOffset: b * S * R, ldb: R,
      c: scratch, cOffset: 0, ldc: kvLen,
    } as Parameters<typeof gemm>[0]);
    causalSoftmaxRows(scratch, rows, kvLen, (r) => pos[Math.floor(r / H)] + 1);
    gemm({
      transA: false, transB: false, m: rows, n: C, k: kvLen, alpha: 1, beta: 0,
      a: scratch, aOffset: 0, lda: kvLen,
      b: ckv, bOffset: b * S * C, ldb: C,
      c: out, cOffset: b * rows * C, ldc: C,
    } as Parameters<typeof gemm>[0]);
  }
}

/**
 * latentAttentionAt for contiguous positions: token t of every row at qStart + t, seeing positions
 * j ≤ qStart + t with j < kvLen (the reference of the MLA decode kernel's tests). scratch holds at
 * least Tq·H·kvLen elements.
 */
export function latentAttention(
  qLat: FloatArray, qPe: FloatArray, ckv: FloatArray, kpe: FloatArray, out: FloatArray, scratch: FloatArray,
  dims: { B: number; Tq: number; H: number; C: number; R: number; S: number },
  scale: number, qStart: number, kvLen: number,
): void {
  const positions = Int32Array.from({ length: dims.B * dims.Tq }, (_, i) => Math.min(qStart + (i % dims.Tq), kvLen - 1));
  latentAttentionAt(qLat, qPe, ckv, kpe, out, scratch, dims, scale, positions);
}
