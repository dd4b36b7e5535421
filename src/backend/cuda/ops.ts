// Launchers for the kernels in kernels/*.cu on raw device pointers: each checks its sizes,
// picks the launch shape and enqueues on the context's stream. The CUDA backend wraps these
// with tensors, allocation and shape checks; the GPU tests call them directly.

import type { CudaContext } from './context.js';
import { kernel } from './kernels.js';
import { moeCapacity, type AdamWHyper, type MoePadding, type RouterConfig } from '../backend.js';

/** Storage type of a float buffer. */
export type FloatKind = 'bf16' | 'f32';

export const FLOAT_BYTES: Record<FloatKind, number> = { bf16: 2, f32: 4 };

const BLOCK = 256;

function roundUp(x: number, m: number): number {
  return Math.ceil(x / m) * m;
}

/** Threads for a row of `n` elements handled `perThread` at a time: a multiple of 32 in [32, max]. */
function rowThreads(n: number, perThread: number, max: number): number {
  return Math.min(max, Math.max(32, roundUp(Math.ceil(n / perThread), 32)));
}

/** Blocks of BLOCK threads for a grid-stride loop over n elements, `perThread` each. */
function gridFor(ctx: CudaContext, n: number, perThread: number): number {
  return Math.max(1, Math.min(Math.ceil(n / (BLOCK * perThread)), ctx.smCount * 32));
}

function vec(t: FloatKind): number {
  return 16 / FLOAT_BYTES[t];
}

/** y = a + b over n elements. */
export function add(ctx: CudaContext, t: FloatKind, a: number, b: number, y: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, t === 'bf16' ? 'add_bf16' : 'add_f32').launch(ctx.stream, gridFor(ctx, n, vec(t)), BLOCK, 0, [a, b, y, n]);
}

/** a += alpha · b over n elements. */
export function addInPlace(ctx: CudaContext, t: FloatKind, a: number, b: number, alpha: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, t === 'bf16' ? 'add_inplace_bf16' : 'add_inplace_f32').launch(ctx.stream, gridFor(ctx, n, vec(t)), BLOCK, 0, [a, b, alpha, n]);
}

export function castF32ToBf16(ctx: CudaContext, x: number, y: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, 'cast_f32_to_bf16').launch(ctx.stream, gridFor(ctx, n, 4), BLOCK, 0, [x, y, n]);
}

export function castBf16ToF32(ctx: CudaContext, x: number, y: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, 'cast_bf16_to_f32').launch(ctx.stream, gridFor(ctx, n, 4), BLOCK, 0, [x, y, n]);
}

/** y = silu(gate) · up over n elements. */
export function swiglu(ctx: CudaContext, t: FloatKind, gate: number, up: number, y: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, t === 'bf16' ? 'swiglu_bf16' : 'swiglu_f32').launch(ctx.stream, gridFor(ctx, n, vec(t)), BLOCK, 0, [gate, up, y, n]);
}

/** y[rows, d] = x · w / sqrt(mean(x²) + eps), one block per row. */
export function rmsNorm(ctx: CudaContext, t: FloatKind, x: number, w: number, y: number, rows: number, d: number, eps: number): void {
  if (rows === 0 || d === 0) return;
  // four 16-byte vectors per thread: a row stays in registers between its two passes (rmsnorm.cu)
  const threads = rowThreads(d, 4 * vec(t), 1024);
  kernel(ctx, t === 'bf16' ? 'rmsnorm_bf16' : 'rmsnorm_f32').launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), threads, 0, [x, w, y, rows, d, eps]);
}

/** y[n, d] = table[ids[n], :] (table [vocab, d], ids i32). */
export function embedding(ctx: CudaContext, t: FloatKind, table: number, ids: number, y: number, n: number, d: number, vocab: number): void {
  if (n === 0 || d === 0) return;
  kernel(ctx, t === 'bf16' ? 'embedding_bf16' : 'embedding_f32').launch(ctx.stream, n, rowThreads(d, vec(t), 256), 0, [table, ids, y, n, d, vocab]);
}

/**
 * Interleaved RoPE on x [N, H, W] columns [off, off+rot) of every head → y (see rope.cu);
 * cos/sin tables [P, rot/2] of type `tables`; `inverse` rotates by the negated angle.
 */
export function rope(ctx: CudaContext, t: FloatKind, tables: FloatKind, x: number, cos: number, sin: number, positions: number, y: number,
  N: number, H: number, W: number, off: number, rot: number, P: number, inverse = false): void {
  if (rot % 2 !== 0 || off < 0 || off + rot > W) throw new Error(`rope: rotating columns [${off}, ${off + rot}) of ${W} (rot must be even)`);
  if (N === 0) return;
  let name: 'rope_bf16' | 'rope_bf16_f32tab' | 'rope_f32';
  if (t === 'f32') {
    if (tables !== 'f32') throw new Error('rope: f32 activations need f32 cos/sin tables');
    name = 'rope_f32';
  } else {
    name = tables === 'bf16' ? 'rope_bf16' : 'rope_bf16_f32tab';
  }
  kernel(ctx, name).launch(ctx.stream, N, rowThreads(H * W, 1, 256), 0, [x, cos, sin, positions, y, N, H, W, off, rot, P, inverse ? -1 : 1]);
}

/**
 * dst[b][r][c] = src[b][r][c] for b < batches, r < rows, c < cols (row strides srcLd/dstLd and
 * batch strides in elements of `elemBytes` ∈ {2, 4}; pointers already offset to the first element).
 */
export function copy2d(ctx: CudaContext, elemBytes: number, src: number, srcLd: number, srcBatch: number, dst: number, dstLd: number, dstBatch: number,
  rows: number, cols: number, batches = 1): void {
  if (rows === 0 || cols === 0 || batches === 0) return;
  if (elemBytes !== 2 && elemBytes !== 4) throw new Error(`copy2d: ${elemBytes}-byte elements`);
  const e = elemBytes;
  const byteValues = [src, dst, srcLd * e, dstLd * e, cols * e, ...(batches > 1 ? [srcBatch * e, dstBatch * e] : [])];
  const wordBytes = [16, 8, 4, 2].find((w) => byteValues.every((v) => v % w === 0))!;
  const words = (batches * rows * cols * e) / wordBytes;
  kernel(ctx, 'copy_2d').launch(ctx.stream, gridFor(ctx, words, 1), BLOCK, 0,
    [src, srcLd * e, srcBatch * e, dst, dstLd * e, dstBatch * e, rows, batches, cols * e, wordBytes]);
}

/** Router top-k (router.cu): logits [N, E] → scores [N, E] f32, indices [N, K] i32, weights [N, K] f32. */
export function routerTopK(ctx: CudaContext, logitsType: FloatKind, biasType: FloatKind, logits: number, bias: number, scores: number, indices: number,
  weights: number, N: number, E: number, cfg: RouterConfig): void {
  const K = cfg.topK;
  if (E > 1024) throw new Error(`routerTopK: ${E} experts (the kernel handles at most 1024)`);
  if (K < 1 || K > 32 || K > E) throw new Error(`routerTopK: top-${K} of ${E} experts (K must be in [1, min(32, E)])`);
  const grouped = cfg.groupLimited && cfg.nGroup > 1;
  if (grouped && (cfg.nGroup > 32 || E % cfg.nGroup !== 0 || cfg.topkGroup < 1 || cfg.topkGroup > cfg.nGroup)) {
    throw new Error(`routerTopK: ${E} experts in ${cfg.nGroup} groups keeping ${cfg.topkGroup} (at most 32 groups, dividing E)`);
  }
  if (grouped && (E / cfg.nGroup) * cfg.topkGroup < K) throw new Error(`routerTopK: ${cfg.topkGroup} groups of ${E / cfg.nGroup} experts hold fewer than ${K}`);
  if (N === 0) return;
  const warps = 4;
  const shared = warps * 2 * E * 4;
  const name = `router_topk_${logitsType}_${biasType}` as const;
  kernel(ctx, name).launch(ctx.stream, Math.ceil(N / warps), warps * 32, shared, [
    logits, bias, scores, indices, weights, N, E, K, grouped ? cfg.nGroup : 1, grouped ? cfg.topkGroup : 1,
    cfg.scoring === 'softmax' ? 1 : 0, grouped ? 1 : 0, cfg.groupScoreTop2 ? 1 : 0, cfg.normTopkProb ? 1 : 0, cfg.routedScalingFactor,
  ]);
}

export interface DevicePermutation {
  /** [rows, d] rows grouped by expert (caller frees). */
  rows: number;
  /** [rows] i32: sorted row → slot n·K + k, −1 for a padding row (caller frees). */
  sourceSlot: number;
  /** Host copy of the rows per expert, or null with a fixed capacity (nothing read back). */
  counts: number[] | null;
  /** Rows per expert when padded (see moeCapacity, or the fixed capacity), else null: the rows are packed. */
  capacity: number | null;
  /** N·K packed, E·capacity padded. */
  nRows: number;
}

/**
 * Stable counting sort of the N·K slots of `indices` [N, K] by expert, and the gathered rows of
 * x [N, d]: packed (expert after expert), or padded to `capacity` rows per expert when `padding`
 * allows it for these counts (padding rows zero, their sourceSlot −1). The counts come to the host
 * (a synchronisation) before the scatter, so an expert index outside [0, E) is reported instead
 * of gathering from unwritten slots. With `fixed` nothing comes to the host (graph capture): the
 * rows are padded to fixed.capacity per expert, and the slots that do not fit (an expert's past
 * its first capacity, in slot order, and those of an index outside [0, E)) are dropped: their
 * number is added to the i32 at fixed.stats, and the largest count raises the i32 after it.
 */
export function moePermute(ctx: CudaContext, t: FloatKind, x: number, indices: number, N: number, K: number, d: number, E: number,
  padding?: MoePadding, fixed?: { capacity: number; stats: number }): DevicePermutation {
  const nk = N * K;
  if (fixed && !(Number.isInteger(fixed.capacity) && fixed.capacity > 0)) throw new Error(`moePermute: fixed capacity ${fixed.capacity} (a positive integer)`);
  const counts = ctx.alloc(4 * Math.max(E, 1));
  let hostCounts: number[] | null = null, sourceSlot = 0, capacity = fixed?.capacity ?? null, nRows = nk;
  try {
    if (E > 0) kernel(ctx, 'moe_count').launch(ctx.stream, E, 256, 0, [indices, nk, counts]);
    if (!fixed) {
      const read = new Int32Array(E);
      ctx.copyToHost(read, counts, 4 * E);
      const total = read.reduce((a, c) => a + c, 0);
      if (total !== nk) throw new Error(`moePermute: ${nk - total} of ${nk} expert indices are outside [0, ${E})`);
      hostCounts = [...read];
      capacity = padding ? moeCapacity(hostCounts, nk, padding) : null;
    }
    if (capacity !== null) nRows = E * capacity;
    sourceSlot = ctx.alloc(4 * nRows);
    if (capacity !== null) ctx.memset8(sourceSlot, 0xff, 4 * nRows); // −1: no slot
    if (E > 0 && nk > 0) kernel(ctx, 'moe_scatter').launch(ctx.stream, E, 256, 0, [indices, nk, counts, capacity ?? 0, sourceSlot, fixed?.stats ?? 0]);
  } catch (e) {
    ctx.free(sourceSlot);
    throw e;
  } finally {
    ctx.free(counts);
  }
  const rows = ctx.alloc(FLOAT_BYTES[t] * nRows * d);
  if (nRows > 0 && d > 0) {
    kernel(ctx, t === 'bf16' ? 'moe_gather_bf16' : 'moe_gather_f32').launch(ctx.stream, Math.min(nRows, 2 ** 31 - 1), rowThreads(d, vec(t), 256), 0, [x, sourceSlot, rows, nRows, K, d]);
  }
  return { rows, sourceSlot, counts: hostCounts, capacity, nRows };
}

/**
 * rowOfSlot [N·K] i32 (caller frees): the row of each slot in sourceSlot [nRows], −1 for a slot
 * without one (dropped by a fixed capacity).
 */
function invertPermutation(ctx: CudaContext, sourceSlot: number, nRows: number, nk: number): number {
  const rowOfSlot = ctx.alloc(4 * nk);
  ctx.memset8(rowOfSlot, 0xff, 4 * nk);
  if (nRows > 0) kernel(ctx, 'moe_invert').launch(ctx.stream, Math.min(Math.ceil(nRows / 256), ctx.smCount * 32), 256, 0, [sourceSlot, nRows, rowOfSlot]);
  return rowOfSlot;
}

/**
 * y[n] = Σ_k weights[n, k] · expertOut[row of slot n·K + k] → y [N, d]; expertOut [nRows, d] (padded:
 * some rows without a slot; with a fixed capacity, some slots without a row, which add nothing).
 */
export function moeUnpermute(ctx: CudaContext, t: FloatKind, weightType: FloatKind, expertOut: number, sourceSlot: number, weights: number, y: number,
  N: number, K: number, d: number, nRows = N * K): void {
  if (K > 64) throw new Error(`moeUnpermute: ${K} experts per token (at most 64)`);
  const nk = N * K;
  if (nk === 0 || d === 0) return;
  const rowOfSlot = invertPermutation(ctx, sourceSlot, nRows, nk);
  let name: 'moe_combine_bf16_f32w' | 'moe_combine_bf16_bf16w' | 'moe_combine_f32_f32w';
  if (t === 'f32') {
    if (weightType !== 'f32') throw new Error('moeUnpermute: f32 rows need f32 weights');
    name = 'moe_combine_f32_f32w';
  } else {
    name = weightType === 'f32' ? 'moe_combine_bf16_f32w' : 'moe_combine_bf16_bf16w';
  }
  kernel(ctx, name).launch(ctx.stream, Math.min(N, 2 ** 31 - 1), rowThreads(d, 1, 256), 0, [expertOut, rowOfSlot, weights, y, N, K, d]);
  ctx.free(rowOfSlot);
}

/** load [E] FP32 += the number of the nk slots of indices (i32) routed to each expert (moe_expert_load). */
export function expertLoadInto(ctx: CudaContext, indices: number, nk: number, load: number, E: number): void {
  if (E > 0) kernel(ctx, 'moe_expert_load').launch(ctx.stream, E, 256, 0, [indices, nk, load]);
}

/** bias [E] FP32 += gamma · sign(mean(load) − load) for load [E] FP32, in place (moe_bias_update). */
export function correctionBiasUpdate(ctx: CudaContext, bias: number, load: number, E: number, gamma: number): void {
  if (E > 0) kernel(ctx, 'moe_bias_update').launch(ctx.stream, 1, 256, 0, [bias, load, E, gamma]);
}

export interface AttentionShape {
  B: number;
  Tq: number;
  /** Keys in use (kvLen). */
  Tk: number;
  /** Capacity of the key tensors' sequence dimension (S ≥ Tk). */
  S: number;
  H: number;
  /** Key heads: H (multi-head) or 1 (one latent head shared by all query heads). */
  Hk: number;
  D1: number;
  D2: number;
  Dv: number;
}

/**
 * Causal attention (attention.cu): score = (q1·k1 + q2·k2)·scale, out = Σ p v; pass q2 = k2 = 0 when
 * D2 = 0. Query i of batch row b sits at positions[b·Tq + i] (positions [B·Tq] i32 on the device),
 * or at qStart + i when positions is 0.
 */
export function attention(ctx: CudaContext, t: FloatKind, q1: number, q2: number, k1: number, k2: number, v: number, out: number, s: AttentionShape,
  scale: number, qStart: number, positions = 0): void {
  if (s.Dv > 512) throw new Error(`attention: value width ${s.Dv} (the kernel handles at most 512)`);
  if (s.Tk > s.S) throw new Error(`attention: ${s.Tk} keys in a cache of ${s.S}`);
  if (s.Hk !== 1 && s.Hk !== s.H) throw new Error(`attention: ${s.Hk} key heads for ${s.H} query heads (must be 1 or equal)`);
  const rows = s.B * s.Tq * s.H;
  if (rows === 0 || s.Dv === 0) return;
  const warps = 4;
  const shared = warps * (s.D1 + s.D2) * 4;
  const fn = kernel(ctx, t === 'bf16' ? 'attention_fwd_bf16' : 'attention_fwd_f32');
  if (shared > 48 * 1024) {
    if (shared > ctx.maxSharedMemoryPerBlockOptin) throw new Error(`attention: key width ${s.D1 + s.D2} needs ${shared} bytes of shared memory`);
    fn.setMaxDynamicSharedBytes(shared);
  }
  fn.launch(ctx.stream, Math.ceil(rows / warps), warps * 32, shared, [q1, q2, k1, k2, v, out, s.B, s.Tq, s.Tk, s.S, s.H, s.Hk, s.D1, s.D2, s.Dv, scale, qStart, positions]);
}

/**
 * The latent cache's writes (attention.cu): row t of batch row b of src [B, T, C] to row
 * positions[b·T + t] of dst [B, S, C] (positions [B·T] i32 on the device; one outside [0, S) is
 * left out), moving raw `elemBytes`-byte words.
 */
export function cacheWrite(ctx: CudaContext, elemBytes: number, src: number, positions: number, dst: number, B: number, T: number, S: number, C: number): void {
  const rows = B * T;
  if (rows === 0 || C === 0) return;
  const name = elemBytes === 2 ? 'cache_write_b16' : elemBytes === 4 ? 'cache_write_b32' : undefined;
  if (!name) throw new Error(`cacheWrite: ${elemBytes}-byte elements`);
  kernel(ctx, name).launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), rowThreads(C, 16 / elemBytes, 256), 0, [src, positions, dst, rows, T, S, C]);
}

/** Device tables of the E experts' weight addresses, one per projection (u64 each). */
export interface ExpertTables {
  gate: number;
  up: number;
  down: number;
}

/** Output rows per block of the moe_direct kernels: two per warp, so that a few experts' rows still spread over the GPU. */
const MOE_DIRECT_ROWS_PER_BLOCK = 16;

/**
 * The routed experts of N tokens straight from the routing (moe-decode.cu, then moe_combine):
 * x [N, d] (type t), indices [N, K] i32, gating weights [N, K] (type gatingType), the E experts'
 * gate and up [I, d] and down [d, I] (type expertType, addressed through `tables`) →
 * y [N, d] (type t) = Σ_k weights[n, k] · down(silu(gate x_n) · up x_n), summed in slot order.
 * `slotOrder` holds 0, 1, 2, … (at least N·K of them): the slots' rows are already in slot order.
 */
export function moeExpertsDirect(ctx: CudaContext, t: FloatKind, expertType: FloatKind, gatingType: FloatKind, x: number, indices: number, weights: number,
  tables: ExpertTables, slotOrder: number, y: number, N: number, K: number, E: number, d: number, I: number): void {
  const slots = N * K;
  if (slots === 0 || d === 0) return;
  const shared = 4 * (E + slots);
  if (shared > 48 * 1024) throw new Error(`moeExpertsDirect: ${E} experts and ${slots} slots need ${shared} bytes of shared memory (at most 48 KiB)`);
  let variant: 'bf16_bf16w' | 'bf16_f32w' | 'f32_f32w';
  if (t === 'f32') {
    if (expertType !== 'f32') throw new Error('moeExpertsDirect: f32 activations need f32 expert weights');
    variant = 'f32_f32w';
  } else {
    variant = expertType === 'bf16' ? 'bf16_bf16w' : 'bf16_f32w';
  }
  const act = ctx.alloc(FLOAT_BYTES[t] * slots * I);
  const out = ctx.alloc(FLOAT_BYTES[t] * slots * d);
  try {
    // rows of a slot whose expert index is out of range are never written: let them add nothing
    ctx.memset8(out, 0, FLOAT_BYTES[t] * slots * d);
    const experts = Math.min(E, slots);
    if (I > 0) {
      kernel(ctx, `moe_direct_up_${variant}` as const).launch(ctx.stream, [experts, Math.ceil(I / MOE_DIRECT_ROWS_PER_BLOCK)], 256, shared,
        [x, indices, tables.gate, tables.up, act, slots, K, E, I, d, MOE_DIRECT_ROWS_PER_BLOCK]);
      kernel(ctx, `moe_direct_down_${variant}` as const).launch(ctx.stream, [experts, Math.ceil(d / MOE_DIRECT_ROWS_PER_BLOCK)], 256, shared,
        [act, indices, tables.down, out, slots, E, d, I, MOE_DIRECT_ROWS_PER_BLOCK]);
    }
    moeUnpermute(ctx, t, gatingType, out, slotOrder, weights, y, N, K, d);
  } finally {
    ctx.free(act);
    ctx.free(out);
  }
}

// ---- training: backward passes, losses, optimizer ------------------------------------

/** y[rows, d] = x · w / sqrt(mean(x²) + eps) for BF16 x and y with an FP32 weight w (master weights). */
export function rmsNormF32Weight(ctx: CudaContext, x: number, w: number, y: number, rows: number, d: number, eps: number): void {
  if (rows === 0 || d === 0) return;
  kernel(ctx, 'rmsnorm_bf16_f32w').launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), rowThreads(d, 4 * vec('bf16'), 1024), 0, [x, w, y, rows, d, eps]);
}

/** y[n, d] (BF16) = table[ids[n], :] from an FP32 table [vocab, d]. */
export function embeddingF32ToBf16(ctx: CudaContext, table: number, ids: number, y: number, n: number, d: number, vocab: number): void {
  if (n === 0 || d === 0) return;
  kernel(ctx, 'embedding_f32_to_bf16').launch(ctx.stream, Math.min(n, 2 ** 31 - 1), rowThreads(d, 1, 256), 0, [table, ids, y, n, d, vocab]);
}

/** x *= alpha over n elements, in place (alpha = 0 writes zeros without reading x). */
export function scale(ctx: CudaContext, t: FloatKind, x: number, alpha: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, t === 'bf16' ? 'scale_bf16' : 'scale_f32').launch(ctx.stream, gridFor(ctx, n, 4), BLOCK, 0, [x, alpha, n]);
}

/** dx [rows, d] of RMSNorm from x, dy [rows, d] (type t) and the FP32 weight w [d]. */
export function rmsNormBackwardInput(ctx: CudaContext, t: FloatKind, x: number, w: number, dy: number, dx: number, rows: number, d: number, eps: number): void {
  if (rows === 0 || d === 0) return;
  kernel(ctx, t === 'bf16' ? 'rmsnorm_bwd_input_bf16' : 'rmsnorm_bwd_input_f32')
    .launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), rowThreads(d, 1, 1024), 0, [x, w, dy, dx, rows, d, eps]);
}

/**
 * dw[d] += Σ_rows dy · x / rms(x) (x, dy [rows, d] of type t; dw of type dwType), summed in a fixed
 * order: per-row 1/rms, per-chunk column sums, then the chunks in order.
 */
export function rmsNormBackwardWeight(ctx: CudaContext, t: FloatKind, dwType: FloatKind, x: number, dy: number, dw: number, rows: number, d: number, eps: number): void {
  if (rows === 0 || d === 0) return;
  const rowsPerChunk = Math.max(32, Math.ceil(rows / 1024));
  const chunks = Math.ceil(rows / rowsPerChunk);
  const rinv = ctx.alloc(4 * rows);
  const partial = ctx.alloc(4 * chunks * d);
  kernel(ctx, t === 'bf16' ? 'rms_inv_bf16' : 'rms_inv_f32').launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), rowThreads(d, 1, 1024), 0, [x, rinv, rows, d, eps]);
  kernel(ctx, t === 'bf16' ? 'rmsnorm_bwd_weight_partial_bf16' : 'rmsnorm_bwd_weight_partial_f32')
    .launch(ctx.stream, [Math.ceil(d / BLOCK), chunks], BLOCK, 0, [x, dy, rinv, partial, rows, d, rowsPerChunk]);
  kernel(ctx, dwType === 'bf16' ? 'column_sum_add_bf16' : 'column_sum_add_f32').launch(ctx.stream, Math.ceil(d / BLOCK), BLOCK, 0, [partial, chunks, d, dw]);
  ctx.free(rinv);
  ctx.free(partial);
}

/** dGate, dUp [n] of y = silu(gate) · up from dy [n]. */
export function swigluBackward(ctx: CudaContext, t: FloatKind, gate: number, up: number, dy: number, dGate: number, dUp: number, n: number): void {
  if (n === 0) return;
  kernel(ctx, t === 'bf16' ? 'swiglu_bwd_bf16' : 'swiglu_bwd_f32').launch(ctx.stream, gridFor(ctx, n, 4), BLOCK, 0, [gate, up, dy, dGate, dUp, n]);
}

/** dTable[ids[i], :] += dy[i, :] (dy [n, d] of type t, dTable [vocab, d] FP32; atomicAdd). */
export function embeddingBackward(ctx: CudaContext, t: FloatKind, ids: number, dy: number, dTable: number, n: number, d: number, vocab: number): void {
  if (n === 0 || d === 0) return;
  kernel(ctx, t === 'bf16' ? 'embedding_bwd_bf16' : 'embedding_bwd_f32').launch(ctx.stream, Math.min(n, 2 ** 31 - 1), rowThreads(d, 1, 256), 0, [ids, dy, dTable, n, d, vocab]);
}

/** dst[r, start + c] += src[r, c]: dst [M, C], src [M, W], one type. */
export function addToCols(ctx: CudaContext, t: FloatKind, dst: number, src: number, M: number, C: number, W: number, start: number): void {
  if (start < 0 || start + W > C) throw new Error(`addToCols: columns [${start}, ${start + W}) of ${C}`);
  if (M === 0 || W === 0) return;
  kernel(ctx, t === 'bf16' ? 'add_to_cols_bf16' : 'add_to_cols_f32').launch(ctx.stream, gridFor(ctx, M * W, 1), BLOCK, 0, [dst, src, M, C, W, start]);
}

/** y[n, c] = Σ_h x[n, h, c]: x [N, H, C] → y [N, C]. */
export function sumHeads(ctx: CudaContext, t: FloatKind, x: number, y: number, N: number, H: number, C: number): void {
  if (N === 0 || C === 0) return;
  kernel(ctx, t === 'bf16' ? 'sum_heads_bf16' : 'sum_heads_f32').launch(ctx.stream, gridFor(ctx, N * C, 1), BLOCK, 0, [x, y, N, H, C]);
}

export interface AttentionBackwardShape {
  B: number;
  Tq: number;
  Tk: number;
  H: number;
  Dk: number;
  Dv: number;
}

/**
 * Causal attention backward (attention-backward.cu): q, out, dOut, dq of type t; dk, dv FP32
 * accumulators that this function zeroes first (atomicAdd targets).
 */
export function attentionBackward(ctx: CudaContext, t: FloatKind, q: number, k: number, v: number, out: number, dOut: number, dq: number, dk: number, dv: number,
  s: AttentionBackwardShape, scale: number, qStart: number): void {
  if (s.Dk > 512 || s.Dv > 512) throw new Error(`attentionBackward: head widths ${s.Dk}/${s.Dv} (the kernel handles at most 512)`);
  ctx.memset8(dk, 0, 4 * s.B * s.Tk * s.H * s.Dk);
  ctx.memset8(dv, 0, 4 * s.B * s.Tk * s.H * s.Dv);
  const rows = s.B * s.Tq * s.H;
  if (rows === 0) return;
  const warps = 4;
  const shared = warps * (s.Dk + s.Dv) * 4;
  const fn = kernel(ctx, t === 'bf16' ? 'attention_bwd_bf16' : 'attention_bwd_f32');
  if (shared > 48 * 1024) {
    if (shared > ctx.maxSharedMemoryPerBlockOptin) throw new Error(`attentionBackward: head widths ${s.Dk}/${s.Dv} need ${shared} bytes of shared memory`);
    fn.setMaxDynamicSharedBytes(shared);
  }
  fn.launch(ctx.stream, Math.ceil(rows / warps), warps * 32, shared, [q, k, v, out, dOut, dq, dk, dv, s.B, s.Tq, s.Tk, s.H, s.Dk, s.Dv, scale, qStart]);
}

/**
 * Backward of moeUnpermute: dy [N, d], expertOut [nRows, d] (type t), sourceSlot [nRows], weights
 * [N, K] FP32 → dExpertOut [nRows, d] (type t; zero in padding rows), dWeights [N, K] FP32 (zero
 * for a slot without a row: dropped by a fixed capacity).
 */
export function moeUnpermuteBackward(ctx: CudaContext, t: FloatKind, dy: number, expertOut: number, sourceSlot: number, weights: number, dExpertOut: number,
  dWeights: number, N: number, K: number, d: number, nRows = N * K): void {
  ctx.memset8(dWeights, 0, 4 * N * K);
  if (nRows === 0) return;
  kernel(ctx, t === 'bf16' ? 'moe_unpermute_bwd_bf16' : 'moe_unpermute_bwd_f32')
    .launch(ctx.stream, Math.min(nRows, 2 ** 31 - 1), rowThreads(d, 1, 256), 0, [dy, expertOut, sourceSlot, weights, dExpertOut, dWeights, nRows, K, d]);
}

/** Backward of moePermute: dRows [nRows, d] → dx [N, d], each token's K rows summed in slot order (padding rows ignored). */
export function moePermuteBackward(ctx: CudaContext, t: FloatKind, dRows: number, sourceSlot: number, dx: number, N: number, K: number, d: number,
  nRows = N * K): void {
  const nk = N * K;
  if (N === 0 || d === 0) return;
  if (K === 0) {
    ctx.memset8(dx, 0, FLOAT_BYTES[t] * N * d);
    return;
  }
  const rowOfSlot = invertPermutation(ctx, sourceSlot, nRows, nk);
  kernel(ctx, t === 'bf16' ? 'moe_permute_bwd_bf16' : 'moe_permute_bwd_f32').launch(ctx.stream, Math.min(N, 2 ** 31 - 1), rowThreads(d, 1, 256), 0, [dRows, rowOfSlot, dx, N, K, d]);
  ctx.free(rowOfSlot);
}

/**
 * Router backward (router-backward.cu): scores [N, E] FP32, indices [N, K] i32, dWeights [N, K]
 * FP32, dScores [N, E] FP32 or 0 → dLogits [N, E] of type t.
 */
export function routerBackward(ctx: CudaContext, t: FloatKind, scores: number, indices: number, dWeights: number, dScores: number, dLogits: number,
  N: number, E: number, cfg: RouterConfig): void {
  const K = cfg.topK;
  if (E > 1024) throw new Error(`routerBackward: ${E} experts (the kernel handles at most 1024)`);
  if (K < 1 || K > 32 || K > E) throw new Error(`routerBackward: top-${K} of ${E} experts (K must be in [1, min(32, E)])`);
  if (N === 0) return;
  const warps = 4;
  kernel(ctx, t === 'bf16' ? 'router_bwd_bf16' : 'router_bwd_f32').launch(ctx.stream, Math.ceil(N / warps), warps * 32, warps * E * 4, [
    scores, indices, dWeights, dScores, dLogits, N, E, K, cfg.normTopkProb ? 1 : 0, cfg.scoring === 'softmax' ? 1 : 0, cfg.routedScalingFactor,
  ]);
}

/** out[r] += Σ_{c<cols} x[r·cols + c] for r < rows, on the device (FP32 in and out, summed in FP64 in a fixed order). */
function addRowSums(ctx: CudaContext, x: number, rows: number, cols: number, out: number): void {
  if (rows === 0 || cols === 0) return;
  kernel(ctx, 'add_row_sums_f32').launch(ctx.stream, Math.min(rows, 2 ** 31 - 1), 1024, 0, [x, rows, cols, out]);
}

/**
 * Sequence-wise balance loss (router-backward.cu) of `batch` sequences of `seq` tokens: scores
 * [N, E] FP32, indices [N, K] → dScores [N, E] FP32 (written), and sum[0] += the loss (FP32, on the device).
 */
export function sequenceBalanceLoss(ctx: CudaContext, scores: number, indices: number, dScores: number, batch: number, seq: number, E: number, K: number,
  alpha: number, sum: number): void {
  if (E > 8192) throw new Error(`sequenceBalanceLoss: ${E} experts (at most 8192)`);
  if (batch === 0 || seq === 0) return;
  const tokensPerBlock = 64;
  const blocksPerSeq = Math.ceil(seq / tokensPerBlock);
  const counts = ctx.alloc(4 * batch * E), lossPart = ctx.alloc(4 * batch * blocksPerSeq);
  try {
    ctx.memset8(counts, 0, 4 * batch * E);
    const countBlocks = Math.min(Math.ceil((seq * K) / 1024), 64);
    kernel(ctx, 'balance_counts').launch(ctx.stream, [countBlocks, batch], 256, 4 * E, [indices, counts, seq, E, K]);
    kernel(ctx, 'sequence_balance_loss').launch(ctx.stream, [blocksPerSeq, batch], 256, 4 * E,
      [scores, counts, dScores, lossPart, batch, seq, E, K, tokensPerBlock, alpha]);
    addRowSums(ctx, lossPart, 1, batch * blocksPerSeq, sum);
  } finally {
    ctx.free(counts);
    ctx.free(lossPart);
  }
}

/**
 * Fused cross-entropy (loss.cu): logits [M, V] of type t, targets [M] i32 (< 0: none) → dLogits
 * [M, V] of type t, and on the device sums[0] += the summed loss (NaN when a target is ≥ V),
 * sums[1] += the rows with a target (sums FP32 [2]).
 */
export function crossEntropy(ctx: CudaContext, t: FloatKind, logits: number, targets: number, dLogits: number, M: number, V: number, scale: number,
  sums: number): void {
  if (M === 0) return;
  const rowStats = ctx.alloc(4 * 2 * M);
  try {
    kernel(ctx, t === 'bf16' ? 'cross_entropy_bf16' : 'cross_entropy_f32')
      .launch(ctx.stream, Math.min(M, 2 ** 31 - 1), rowThreads(V, 4, 1024), 0, [logits, targets, dLogits, rowStats, M, V, scale]);
    addRowSums(ctx, rowStats, 2, M, sums);
  } finally {
    ctx.free(rowStats);
  }
}

/** Σ x² over n elements of type t, accumulated in FP64 in a fixed order, downloaded. */
export function sumSquares(ctx: CudaContext, t: FloatKind, x: number, n: number): number {
  if (n === 0) return 0;
  const blocks = Math.max(1, Math.min(Math.ceil(n / (BLOCK * 8)), 1024));
  const partial = ctx.alloc(8 * blocks);
  kernel(ctx, t === 'bf16' ? 'sum_squares_bf16' : 'sum_squares_f32').launch(ctx.stream, blocks, BLOCK, 0, [x, n, partial]);
  return downloadSum(ctx, partial, blocks);
}

/** The sum of `count` FP64 partials (sum_f64, in a fixed order), downloaded; frees `partial`. */
function downloadSum(ctx: CudaContext, partial: number, count: number): number {
  const total = ctx.alloc(8);
  try {
    kernel(ctx, 'sum_f64').launch(ctx.stream, 1, 1024, 0, [partial, count, total]);
    const out = new Float64Array(1);
    ctx.copyToHost(out, total);
    return out[0]!;
  } finally {
    ctx.free(partial);
    ctx.free(total);
  }
}

/** One tensor of a multi-tensor launch: its address, element count and the kernel's extra word. */
export interface MultiTensorEntry {
  ptr: number;
  n: number;
  /** 1 for BF16 and 0 for FP32 (sum of squares, scale); the destination address (cast). */
  extra: number;
  /** The kernel's further words for this tensor (adamw_many's), after the first four. */
  more?: readonly number[];
}

/** Elements per chunk: one block's share of a tensor (a tensor's last chunk may be shorter). */
export const MULTI_TENSOR_CHUNK = 1 << 16;

/** Multi-tensor tables kept on the device that no live graph uses: past this many, the least recently used go. */
const TABLES_KEPT = 16;

interface DeviceTable {
  ptr: number;
  /** Live graphs that read it (it stays while any does). */
  graphs: number;
}

/**
 * A context's multi-tensor tables on the device, by content: the same tensors every step (the
 * gradients, the optimizer's lists) upload their table once, and a graph capture, which cannot
 * upload, finds the table that the eager run before it made.
 */
class TableCache {
  /** By the table's bytes, least recently used first. */
  private readonly tables = new Map<string, DeviceTable>();
  /** The tables the capture in progress used (keepTablesDuring), or null. */
  private captured: Set<DeviceTable> | null = null;

  constructor(private readonly ctx: CudaContext) {}

  /** The device address of a table holding the first `bytes` bytes of `words`, uploaded now unless an earlier call did. */
  address(words: Uint32Array, bytes: number): number {
    const key = Buffer.from(words.buffer, words.byteOffset, bytes).toString('latin1');
    let t = this.tables.get(key);
    if (t) {
      this.tables.delete(key);
    } else {
      if (this.ctx.isCapturing) {
        throw new Error('multi-tensor launch: its table of tensors is uploaded on first use, which graph capture cannot record: run the captured work once before');
      }
      t = { ptr: this.ctx.alloc(bytes), graphs: 0 };
      this.ctx.copyToDevice(t.ptr, words, bytes);
    }
    this.tables.set(key, t);
    if (!this.ctx.isCapturing) this.trim();
    else if (this.captured) this.captured.add(t);
    else t.graphs++; // a capture outside keepTablesDuring: kept for good
    return t.ptr;
  }

  /** See keepTablesDuring. */
  keepDuring<R>(capture: () => R): { result: R; release: () => void } {
    const used = new Set<DeviceTable>();
    this.captured = used;
    let result: R;
    try {
      result = capture();
    } finally {
      this.captured = null;
    }
    for (const t of used) t.graphs++;
    const release = () => {
      for (const t of used) t.graphs--;
      used.clear();
      this.trim();
    };
    return { result, release };
  }

  /** Free the least recently used tables no graph reads, beyond TABLES_KEPT of them (stream-ordered: launches already enqueued still read them). */
  private trim(): void {
    let spare = [...this.tables.values()].filter((t) => t.graphs === 0).length - TABLES_KEPT;
    for (const [key, t] of this.tables) {
      if (spare <= 0) break;
      if (t.graphs > 0) continue;
      this.ctx.free(t.ptr);
      this.tables.delete(key);
      spare--;
    }
  }

  dispose(): void {
    for (const t of this.tables.values()) this.ctx.free(t.ptr);
    this.tables.clear();
  }
}

const tableCaches = new WeakMap<CudaContext, TableCache>();

function tablesOf(ctx: CudaContext): TableCache {
  let c = tableCaches.get(ctx);
  if (!c) tableCaches.set(ctx, (c = new TableCache(ctx)));
  return c;
}

/**
 * Run `capture` (a graph capture on ctx's stream) keeping the multi-tensor tables it used on the
 * device until `release` (when the graph is destroyed), as its replays read them.
 */
export function keepTablesDuring<R>(ctx: CudaContext, capture: () => R): { result: R; release: () => void } {
  return tablesOf(ctx).keepDuring(capture);
}

/** Free ctx's multi-tensor tables (before the context goes). */
export function releaseTables(ctx: CudaContext): void {
  tableCaches.get(ctx)?.dispose();
  tableCaches.delete(ctx);
}

/**
 * The device table of `entries` (`words` i64 per tensor: address, count, first chunk, extra, then
 * the entry's `more`; see multi-tensor.cuh) for chunks of `chunkElems` elements, from ctx's
 * TableCache (kept there: the caller does not free it); tensors without elements are left out.
 */
function multiTensorTable(ctx: CudaContext, entries: readonly MultiTensorEntry[], chunkElems = MULTI_TENSOR_CHUNK, words = 4):
  { table: number; tensors: number; chunks: number } {
  const u32 = new Uint32Array(2 * words * entries.length);
  let tensors = 0, chunks = 0;
  const put = (slot: number, v: number) => {
    u32[2 * slot] = v >>> 0;
    u32[2 * slot + 1] = Math.floor(v / 4294967296) >>> 0;
  };
  for (const e of entries) {
    if (!Number.isInteger(e.n) || e.n < 0) throw new Error(`multi-tensor table: ${e.n} elements`);
    if (4 + (e.more?.length ?? 0) !== words) throw new Error(`multi-tensor table: ${4 + (e.more?.length ?? 0)} words for a tensor, the table has ${words}`);
    if (e.n === 0) continue;
    const at = words * tensors;
    put(at, e.ptr);
    put(at + 1, e.n);
    put(at + 2, chunks);
    put(at + 3, e.extra);
    e.more?.forEach((v, i) => put(at + 4 + i, v));
    tensors++;
    chunks += Math.ceil(e.n / chunkElems);
  }
  if (chunks > 2 ** 31 - 1) throw new Error(`multi-tensor table: ${chunks} chunks (at most 2^31 − 1)`);
  if (tensors === 0) return { table: 0, tensors, chunks };
  return { table: tablesOf(ctx).address(u32, 8 * words * tensors), tensors, chunks };
}

function multiTensorGrid(ctx: CudaContext, chunks: number): number {
  return Math.max(1, Math.min(chunks, ctx.smCount * 8));
}

/**
 * The partial sums of squares of `entries` (extra: 1 BF16, 0 FP32), one FP64 per chunk, into a
 * fresh allocation the caller frees (0 when there are no chunks).
 */
function sumSquaresPartials(ctx: CudaContext, entries: readonly MultiTensorEntry[]): { partial: number; chunks: number } {
  const { table, tensors, chunks } = multiTensorTable(ctx, entries);
  const partial = ctx.alloc(8 * chunks);
  if (chunks > 0) kernel(ctx, 'sum_squares_many').launch(ctx.stream, multiTensorGrid(ctx, chunks), BLOCK, 0, [table, tensors, chunks, MULTI_TENSOR_CHUNK, partial]);
  return { partial, chunks };
}

/** Σ over the tensors of Σ x² (entries' extra: 1 BF16, 0 FP32), FP64 in a fixed order, downloaded. */
export function sumSquaresMany(ctx: CudaContext, entries: readonly MultiTensorEntry[]): number {
  const { partial, chunks } = sumSquaresPartials(ctx, entries);
  return downloadSum(ctx, partial, chunks);
}

/**
 * The global norm of `entries` (as sumSquaresMany) and its clipping coefficient, on the device
 * (grad_norm_clip in reduce.cu): out [2] FP32 = [norm, maxNorm / norm if maxNorm > 0 and
 * norm > maxNorm else 1]; skip [1] i32 (unless 0) = 1 when out[0] is NaN or infinite, else 0.
 */
export function gradNormClip(ctx: CudaContext, entries: readonly MultiTensorEntry[], maxNorm: number, out: number, skip: number): void {
  if (!(maxNorm >= 0 && maxNorm < Infinity)) throw new Error(`gradNormClip: maximum norm ${maxNorm} (0: no clipping)`);
  const { partial, chunks } = sumSquaresPartials(ctx, entries);
  try {
    kernel(ctx, 'grad_norm_clip').launch(ctx.stream, 1, 1024, 0, [partial, chunks, maxNorm, out, skip]);
  } finally {
    ctx.free(partial);
  }
}

/**
 * x *= alpha in place over every tensor (entries' extra: 1 BF16, 0 FP32; alpha = 0 writes zeros
 * without reading x); the tensors must not overlap.
 */
export function scaleMany(ctx: CudaContext, entries: readonly MultiTensorEntry[], alpha: number): void {
  const { table, tensors, chunks } = multiTensorTable(ctx, entries);
  if (chunks === 0) return;
  kernel(ctx, 'scale_many').launch(ctx.stream, multiTensorGrid(ctx, chunks), BLOCK, 0, [table, tensors, chunks, MULTI_TENSOR_CHUNK, alpha]);
}

/** y += x for every entry: FP32 y at ptr, FP32 x at extra, n elements each; the ys must not overlap. */
export function addMany(ctx: CudaContext, entries: readonly MultiTensorEntry[]): void {
  const { table, tensors, chunks } = multiTensorTable(ctx, entries);
  if (chunks === 0) return;
  kernel(ctx, 'add_many').launch(ctx.stream, multiTensorGrid(ctx, chunks), BLOCK, 0, [table, tensors, chunks, MULTI_TENSOR_CHUNK]);
}

/** y = bf16(x) for every entry: FP32 x at ptr, BF16 y at extra, n elements each. */
export function castF32ToBf16Many(ctx: CudaContext, entries: readonly MultiTensorEntry[]): void {
  const { table, tensors, chunks } = multiTensorTable(ctx, entries);
  if (chunks === 0) return;
  kernel(ctx, 'cast_f32_to_bf16_many').launch(ctx.stream, multiTensorGrid(ctx, chunks), BLOCK, 0, [table, tensors, chunks, MULTI_TENSOR_CHUNK]);
}

/**
 * Device addresses of what changes between AdamW steps (optimizer.cu): hyper [3] FP32 = lr,
 * 1 − β1^t, 1 − β2^t; gradScale [1] FP32, or 0 for 1; skip [1] i32, or 0 for none.
 */
export interface AdamWScalarPtrs {
  hyper: number;
  gradScale: number;
  skip: number;
}

/** The arguments of both AdamW kernels after the tensors': the step's scalars, then β1, β2, 1 − β1, 1 − β2 (FP64, passed as floats). */
function adamwScalarArgs(h: AdamWHyper, s: AdamWScalarPtrs): number[] {
  return [s.hyper, s.gradScale, s.skip, h.beta1, h.beta2, 1 - h.beta1, 1 - h.beta2];
}

/**
 * AdamW in place on n elements (optimizer.cu): FP32 param p and gradient g, moments m and v of type
 * `moments`, and p's BF16 copy written beside p unless `copy` is 0.
 */
export function adamw(ctx: CudaContext, p: number, g: number, m: number, v: number, moments: FloatKind, copy: number, n: number, h: AdamWHyper,
  weightDecay: number, s: AdamWScalarPtrs): void {
  if (n === 0) return;
  kernel(ctx, 'adamw_f32').launch(ctx.stream, gridFor(ctx, n, 4), BLOCK, 0, [
    p, g, m, v, copy, n, ...adamwScalarArgs(h, s), weightDecay, h.eps, h.momentsBf16 ? 1 : 0, moments === 'bf16' ? 1 : 0,
  ]);
}

/** One tensor of adamwMany: FP32 param p, a gradient g and moments m, v of either type, n elements each. */
export interface AdamWTensor {
  p: number;
  g: number;
  gradType: FloatKind;
  m: number;
  v: number;
  momentType: FloatKind;
  /** The address of p's BF16 copy, which the kernel writes beside p, or 0 for none. */
  copy: number;
  n: number;
  /** This tensor's decoupled weight decay. */
  weightDecay: number;
}

/** Elements per chunk of adamw_many: up to 30 bytes each, so a chunk moves up to about 1 MB. */
export const ADAMW_CHUNK = 1 << 15;

const f32Bits = new Float32Array(1);
const f32BitsU32 = new Uint32Array(f32Bits.buffer);

/** The bits of x rounded to FP32 (what a kernel's f32 argument gets). */
function float32Bits(x: number): number {
  f32Bits[0] = x;
  return f32BitsU32[0]!;
}

/**
 * AdamW in place on every tensor in one launch (adamw_many in optimizer.cu): the same bits as
 * `adamw` on each in turn with its weight decay. The params and moments must not overlap. The
 * tensors' BF16 copies are written only with `writeCopies`.
 */
export function adamwMany(ctx: CudaContext, tensors: readonly AdamWTensor[], h: AdamWHyper, s: AdamWScalarPtrs, writeCopies: boolean): void {
  const entries = tensors.map((t): MultiTensorEntry => ({
    ptr: t.p, n: t.n, extra: t.g,
    more: [t.m, t.v, float32Bits(t.weightDecay), t.gradType === 'bf16' ? 1 : 0, t.momentType === 'bf16' ? 1 : 0, t.copy],
  }));
  const { table, tensors: count, chunks } = multiTensorTable(ctx, entries, ADAMW_CHUNK, 10);
  if (chunks === 0) return;
  kernel(ctx, 'adamw_many').launch(ctx.stream, multiTensorGrid(ctx, chunks), BLOCK, 0, [
    table, count, chunks, ADAMW_CHUNK, ...adamwScalarArgs(h, s), h.eps, h.momentsBf16 ? 1 : 0, writeCopies ? 1 : 0,
  ]);
}
