// Launchers for the kernels in kernels/*.cu on raw device pointers: each checks its sizes,
// picks the launch shape and enqueues on the context's stream. The CUDA backend wraps these
// with tensors, allocation and shape checks; the GPU tests call them directly.

import type { CudaContext } from './context.js';
import { kernel } from './kernels.js';
import type { RouterConfig } from '../backend.js';

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
  const threads = rowThreads(d, vec(t), 1024);
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
  if (batches > 65535) throw new Error(`copy2d: ${batches} batches (at most 65535)`);
  const name = elemBytes === 2 ? 'copy_2d_b16' : elemBytes === 4 ? 'copy_2d_b32' : undefined;
  if (!name) throw new Error(`copy2d: ${elemBytes}-byte elements`);
  kernel(ctx, name).launch(ctx.stream, [Math.min(rows, 65535), batches], rowThreads(cols, 1, 256), 0, [src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, cols]);
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
  /** [N·K, d] rows grouped by expert (caller frees). */
  rows: number;
  /** [N·K] i32: sorted row → slot n·K + k (caller frees). */
  sourceSlot: number;
  counts: number[];
}

/**
 * Stable counting sort of the N·K slots of `indices` [N, K] by expert, and the gathered rows of
 * x [N, d]. The counts come to the host (a synchronisation) before the gather, so an expert
 * index outside [0, E) is reported instead of gathering from unwritten slots.
 */
export function moePermute(ctx: CudaContext, t: FloatKind, x: number, indices: number, N: number, K: number, d: number, E: number): DevicePermutation {
  const nk = N * K;
  const counts = ctx.alloc(4 * Math.max(E, 1));
  const sourceSlot = ctx.alloc(4 * nk);
  const hostCounts = new Int32Array(E);
  try {
    if (E > 0) {
      kernel(ctx, 'moe_count').launch(ctx.stream, E, 256, 0, [indices, nk, counts]);
      kernel(ctx, 'moe_scatter').launch(ctx.stream, E, 256, 0, [indices, nk, counts, sourceSlot]);
    }
    ctx.copyToHost(hostCounts, counts, 4 * E);
  } catch (e) {
    ctx.free(sourceSlot);
    throw e;
  } finally {
    ctx.free(counts);
  }
  const total = hostCounts.reduce((a, c) => a + c, 0);
  if (total !== nk) {
    ctx.free(sourceSlot);
    throw new Error(`moePermute: ${nk - total} of ${nk} expert indices are outside [0, ${E})`);
  }
  const rows = ctx.alloc(FLOAT_BYTES[t] * nk * d);
  if (nk > 0 && d > 0) {
    kernel(ctx, t === 'bf16' ? 'moe_gather_bf16' : 'moe_gather_f32').launch(ctx.stream, Math.min(nk, 2 ** 31 - 1), rowThreads(d, vec(t), 256), 0, [x, sourceSlot, rows, nk, K, d]);
  }
  return { rows, sourceSlot, counts: [...hostCounts] };
}

/** y[n] = Σ_k weights[n, k] · expertOut[row of slot n·K + k] → y [N, d]. */
export function moeUnpermute(ctx: CudaContext, t: FloatKind, weightType: FloatKind, expertOut: number, sourceSlot: number, weights: number, y: number,
  N: number, K: number, d: number): void {
  if (K > 64) throw new Error(`moeUnpermute: ${K} experts per token (at most 64)`);
  const nk = N * K;
  if (nk === 0 || d === 0) return;
  const rowOfSlot = ctx.alloc(4 * nk);
  kernel(ctx, 'moe_invert').launch(ctx.stream, Math.min(Math.ceil(nk / 256), ctx.smCount * 32), 256, 0, [sourceSlot, nk, rowOfSlot]);
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

/** Causal attention (attention.cu): score = (q1·k1 + q2·k2)·scale, out = Σ p v; pass q2 = k2 = 0 when D2 = 0. */
export function attention(ctx: CudaContext, t: FloatKind, q1: number, q2: number, k1: number, k2: number, v: number, out: number, s: AttentionShape,
  scale: number, qStart: number): void {
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
  fn.launch(ctx.stream, Math.ceil(rows / warps), warps * 32, shared, [q1, q2, k1, k2, v, out, s.B, s.Tq, s.Tk, s.S, s.H, s.Hk, s.D1, s.D2, s.Dv, scale, qStart]);
}
