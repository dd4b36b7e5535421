// The one seam between model code and hardware (DESIGN §6). Ops are coarse: each is a
// kernel (or a short sequence of them) on the GPU and a loop nest on the CPU. Model code
// never branches on the device; the CPU and CUDA backends are tested against each other.
//
// Conventions: row-major; float tensors are in the backend's `floatDType`; index tensors are
// i32. Every op returns a fresh tensor that the caller owns and releases with `free`
// (a no-op on the CPU, a return to the stream-ordered pool on the GPU), unless it says
// it writes into an argument.
//
// Graph capture (captureGraph): the ops a decode or training step runs take every value that
// changes from one step to the next from tensors (token ids, positions, AdamW's learning rate),
// never from host numbers, and none of them waits for the device (the `…Into` ops accumulate
// losses on the device), so that the step can be recorded once and replayed.

import type { Tensor } from '../tensor/tensor.js';

/** One operand of `gemm`: a matrix inside a tensor's storage, found by offset and leading dimension. */
export interface MatrixRef {
  tensor: Tensor;
  /** Element offset of the first matrix of the batch. */
  offset?: number;
  /** Leading dimension (row stride in elements) of the matrix as stored. */
  ld: number;
  /** Element distance between consecutive matrices of a batch. */
  batchStride?: number;
  /** Use the transpose of the stored matrix. */
  trans?: boolean;
}

/** C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b] for b < batch; op(A) is [M, K], op(B) is [K, N]. */
export interface GemmSpec {
  m: number;
  n: number;
  k: number;
  a: MatrixRef;
  b: MatrixRef;
  c: MatrixRef;
  batch?: number;
  alpha?: number;
  beta?: number;
}

export interface RouterConfig {
  topK: number;
  nGroup: number;
  topkGroup: number;
  /** 'sigmoid' (V3) or 'softmax' (V2). */
  scoring: 'sigmoid' | 'softmax';
  /** 'noaux_tc' and 'group_limited_greedy' limit to groups; 'greedy' does not. */
  groupLimited: boolean;
  /** Group score: sum of the two best biased scores (V3), or the best score (V2). */
  groupScoreTop2: boolean;
  normTopkProb: boolean;
  routedScalingFactor: number;
}

export interface RouterOutput {
  /** [N, E] FP32: the unbiased expert affinities s (sigmoid or softmax of the logits). */
  scores: Tensor;
  /** [N, K] i32: chosen experts per token. */
  indices: Tensor;
  /** [N, K]: gating weights (normalised if configured, times the routed scaling factor). */
  weights: Tensor;
}

export interface MoePermutation {
  /**
   * [R, d]: token rows grouped by expert, in expert order. Packed (capacity null): R = N·K, expert
   * e's rows right after expert e−1's. Padded: R = E·capacity, expert e's rows at
   * [e·capacity, e·capacity + min(count_e, capacity)) and zero rows after them up to the next
   * expert's. Only a fixed capacity (MoeFixedCapacity) can be below a count: the slots that do not
   * fit have no row, so moeUnpermute adds nothing for them, moeUnpermuteBackward gives their gating
   * weights a zero gradient and moePermuteBackward their tokens nothing.
   */
  rows: Tensor;
  /** [R] i32: for sorted row r, the slot n·K + k it came from; −1 for a padding row. */
  sourceSlot: Tensor;
  /**
   * Host copy of the number of rows per expert (length E): it drives the per-expert GEMM loop.
   * Null for a fixed capacity, where the counts stay on the device.
   */
  counts: number[] | null;
  /** Rows per expert when padded (every expert's GEMMs then run as one batched GEMM), else null. */
  capacity: number | null;
}

/**
 * A padded permutation of a capacity chosen without the counts, so that moePermute reads nothing
 * back to the host (a step captured into a graph).
 */
export interface MoeFixedCapacity {
  /** Rows per expert (a positive integer). Of an expert's slots, the first `capacity` in slot order keep a row. */
  capacity: number;
  /**
   * [2] i32, never cleared by moePermute (zero it before the step): [0] += the slots dropped (past
   * their expert's capacity, or, on the device, of an expert index outside [0, E)); [1] = the
   * largest of itself and every expert's count (the capacity the call needed).
   */
  stats: Tensor;
}

/** When moePermute pads (MoePermutation.capacity), see moeCapacity. */
export interface MoePadding {
  /** The capacity is the largest count rounded up to a multiple of this. */
  blockRows: number;
  /** Pad only when E·capacity ≤ maxRatio · N·K: padding rows cost memory and GEMM work. */
  maxRatio: number;
}

/** Rows per expert of a padded permutation for these counts of `slots` = N·K slots, or null to pack them. */
export function moeCapacity(counts: readonly number[], slots: number, padding: MoePadding): number | null {
  if (counts.length === 0 || slots === 0) return null;
  let max = 0;
  for (const c of counts) max = Math.max(max, c);
  const block = Math.max(1, Math.floor(padding.blockRows));
  const capacity = Math.max(block, Math.ceil(max / block) * block);
  return counts.length * capacity <= padding.maxRatio * slots ? capacity : null;
}

/**
 * What a float tensor made by `zeros` holds, which picks its dtype on a mixed-precision backend:
 * 'state' (the default) for what is kept and accumulated — gradients, optimizer moments,
 * accumulation buffers — in the storage dtype (FP32 on the CUDA backend unless it stores BF16);
 * 'activation' for activations and activation gradients that are written once (not accumulated
 * into over several ops), in `floatDType` like every op's result, so no op converts them.
 */
export type TensorKind = 'state' | 'activation';

export interface Backend {
  readonly name: 'cpu' | 'cuda';
  /** Dtype of every float tensor this backend creates. */
  readonly floatDType: 'f32' | 'f64' | 'bf16';
  /**
   * The padding a MoE layer asks moePermute for unless told otherwise: where padded expert blocks
   * (one batched GEMM for all experts) beat a GEMM per expert (the GPU, whose per-launch host cost
   * dwarfs an expert's GEMM), or null where the padding rows would only add work (the CPU).
   */
  readonly moePadding: MoePadding | null;

  // ---- memory -------------------------------------------------------------------------
  /** Copy host floats in (converted to `floatDType`). */
  upload(data: Float32Array | Float64Array, shape: readonly number[]): Tensor;
  uploadInt(data: Int32Array, shape: readonly number[]): Tensor;
  /** Copy a float tensor out as FP32 (or FP64 when the backend computes in FP64). */
  download(t: Tensor): Float32Array | Float64Array;
  downloadInt(t: Tensor): Int32Array;
  /**
   * A zero-filled float tensor; `kind` (default 'state') picks its dtype (see TensorKind), or names
   * one where the backend stores it (the CPU backend keeps its one float dtype: BF16 optimizer
   * moments there are BF16-rounded values in it).
   */
  zeros(shape: readonly number[], kind?: TensorKind | 'bf16' | 'f32'): Tensor;
  /** A view of rows [start, start+count) of the first dimension; shares storage, not owned. */
  rows(t: Tensor, start: number, count: number): Tensor;
  /** Same storage, new shape with the same element count; shares storage, not owned. */
  reshape(t: Tensor, shape: readonly number[]): Tensor;
  free(t: Tensor): void;
  /** Overwrite a float tensor's contents with host values (same element count), in place. */
  copyFromHost(dst: Tensor, data: Float32Array | Float64Array): void;
  /** Overwrite an i32 tensor's contents with host values (same element count), in place. */
  copyFromHostInt(dst: Tensor, data: Int32Array): void;
  /**
   * A mark in the allocation history. `releaseAllocations(mark)` frees every tensor allocated after
   * it that is still live: a training step runs between the two, so its temporaries never outlive it
   * (parameters, gradients and optimizer state are allocated before the first mark).
   */
  markAllocations(): number;
  releaseAllocations(mark: number): void;

  // ---- linear algebra -----------------------------------------------------------------
  /** General (strided, batched) matrix multiply into spec.c, accumulating in FP32 or better. */
  gemm(spec: GemmSpec): void;
  /** y[M, N] = x[M, K] · w[N, K]ᵀ : the Linear layer's forward. */
  linear(x: Tensor, w: Tensor): Tensor;

  // ---- elementwise and normalisation --------------------------------------------------
  /** a + b (same shape). */
  add(a: Tensor, b: Tensor): Tensor;
  /** a += alpha · b, in place. */
  addInPlace(a: Tensor, b: Tensor, alpha?: number): void;
  /** RMSNorm over the last dimension: x[..., d] · w[d] / sqrt(mean(x²) + eps), statistics in FP32. */
  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor;
  /** silu(gate) · up, both [M, I]. */
  swiglu(gate: Tensor, up: Tensor): Tensor;
  /** Columns [start, end) of a 2-D tensor [M, C] → [M, end-start]. */
  sliceCols(x: Tensor, start: number, end: number): Tensor;
  /**
   * Concatenate along the last dimension, broadcasting b over heads: a [N, H, Ca], b [N, H or 1, Cb]
   * → [N, H, Ca+Cb] (MLA's keys: per-head k_nope beside the one shared k_pe).
   */
  concatHeads(a: Tensor, b: Tensor): Tensor;

  // ---- embeddings and positions -------------------------------------------------------
  /** table[V, d] gathered at ids[N] → [N, d]. */
  embedding(table: Tensor, ids: Tensor): Tensor;
  /**
   * Interleaved rotary embedding applied to columns [colOffset, colOffset+rot) of every head:
   * x [N, H, W], pairs (2i, 2i+1) rotated by the angle whose cos/sin are cos[pos][i], sin[pos][i]
   * (tables [P, rot/2]), pos = positions[N]. Returns a new tensor; other columns are copied.
   * `inverse` rotates by the negated angle: the backward pass (the rotation is orthogonal).
   */
  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, colOffset: number, rot: number, inverse?: boolean): Tensor;

  // ---- attention ----------------------------------------------------------------------
  /**
   * Causal multi-head attention: q [B, Tq, H, Dk], k [B, Tk, H, Dk], v [B, Tk, H, Dv] → [B, Tq, H, Dv].
   * Query i sits at absolute position qStart + i and sees keys j ≤ qStart + i.
   */
  attention(q: Tensor, k: Tensor, v: Tensor, scale: number, qStart: number): Tensor;
  /**
   * Absorbed MLA attention over the latent cache (SPEC §2): score(i, j) = (qLat·ckv_j + qPe·kpe_j)·scale,
   * out = Σ_j p_ij ckv_j. qLat [B, Tq, H, C], qPe [B, Tq, H, R], ckv [B, S, C], kpe [B, S, R] (a cache
   * of capacity S), positions [B·Tq] i32 → [B, Tq, H, C]: query token t of sequence b sits at position
   * p = positions[b·Tq + t] < S and sees cache positions 0..p (its own included). The positions live on
   * the device, so the work does not depend on host numbers that change from step to step.
   */
  mlaLatentAttention(qLat: Tensor, qPe: Tensor, ckv: Tensor, kpe: Tensor, scale: number, positions: Tensor): Tensor;
  /** Write src [B, T, C] into dst [B, S, C] in place: row t of sequence b to position positions[b·T + t] (positions [B·T] i32, each < S). */
  writeCache(dst: Tensor, src: Tensor, positions: Tensor): void;

  // ---- mixture of experts -------------------------------------------------------------
  /** Router scores and group-limited top-k (SPEC §3): logits [N, E] (FP32), bias [E] or null. */
  routerTopK(logits: Tensor, bias: Tensor | null, cfg: RouterConfig): RouterOutput;
  /**
   * Group token rows by expert: x [N, d], indices [N, K] i32, for `numExperts` experts; packed,
   * or padded when `padding` is given and allows it for the counts (moeCapacity), which come to the
   * host; or, with `fixed` (`padding` then unused), padded to fixed.capacity without a host read.
   */
  moePermute(x: Tensor, indices: Tensor, numExperts: number, padding?: MoePadding, fixed?: MoeFixedCapacity): MoePermutation;
  /**
   * load[e] += the number of slots of indices [N, K] i32 routed to expert e, for load [numExperts]
   * (FP32 on the GPU: exact up to 2^24), without a host read: a step's expert load (SPEC §3).
   */
  expertLoadInto(indices: Tensor, numExperts: number, load: Tensor): void;
  /**
   * The auxiliary-loss-free bias update (SPEC §3) in place, without a host read: bias[i] += gamma ·
   * sign(mean(load) − load[i]) for bias, load [E] (FP32 on the GPU), with sign(0) = 0: the
   * arithmetic of updateCorrectionBias (the mean in FP64, each sum rounded once to the bias's dtype).
   */
  correctionBiasUpdate(bias: Tensor, load: Tensor, gamma: number): void;
  /** y[n] = Σ_k weights[n, k] · expertOut[row of slot n·K+k]: expertOut [R, d] (a permutation's rows), weights [N, K] → [N, d]. */
  moeUnpermute(expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): Tensor;
  /**
   * The routed experts of a few tokens straight from the routing, without a permutation (whose
   * counts reach the host) — what a captured decode step runs: x [N, d], indices [N, K] i32,
   * weights [N, K], E experts' gate and up [I, d] and down [d, I] →
   * y[n] = Σ_k weights[n, k] · down_e(silu(gate_e x_n) · up_e x_n), e = indices[n, k], summed over k in
   * slot order. The same result as moePermute, the expert FFNs and moeUnpermute.
   */
  moeExpertsDirect(x: Tensor, indices: Tensor, weights: Tensor, gate: readonly Tensor[], up: readonly Tensor[], down: readonly Tensor[]): Tensor;
  /**
   * The experts' Linear layers on a padded permutation's rows, one expert per block of
   * C = x.shape[0] / E rows: y[e·C + i] = x[e·C + i] · W_eᵀ for E = weights.length, x [E·C, in],
   * W_e [out, in] → [E·C, out].
   */
  groupedLinear(x: Tensor, weights: readonly Tensor[]): Tensor;
  /**
   * dx[e·C + i] = dy[e·C + i] · W_e: dy [E·C, out] → dx [E·C, in], a new tensor in floatDType, or
   * written into `into` (added to it with `accumulate`).
   */
  groupedLinearBackwardInput(dy: Tensor, weights: readonly Tensor[], into?: Tensor, accumulate?: boolean): Tensor;
  /** grads[e] += dy[block e]ᵀ · x[block e]: x [E·C, in], dy [E·C, out], grads E tensors [out, in]. */
  groupedLinearBackwardWeight(x: Tensor, dy: Tensor, grads: readonly Tensor[]): void;

  // ---- backward passes (activation gradients are returned, parameter gradients accumulate) ----
  /** dx of RMSNorm: x [M, d], w [d], dy [M, d] → [M, d]. */
  rmsNormBackwardInput(x: Tensor, w: Tensor, dy: Tensor, eps: number): Tensor;
  /** dw += Σ_rows dy · x / rms(x): x [M, d], dy [M, d], dw [d]. */
  rmsNormBackwardWeight(x: Tensor, dy: Tensor, eps: number, dw: Tensor): void;
  /** Gradients of silu(gate) · up: gate, up, dy [M, I] → dGate, dUp [M, I]. */
  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor): { dGate: Tensor; dUp: Tensor };
  /** dTable[ids[n]] += dy[n]: ids [N], dy [N, d], dTable [V, d]. */
  embeddingBackward(ids: Tensor, dy: Tensor, dTable: Tensor): void;
  /** dst[:, start:start+W] += src: dst [M, C], src [M, W] (the backward of sliceCols). */
  addToCols(dst: Tensor, src: Tensor, start: number): void;
  /** Sum over the head dimension: x [N, H, C] → [N, 1, C] (the backward of a broadcast in concatHeads). */
  sumHeads(x: Tensor): Tensor;
  /**
   * Causal attention backward: q, k, v, out and dOut as in `attention` (out its result) →
   * dq [B, Tq, H, Dk], dk [B, Tk, H, Dk], dv [B, Tk, H, Dv].
   */
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dOut: Tensor, scale: number, qStart: number): { dq: Tensor; dk: Tensor; dv: Tensor };
  /** Backward of moeUnpermute: dy [N, d] → dExpertOut [R, d] (zero in padding rows) and dWeights [N, K]. */
  moeUnpermuteBackward(dy: Tensor, expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): { dExpertOut: Tensor; dWeights: Tensor };
  /**
   * Backward of moePermute: dRows [R, d] → dx [N, d] (each token's K row gradients summed; padding
   * rows ignored). `slots` = N·K (default: sourceSlot's length, right for a packed permutation).
   */
  moePermuteBackward(dRows: Tensor, sourceSlot: Tensor, numTokens: number, slots?: number): Tensor;
  /**
   * Router backward: the gradient of the gating weights dWeights [N, K] (and optionally an extra
   * gradient on the affinities, dScores [N, E], from the balance loss) → dLogits [N, E].
   * The correction bias only selects, so no gradient flows through the choice of experts.
   */
  routerBackward(logits: Tensor, route: RouterOutput, dWeights: Tensor, dScores: Tensor | null, cfg: RouterConfig): Tensor;
  /**
   * The complementary sequence-wise balance loss (SPEC §3) of `batch` sequences of `seq` tokens:
   * alpha · mean over sequences of Σ_i f_i P_i, added into sum [1] (FP32 on the GPU) on the device
   * (nothing read back: a step may be captured); returns its gradient on the affinities, dScores [N, E].
   */
  sequenceBalanceLossInto(route: RouterOutput, batch: number, seq: number, alpha: number, sum: Tensor): Tensor;

  // ---- losses and optimisation --------------------------------------------------------
  /**
   * Cross-entropy of logits [M, V] against targets [M] (i32, −1 = no target), fused with its
   * gradient: returns dLogits = scale · (softmax − onehot) and adds (the summed loss over rows with
   * a target, the number of such rows) into sums [2] (FP32 on the GPU) on the device (nothing read
   * back: a step may be captured). Callers check their targets (checkTokenIds): a target ≥ V makes
   * the loss sum NaN on the GPU and throws on the CPU.
   */
  crossEntropyInto(logits: Tensor, targets: Tensor, scale: number, sums: Tensor): Tensor;
  /** Σ x² over all elements, in FP64 on the host side of the answer. */
  sumSquares(x: Tensor): number;
  /**
   * Σ over the tensors of Σ x² (FP64): the squared global norm of many tensors (the gradients) in
   * one pass, with one answer to wait for instead of one per tensor.
   */
  sumSquaresMany(xs: readonly Tensor[]): number;
  /**
   * The global norm of many tensors (the gradients) and its clipping coefficient, written on the
   * device with nothing read back: out [2] (FP32 on the GPU) = [norm = sqrt(Σ x²) (summed in FP64
   * as sumSquaresMany), maxNorm / norm when maxNorm > 0 and norm > maxNorm, else 1] — out[1] is
   * the gradScale of AdamWScalars. `skip` ([1] i32), when given, is set to 1 when out[0] is NaN or
   * infinite, else 0: the skip of AdamWScalars, so that a diverged step changes nothing.
   */
  gradNormClip(grads: readonly Tensor[], maxNorm: number, out: Tensor, skip?: Tensor | null): void;
  /** x *= alpha, in place; alpha = 0 writes zeros without reading x (NaN and Inf cleared too: zeroing gradients). */
  scaleInPlace(x: Tensor, alpha: number): void;
  /** `scaleInPlace` on every tensor in one pass (zeroing the gradients). */
  scaleInPlaceMany(xs: readonly Tensor[], alpha: number): void;
  /**
   * One AdamW step in place: param, grad, m, v of one shape, with c1 = 1 − β1^t, c2 = 1 − β2^t
   * and the gradient scale s of `scalars` (read from the device: a captured step takes new ones
   * at each replay):
   *   g ← s·g (not written back),  m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²,
   *   p ← p·(1 − lr·wd) − lr·(m / c1) / (sqrt(v / c2) + eps)
   * (decoupled weight decay wd; 1 − lr·wd is computed on the device, in FP32 on the GPU with one
   * rounding). With `momentsBf16`, m and v are rounded to BF16 after each update, and may be
   * stored in BF16 where the backend has it (zeros with 'bf16'): the same values.
   */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, h: AdamWHyper, weightDecay: number, scalars: AdamWScalars): void;
  /**
   * `adamw` on every (params[i], grads[i], ms[i], vs[i]) with weight decay weightDecays[i] — the
   * same results, bit for bit — in one pass over all of them (one launch on the GPU instead of one
   * per tensor). The params and moments must not overlap one another.
   */
  adamwMany(params: readonly Tensor[], grads: readonly Tensor[], ms: readonly Tensor[], vs: readonly Tensor[], h: AdamWHyper,
    weightDecays: readonly number[], scalars: AdamWScalars): void;

  // ---- graphs -------------------------------------------------------------------------
  /**
   * Record the ops `body` enqueues, to run them again with `replay` on the same tensors (whatever
   * they hold by then) at the cost of one launch: a CUDA graph on the GPU; on the CPU, `body` itself,
   * called again at each replay. Capturing does not run the ops. Inside `body`: no downloads or
   * uploads, no host numbers that change between replays, every tensor allocated freed again, and
   * no lazy set-up (weight copies, tables) left for the first call — run the body once before.
   */
  captureGraph(body: () => void): CapturedGraph;
}

/** What captureGraph returns. */
export interface CapturedGraph {
  /** Run the recorded ops again. */
  replay(): void;
  /** Release the graph (not the tensors it works on). */
  free(): void;
}

/** The hyperparameters of AdamW that stay fixed over a run: host numbers, which a captured step may take. */
export interface AdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  /** Round m and v to BF16 after each update (required where they are stored in BF16). */
  momentsBf16: boolean;
}

/** What changes from one AdamW step to the next: device tensors that `adamw` and `adamwMany` read. */
export interface AdamWScalars {
  /** [3] (FP32 on the GPU): lr, 1 − β1^t, 1 − β2^t for the 1-based step t (adamwHyperValues). */
  hyper: Tensor;
  /**
   * [1] (FP32 on the GPU), or null for 1: every gradient is multiplied by it once before the
   * moments' update, and not written back — the global-norm clipping coefficient (gradNormClip's
   * out[1], as the view rows(out, 1, 1)).
   */
  gradScale: Tensor | null;
  /** [1] i32, or null: when non-zero the step changes nothing (gradNormClip's skip). */
  skip: Tensor | null;
}

/** The values of AdamWScalars.hyper for learning rate `lr` at the 1-based step `step`: [lr, 1 − β1^t, 1 − β2^t] (FP64). */
export function adamwHyperValues(lr: number, h: Pick<AdamWHyper, 'beta1' | 'beta2'>, step: number): Float64Array {
  return Float64Array.of(lr, 1 - Math.pow(h.beta1, step), 1 - Math.pow(h.beta2, step));
}

/** The number of tensors `adamwMany` was given, after checking that its four lists and the decays agree. */
export function adamwManyCount(params: readonly Tensor[], grads: readonly Tensor[], ms: readonly Tensor[], vs: readonly Tensor[],
  weightDecays: readonly number[]): number {
  const n = params.length;
  if (grads.length !== n || ms.length !== n || vs.length !== n || weightDecays.length !== n) {
    throw new Error(`adamwMany: ${n} params, ${grads.length} grads, ${ms.length} m, ${vs.length} v and ${weightDecays.length} weight decays`);
  }
  return n;
}
