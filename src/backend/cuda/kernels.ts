// The table of every kernel the CUDA backend launches: the file that defines it and the C
// types of its parameters, in order. A CPU test checks this table against the `extern "C"`
// signatures in kernels/*.cu, so an argument list can't silently drift from its kernel.

import type { KernelArgType } from './launch.js';
import type { CudaContext } from './context.js';
import type { KernelFunction } from './compile.js';

export interface KernelSpec {
  file: string;
  args: readonly KernelArgType[];
}

const P = 'ptr', I = 'i32', F = 'f32', L = 'i64';

// q1, q2, k1, k2, v, out; B, Tq, Tk, S, H, Hk, D1, D2, Dv; scale; qStart; positions
const ATTENTION: KernelSpec = { file: 'attention.cu', args: [P, P, P, P, P, P, I, I, I, I, I, I, I, I, I, F, I, P] };
const ROUTER: KernelSpec = { file: 'router.cu', args: [P, P, P, P, P, I, I, I, I, I, I, I, I, I, F] };
// q, k, v, out, dOut, dq, dk, dv; B, Tq, Tk, H, Dk, Dv; scale; qStart
const ATTENTION_BWD: KernelSpec = { file: 'attention-backward.cu', args: [P, P, P, P, P, P, P, P, I, I, I, I, I, I, F, I] };
// scores, indices, dWeights, dScores, dLogits; N, E, K, normTopk, softmaxScoring; scaling
const ROUTER_BWD: KernelSpec = { file: 'router-backward.cu', args: [P, P, P, P, P, I, I, I, I, I, F] };
// x, indices, gateTable, upTable, act; slots, K, E, I, d, rowsPerBlock
const MOE_DIRECT_UP: KernelSpec = { file: 'moe-decode.cu', args: [P, P, P, P, P, I, I, I, I, I, I] };
// act, indices, downTable, out; slots, E, d, I, rowsPerBlock
const MOE_DIRECT_DOWN: KernelSpec = { file: 'moe-decode.cu', args: [P, P, P, P, I, I, I, I, I] };

export const KERNELS = {
  add_bf16: { file: 'elementwise.cu', args: [P, P, P, L] },
  add_f32: { file: 'elementwise.cu', args: [P, P, P, L] },
  add_inplace_bf16: { file: 'elementwise.cu', args: [P, P, F, L] },
  add_inplace_f32: { file: 'elementwise.cu', args: [P, P, F, L] },
  cast_f32_to_bf16: { file: 'elementwise.cu', args: [P, P, L] },
  cast_bf16_to_f32: { file: 'elementwise.cu', args: [P, P, L] },
  swiglu_bf16: { file: 'swiglu.cu', args: [P, P, P, L] },
  swiglu_f32: { file: 'swiglu.cu', args: [P, P, P, L] },
  rmsnorm_bf16: { file: 'rmsnorm.cu', args: [P, P, P, I, I, F] },
  rmsnorm_f32: { file: 'rmsnorm.cu', args: [P, P, P, I, I, F] },
  embedding_bf16: { file: 'embedding.cu', args: [P, P, P, I, I, I] },
  embedding_f32: { file: 'embedding.cu', args: [P, P, P, I, I, I] },
  rope_bf16: { file: 'rope.cu', args: [P, P, P, P, P, I, I, I, I, I, I, F] },
  rope_bf16_f32tab: { file: 'rope.cu', args: [P, P, P, P, P, I, I, I, I, I, I, F] },
  rope_f32: { file: 'rope.cu', args: [P, P, P, P, P, I, I, I, I, I, I, F] },
  copy_2d: { file: 'columns.cu', args: [P, L, L, P, L, L, L, L, L, I] },
  router_topk_f32_f32: ROUTER,
  router_topk_f32_bf16: ROUTER,
  router_topk_bf16_f32: ROUTER,
  router_topk_bf16_bf16: ROUTER,
  moe_count: { file: 'moe.cu', args: [P, I, P] },
  moe_scatter: { file: 'moe.cu', args: [P, I, P, I, P, P] },
  moe_gather_bf16: { file: 'moe.cu', args: [P, P, P, I, I, I] },
  moe_gather_f32: { file: 'moe.cu', args: [P, P, P, I, I, I] },
  moe_invert: { file: 'moe.cu', args: [P, I, P] },
  moe_combine_bf16_f32w: { file: 'moe.cu', args: [P, P, P, P, I, I, I] },
  moe_combine_bf16_bf16w: { file: 'moe.cu', args: [P, P, P, P, I, I, I] },
  moe_combine_f32_f32w: { file: 'moe.cu', args: [P, P, P, P, I, I, I] },
  moe_expert_load: { file: 'moe.cu', args: [P, I, P] },
  moe_bias_update: { file: 'moe.cu', args: [P, P, I, 'f64'] },
  attention_fwd_bf16: ATTENTION,
  attention_fwd_f32: ATTENTION,
  cache_write_b16: { file: 'attention.cu', args: [P, P, P, I, I, I, I] },
  cache_write_b32: { file: 'attention.cu', args: [P, P, P, I, I, I, I] },
  moe_direct_up_bf16_bf16w: MOE_DIRECT_UP,
  moe_direct_up_bf16_f32w: MOE_DIRECT_UP,
  moe_direct_up_f32_f32w: MOE_DIRECT_UP,
  moe_direct_down_bf16_bf16w: MOE_DIRECT_DOWN,
  moe_direct_down_bf16_f32w: MOE_DIRECT_DOWN,
  moe_direct_down_f32_f32w: MOE_DIRECT_DOWN,

  // training: mixed-type forward variants, backward passes, losses, reductions, optimizer
  rmsnorm_bf16_f32w: { file: 'rmsnorm.cu', args: [P, P, P, I, I, F] },
  embedding_f32_to_bf16: { file: 'embedding.cu', args: [P, P, P, I, I, I] },
  scale_bf16: { file: 'elementwise.cu', args: [P, F, L] },
  scale_f32: { file: 'elementwise.cu', args: [P, F, L] },
  rmsnorm_bwd_input_bf16: { file: 'rmsnorm-backward.cu', args: [P, P, P, P, I, I, F] },
  rmsnorm_bwd_input_f32: { file: 'rmsnorm-backward.cu', args: [P, P, P, P, I, I, F] },
  rms_inv_bf16: { file: 'rmsnorm-backward.cu', args: [P, P, I, I, F] },
  rms_inv_f32: { file: 'rmsnorm-backward.cu', args: [P, P, I, I, F] },
  rmsnorm_bwd_weight_partial_bf16: { file: 'rmsnorm-backward.cu', args: [P, P, P, P, I, I, I] },
  rmsnorm_bwd_weight_partial_f32: { file: 'rmsnorm-backward.cu', args: [P, P, P, P, I, I, I] },
  column_sum_add_f32: { file: 'rmsnorm-backward.cu', args: [P, I, I, P] },
  column_sum_add_bf16: { file: 'rmsnorm-backward.cu', args: [P, I, I, P] },
  swiglu_bwd_bf16: { file: 'swiglu-backward.cu', args: [P, P, P, P, P, L] },
  swiglu_bwd_f32: { file: 'swiglu-backward.cu', args: [P, P, P, P, P, L] },
  embedding_bwd_bf16: { file: 'embedding-backward.cu', args: [P, P, P, I, I, I] },
  embedding_bwd_f32: { file: 'embedding-backward.cu', args: [P, P, P, I, I, I] },
  add_to_cols_bf16: { file: 'columns-backward.cu', args: [P, P, I, I, I, I] },
  add_to_cols_f32: { file: 'columns-backward.cu', args: [P, P, I, I, I, I] },
  sum_heads_bf16: { file: 'columns-backward.cu', args: [P, P, I, I, I] },
  sum_heads_f32: { file: 'columns-backward.cu', args: [P, P, I, I, I] },
  attention_bwd_bf16: ATTENTION_BWD,
  attention_bwd_f32: ATTENTION_BWD,
  moe_unpermute_bwd_bf16: { file: 'moe-backward.cu', args: [P, P, P, P, P, P, I, I, I] },
  moe_unpermute_bwd_f32: { file: 'moe-backward.cu', args: [P, P, P, P, P, P, I, I, I] },
  moe_permute_bwd_bf16: { file: 'moe-backward.cu', args: [P, P, P, I, I, I] },
  moe_permute_bwd_f32: { file: 'moe-backward.cu', args: [P, P, P, I, I, I] },
  router_bwd_bf16: ROUTER_BWD,
  router_bwd_f32: ROUTER_BWD,
  balance_counts: { file: 'router-backward.cu', args: [P, P, I, I, I] },
  sequence_balance_loss: { file: 'router-backward.cu', args: [P, P, P, P, I, I, I, I, I, F] },
  cross_entropy_bf16: { file: 'loss.cu', args: [P, P, P, P, I, I, F] },
  cross_entropy_f32: { file: 'loss.cu', args: [P, P, P, P, I, I, F] },
  sum_squares_bf16: { file: 'reduce.cu', args: [P, L, P] },
  sum_squares_f32: { file: 'reduce.cu', args: [P, L, P] },
  sum_f64: { file: 'reduce.cu', args: [P, I, P] },
  // partial sums of squares, their count, maxNorm, out [norm, scale], skip (0: none)
  grad_norm_clip: { file: 'reduce.cu', args: [P, I, 'f64', P, P] },
  add_row_sums_f32: { file: 'reduce.cu', args: [P, I, L, P] },
  // p, g, m, v, BF16 copy of p (0: none), n; hyper [lr, c1, c2], gradScale, skip (device); β1, β2, 1 − β1, 1 − β2, wd, eps; momentsBf16, moment type
  adamw_f32: { file: 'optimizer.cu', args: [P, P, P, P, P, L, P, P, P, F, F, F, F, F, F, I, I] },
  // table (10 words per tensor), tensors, chunks, chunkElems; hyper, gradScale, skip (device); β1, β2, 1 − β1, 1 − β2, eps; momentsBf16, writeCopies
  adamw_many: { file: 'optimizer.cu', args: [P, I, I, L, P, P, P, F, F, F, F, F, I, I] },
  // table, tensors, chunks, chunkElems (see multi-tensor.cu)
  sum_squares_many: { file: 'multi-tensor.cu', args: [P, I, I, L, P] },
  scale_many: { file: 'multi-tensor.cu', args: [P, I, I, L, F] },
  cast_f32_to_bf16_many: { file: 'multi-tensor.cu', args: [P, I, I, L] },
  add_many: { file: 'multi-tensor.cu', args: [P, I, I, L] },
} as const satisfies Record<string, KernelSpec>;

export type KernelName = keyof typeof KERNELS;

/** Functions already looked up, per context: a launch then costs one Map lookup. */
const resolved = new WeakMap<CudaContext, Map<KernelName, KernelFunction>>();

/** The launchable kernel `name` on `ctx` (its file compiled on first use). */
export function kernel(ctx: CudaContext, name: KernelName): KernelFunction {
  let fns = resolved.get(ctx);
  if (!fns) resolved.set(ctx, (fns = new Map()));
  let f = fns.get(name);
  if (!f) {
    const spec: KernelSpec = KERNELS[name];
    f = ctx.kernels(spec.file).fn(name, spec.args);
    fns.set(name, f);
  }
  return f;
}
