// Multi-head Latent Attention (SPEC §2), written twice side by side like DeepSeek's model.py:
// `forwardNaive` expands the latent into per-head keys and values (training, full forwards);
// `forwardAbsorbed` folds W_uk into the query and W_uv into the output, so attention runs over
// the cached latent [c_kv ; k_pe] directly (decoding). The two agree to rounding.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { WeightGradJob } from './grad-jobs.js';
import { Linear } from './linear.js';
import type { ParameterSet } from './parameters.js';
import { RMSNorm } from './rms-norm.js';

/** What a layer's forward needs to know about the token block it processes. */
export interface ForwardContext {
  batch: number;
  /** Tokens per sequence in this block. */
  seq: number;
  /**
   * [batch·seq] i32: the absolute position of each token (start + t for token t of a block that
   * follows `start` cached tokens). On the device, so that a captured decode step reads the
   * positions of each replay from it.
   */
  positions: Tensor;
  /** RoPE tables [maxPositions, rope/2]. */
  cos: Tensor;
  sin: Tensor;
}

/** One layer's slice of the latent cache: c_kv [B, S, kv_lora] and roped k_pe [B, S, rope]. */
export interface LatentCacheLayer {
  ckv: Tensor;
  kpe: Tensor;
}

/** Which activations backward recomputes instead of keeping (SPEC §5, "Memory"). */
export interface Recompute {
  /** RMSNorm outputs (c_q, c_kv, the layer norms' outputs). */
  norms: boolean;
  /** MLA up-projections (q = W_qb c_q, [k_nope; v] = W_kvb c_kv). */
  upProjections: boolean;
}

/** Activations of one naive forward; the optional ones are absent when recomputed. */
export interface MlaSaved {
  ctx: ForwardContext;
  x: Tensor;
  /** W_qa x [N, q_lora] (query compression only) and its norm. */
  qa: Tensor | null;
  cq?: Tensor;
  /** Roped queries [N, H, nope+rope]. */
  q?: Tensor;
  /** c_kv before and after its norm [N, kv_lora]; roped k_pe [N, 1, rope]. */
  ckvRaw: Tensor;
  ckv?: Tensor;
  kpe: Tensor;
  /** Keys [N, H, nope+rope] and values [N·H, v]. */
  k?: Tensor;
  v?: Tensor;
  /** Attention output [B, T, H, v]. */
  attn: Tensor;
}

export class MultiHeadLatentAttention {
  readonly qA: Linear | null;
  readonly qANorm: RMSNorm | null;
  readonly qB: Linear | null;
  readonly q: Linear | null;
  readonly kvA: Linear;
  readonly kvANorm: RMSNorm;
  readonly kvB: Linear;
  readonly o: Linear;

  private readonly H: number;
  private readonly nope: number;
  private readonly rope: number;
  private readonly vDim: number;
  private readonly kvLora: number;

  constructor(params: ParameterSet, prefix: string, config: ModelConfig, readonly softmaxScale: number) {
    const c = config;
    const d = c.hiddenSize;
    this.H = c.numAttentionHeads;
    this.nope = c.qkNopeHeadDim;
    this.rope = c.qkRopeHeadDim;
    this.vDim = c.vHeadDim;
    this.kvLora = c.kvLoraRank;
    const qWidth = this.H * (this.nope + this.rope);
    if (c.qLoraRank !== null) {
      this.qA = new Linear(params.param(`${prefix}.q_a_proj.weight`, [c.qLoraRank, d]));
      this.qANorm = new RMSNorm(params.param(`${prefix}.q_a_layernorm.weight`, [c.qLoraRank]), c.rmsNormEps);
      this.qB = new Linear(params.param(`${prefix}.q_b_proj.weight`, [qWidth, c.qLoraRank]));
      this.q = null;
    } else {
      this.qA = this.qANorm = this.qB = null;
      this.q = new Linear(params.param(`${prefix}.q_proj.weight`, [qWidth, d]));
    }
    this.kvA = new Linear(params.param(`${prefix}.kv_a_proj_with_mqa.weight`, [this.kvLora + this.rope, d]));
    this.kvANorm = new RMSNorm(params.param(`${prefix}.kv_a_layernorm.weight`, [this.kvLora]), c.rmsNormEps);
    this.kvB = new Linear(params.param(`${prefix}.kv_b_proj.weight`, [this.H * (this.nope + this.vDim), this.kvLora]));
    this.o = new Linear(params.param(`${prefix}.o_proj.weight`, [d, this.H * this.vDim]));
  }

  /** Query input of the up-projection: c_q [N, q_lora] (or x itself without compression). */
  private queryLatent(b: Backend, x: Tensor): { qa: Tensor | null; cq: Tensor } {
    if (!this.qA) return { qa: null, cq: x };
    const qa = this.qA.forward(b, x);
    return { qa, cq: this.qANorm!.forward(b, qa) };
  }

  /** c_q (or x) [N, ·] → roped queries [N, H, nope+rope]. */
  private queries(b: Backend, cq: Tensor, ctx: ForwardContext): Tensor {
    const q = (this.qB ?? this.q)!.forward(b, cq);
    const roped = b.rope(b.reshape(q, [cq.shape[0], this.H, this.nope + this.rope]), ctx.cos, ctx.sin, ctx.positions, this.nope, this.rope);
    b.free(q);
    return roped;
  }

  /** x [N, d] → c_kv before its norm [N, kv_lora] and roped k_pe [N, 1, rope]. */
  private latent(b: Backend, x: Tensor, ctx: ForwardContext): { ckvRaw: Tensor; kpe: Tensor } {
    const kva = this.kvA.forward(b, x);
    const ckvRaw = b.sliceCols(kva, 0, this.kvLora);
    const kpeRaw = b.sliceCols(kva, this.kvLora, this.kvLora + this.rope);
    b.free(kva);
    const kpe = b.rope(b.reshape(kpeRaw, [x.shape[0], 1, this.rope]), ctx.cos, ctx.sin, ctx.positions, 0, this.rope);
    b.free(kpeRaw);
    return { ckvRaw, kpe };
  }

  /** Per-head keys [N, H, nope+rope] and values [N·H, v] from c_kv [N, kv_lora] and k_pe [N, 1, rope]. */
  private keysValues(b: Backend, ckv: Tensor, kpe: Tensor): { k: Tensor; v: Tensor } {
    const N = ckv.shape[0];
    const { H, nope, vDim } = this;
    const kv = this.kvB.forward(b, ckv);
    const perHead = b.reshape(kv, [N * H, nope + vDim]);
    const kNope = b.sliceCols(perHead, 0, nope);
    const v = b.sliceCols(perHead, nope, nope + vDim);
    const k = b.concatHeads(b.reshape(kNope, [N, H, nope]), kpe);
    b.free(kv);
    b.free(kNope);
    return { k, v };
  }

  private attend(b: Backend, q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext): Tensor {
    const { H, nope, rope, vDim } = this;
    const shape4 = (t: Tensor, width: number) => b.reshape(t, [ctx.batch, ctx.seq, H, width]);
    return b.attention(shape4(q, nope + rope), shape4(k, nope + rope), shape4(v, vDim), this.softmaxScale, 0);
  }

  /**
   * x [N = B·T, d] → [N, d], attending within the block only (no cache). With `save`, keeps what
   * backward needs (less what `recompute` says to recompute) instead of freeing it.
   */
  forwardNaive(b: Backend, x: Tensor, ctx: ForwardContext, save?: (s: MlaSaved) => void, recompute?: Recompute): Tensor {
    const N = x.shape[0];
    const { qa, cq } = this.queryLatent(b, x);
    const q = this.queries(b, cq, ctx);
    const { ckvRaw, kpe } = this.latent(b, x, ctx);
    const ckv = this.kvANorm.forward(b, ckvRaw);
    const { k, v } = this.keysValues(b, ckv, kpe);
    const attn = this.attend(b, q, k, v, ctx);
    const out = this.o.forward(b, b.reshape(attn, [N, this.H * this.vDim]));
    const keepNorms = save && !recompute?.norms;
    const keepUp = save && !recompute?.upProjections;
    if (save) save({ ctx, x, qa, ckvRaw, kpe, attn, cq: qa && keepNorms ? cq : undefined, ckv: keepNorms ? ckv : undefined, q: keepUp ? q : undefined, k: keepUp ? k : undefined, v: keepUp ? v : undefined });
    const dropped = save ? [keepNorms || !qa ? null : cq, keepNorms ? null : ckv, ...(keepUp ? [] : [q, k, v])] : [qa, qa ? cq : null, q, ckvRaw, kpe, ckv, k, v, attn];
    for (const t of dropped) if (t) b.free(t);
    return out;
  }

  /** dy [N, d] → dx [N, d]; queues every parameter gradient of this attention on `jobs`. */
  backwardInput(b: Backend, s: MlaSaved, dy: Tensor, jobs: WeightGradJob[]): Tensor {
    const N = s.x.shape[0];
    const { H, nope, rope, vDim, kvLora: C } = this;
    const { ctx } = s;
    // recompute what forward did not keep
    const cq = s.qa ? (s.cq ?? this.qANorm!.forward(b, s.qa)) : s.x;
    const ckv = s.ckv ?? this.kvANorm.forward(b, s.ckvRaw);
    const q = s.q ?? this.queries(b, cq, ctx);
    const kv = s.k && s.v ? { k: s.k, v: s.v } : this.keysValues(b, ckv, s.kpe);

    const dAttn = this.o.backwardInput(b, b.reshape(s.attn, [N, H * vDim]), dy, jobs);
    const shape4 = (t: Tensor, width: number) => b.reshape(t, [ctx.batch, ctx.seq, H, width]);
    const grads = b.attentionBackward(
      shape4(q, nope + rope), shape4(kv.k, nope + rope), shape4(kv.v, vDim), shape4(s.attn, vDim), shape4(dAttn, vDim), this.softmaxScale, 0,
    );
    // keys: [k_nope | k_pe broadcast over heads]; values beside k_nope in W_kvb's output
    // (dKv and dKva are assembled from disjoint column blocks, so they hold activation gradients)
    const dk = b.reshape(grads.dk, [N * H, nope + rope]);
    const dKv = b.zeros([N * H, nope + vDim], 'activation');
    const dkNope = b.sliceCols(dk, 0, nope);
    b.addToCols(dKv, dkNope, 0);
    b.addToCols(dKv, b.reshape(grads.dv, [N * H, vDim]), nope);
    const dkpe = b.sumHeads(b.reshape(b.sliceCols(dk, nope, nope + rope), [N, H, rope]));
    const dCkv = this.kvB.backwardInput(b, ckv, b.reshape(dKv, [N, H * (nope + vDim)]), jobs);
    const dCkvRaw = this.kvANorm.backwardInput(b, s.ckvRaw, dCkv, jobs);
    const dKva = b.zeros([N, C + rope], 'activation');
    b.addToCols(dKva, dCkvRaw, 0);
    b.addToCols(dKva, b.reshape(b.rope(dkpe, ctx.cos, ctx.sin, ctx.positions, 0, rope, true), [N, rope]), C);
    // x feeds both the latent and the query projections: their parts add up in full precision
    const dx = this.kvA.backwardInput(b, s.x, dKva, jobs, b.zeros(s.x.shape), true);

    const dqRaw = b.reshape(b.rope(b.reshape(grads.dq, [N, H, nope + rope]), ctx.cos, ctx.sin, ctx.positions, nope, rope, true), [N, H * (nope + rope)]);
    if (this.qA) {
      const dCq = this.qB!.backwardInput(b, cq, dqRaw, jobs);
      const dQa = this.qANorm!.backwardInput(b, s.qa!, dCq, jobs);
      this.qA.backwardInput(b, s.x, dQa, jobs, dx);
    } else {
      this.q!.backwardInput(b, s.x, dqRaw, jobs, dx);
    }
    return dx;
  }

  /**
   * x [N = B·T, d] → [N, d]: writes this block's latent into `cache` at ctx.positions, then each token
   * attends over cache positions up to its own, with W_uk absorbed into the query and W_uv into the
   * output.
   */
  forwardAbsorbed(b: Backend, x: Tensor, ctx: ForwardContext, cache: LatentCacheLayer): Tensor {
    const N = x.shape[0];
    const { H, nope, rope, vDim, kvLora: C } = this;
    const qWidth = nope + rope;
    const kvB = this.kvB.weight.value;
    const { qa, cq } = this.queryLatent(b, x);
    const q = this.queries(b, cq, ctx);
    const { ckvRaw, kpe } = this.latent(b, x, ctx);
    const ckv = this.kvANorm.forward(b, ckvRaw);
    b.writeCache(cache.ckv, b.reshape(ckv, [ctx.batch, ctx.seq, C]), ctx.positions);
    b.writeCache(cache.kpe, b.reshape(kpe, [ctx.batch, ctx.seq, rope]), ctx.positions);

    // qLat[n, h] = q_nope[n, h] · W_uk[h], W_uk[h] = rows [h(nope+v), h(nope+v)+nope) of W_kvb: [nope, C]
    const qLat = b.zeros([ctx.batch, ctx.seq, H, C], 'activation');
    b.gemm({
      m: N, n: C, k: nope, batch: H,
      a: { tensor: q, ld: H * qWidth, batchStride: qWidth },
      b: { tensor: kvB, ld: C, batchStride: (nope + vDim) * C },
      c: { tensor: qLat, ld: H * C, batchStride: C },
    });
    const qPe = b.sliceCols(b.reshape(q, [N * H, qWidth]), nope, qWidth);
    const oLat = b.mlaLatentAttention(qLat, b.reshape(qPe, [ctx.batch, ctx.seq, H, rope]), cache.ckv, cache.kpe, this.softmaxScale, ctx.positions);

    // o[n, h] = oLat[n, h] · W_uv[h]ᵀ, W_uv[h] = rows [h(nope+v)+nope, (h+1)(nope+v)) of W_kvb: [v, C]
    const o = b.zeros([N, H * vDim], 'activation');
    b.gemm({
      m: N, n: vDim, k: C, batch: H,
      a: { tensor: oLat, ld: H * C, batchStride: C },
      b: { tensor: kvB, offset: nope * C, ld: C, batchStride: (nope + vDim) * C, trans: true },
      c: { tensor: o, ld: H * vDim, batchStride: vDim },
    });
    const out = this.o.forward(b, o);
    for (const t of [qa, qa ? cq : null, q, ckvRaw, ckv, kpe, qLat, qPe, oLat, o]) if (t) b.free(t);
    return out;
  }
}
