// Multi-head Latent Attention (SPEC §2), written twice side by side like DeepSeek's model.py:
// `forwardNaive` expands the latent into per-head keys and values (training, full forwards);
// `forwardAbsorbed` folds W_uk into the query and W_uv into the output, so attention runs over
// the cached latent [c_kv ; k_pe] directly (decoding). The two agree to rounding.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { ParameterSource } from './parameters.js';

/** What a layer's forward needs to know about the token block it processes. */
export interface ForwardContext {
  batch: number;
  /** Tokens per sequence in this block. */
  seq: number;
  /** Absolute position of the block's first token (the number of cached tokens before it). */
  start: number;
  /** [batch·seq] i32: start + t for token t of each sequence. */
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

export class MultiHeadLatentAttention {
  readonly qA: Tensor | null;
  readonly qANorm: Tensor | null;
  readonly qB: Tensor | null;
  readonly q: Tensor | null;
  readonly kvA: Tensor;
  readonly kvANorm: Tensor;
  readonly kvB: Tensor;
  readonly o: Tensor;

  private readonly H: number;
  private readonly nope: number;
  private readonly rope: number;
  private readonly vDim: number;
  private readonly kvLora: number;

  constructor(params: ParameterSource, prefix: string, private readonly config: ModelConfig, readonly softmaxScale: number) {
    const c = config;
    const d = c.hiddenSize;
    this.H = c.numAttentionHeads;
    this.nope = c.qkNopeHeadDim;
    this.rope = c.qkRopeHeadDim;
    this.vDim = c.vHeadDim;
    this.kvLora = c.kvLoraRank;
    const qWidth = this.H * (this.nope + this.rope);
    if (c.qLoraRank !== null) {
      this.qA = params.get(`${prefix}.q_a_proj.weight`, [c.qLoraRank, d]);
      this.qANorm = params.get(`${prefix}.q_a_layernorm.weight`, [c.qLoraRank]);
      this.qB = params.get(`${prefix}.q_b_proj.weight`, [qWidth, c.qLoraRank]);
      this.q = null;
    } else {
      this.qA = this.qANorm = this.qB = null;
      this.q = params.get(`${prefix}.q_proj.weight`, [qWidth, d]);
    }
    this.kvA = params.get(`${prefix}.kv_a_proj_with_mqa.weight`, [this.kvLora + this.rope, d]);
    this.kvANorm = params.get(`${prefix}.kv_a_layernorm.weight`, [this.kvLora]);
    this.kvB = params.get(`${prefix}.kv_b_proj.weight`, [this.H * (this.nope + this.vDim), this.kvLora]);
    this.o = params.get(`${prefix}.o_proj.weight`, [d, this.H * this.vDim]);
  }

  /** x [N, d] → roped queries [N, H, nope+rope]. */
  private queries(b: Backend, x: Tensor, ctx: ForwardContext): Tensor {
    let q: Tensor;
    if (this.q) {
      q = b.linear(x, this.q);
    } else {
      const qa = b.linear(x, this.qA!);
      const cq = b.rmsNorm(qa, this.qANorm!, this.config.rmsNormEps);
      q = b.linear(cq, this.qB!);
      b.free(qa);
      b.free(cq);
    }
    const roped = b.rope(b.reshape(q, [x.shape[0], this.H, this.nope + this.rope]), ctx.cos, ctx.sin, ctx.positions, this.nope, this.rope);
    b.free(q);
    return roped;
  }

  /** x [N, d] → normalised c_kv [N, kv_lora] and roped k_pe [N, 1, rope]. */
  private latent(b: Backend, x: Tensor, ctx: ForwardContext): { ckv: Tensor; kpe: Tensor } {
    const kva = b.linear(x, this.kvA);
    const raw = b.sliceCols(kva, 0, this.kvLora);
    const kpeRaw = b.sliceCols(kva, this.kvLora, this.kvLora + this.rope);
    b.free(kva);
    const ckv = b.rmsNorm(raw, this.kvANorm, this.config.rmsNormEps);
    b.free(raw);
    const kpe = b.rope(b.reshape(kpeRaw, [x.shape[0], 1, this.rope]), ctx.cos, ctx.sin, ctx.positions, 0, this.rope);
    b.free(kpeRaw);
    return { ckv, kpe };
  }

  /** x [N = B·T, d] → [N, d], attending within the block only (no cache). */
  forwardNaive(b: Backend, x: Tensor, ctx: ForwardContext): Tensor {
    const N = x.shape[0];
    const { H, nope, vDim } = this;
    const q = this.queries(b, x, ctx);
    const { ckv, kpe } = this.latent(b, x, ctx);
    const kv = b.linear(ckv, this.kvB); // [N, H·(nope+v)]
    const perHead = b.reshape(kv, [N * H, nope + vDim]);
    const kNope = b.sliceCols(perHead, 0, nope);
    const v = b.sliceCols(perHead, nope, nope + vDim);
    const k = b.concatHeads(b.reshape(kNope, [N, H, nope]), kpe);
    const shape4 = (t: Tensor, width: number) => b.reshape(t, [ctx.batch, ctx.seq, H, width]);
    const attn = b.attention(shape4(q, nope + this.rope), shape4(k, nope + this.rope), shape4(v, vDim), this.softmaxScale, 0);
    const out = b.linear(b.reshape(attn, [N, H * vDim]), this.o);
    for (const t of [q, ckv, kpe, kv, kNope, v, k, attn]) b.free(t);
    return out;
  }

  /**
   * x [N = B·T, d] → [N, d]: writes this block's latent into `cache` at ctx.start, then attends over
   * cache positions [0, start+T) with W_uk absorbed into the query and W_uv into the output.
   */
  forwardAbsorbed(b: Backend, x: Tensor, ctx: ForwardContext, cache: LatentCacheLayer): Tensor {
    const N = x.shape[0];
    const { H, nope, rope, vDim, kvLora: C } = this;
    const qWidth = nope + rope;
    const q = this.queries(b, x, ctx);
    const { ckv, kpe } = this.latent(b, x, ctx);
    b.writeCache(cache.ckv, b.reshape(ckv, [ctx.batch, ctx.seq, C]), ctx.start);
    b.writeCache(cache.kpe, b.reshape(kpe, [ctx.batch, ctx.seq, rope]), ctx.start);

    // qLat[n, h] = q_nope[n, h] · W_uk[h], W_uk[h] = rows [h(nope+v), h(nope+v)+nope) of W_kvb: [nope, C]
    const qLat = b.zeros([ctx.batch, ctx.seq, H, C]);
    b.gemm({
      m: N, n: C, k: nope, batch: H,
      a: { tensor: q, ld: H * qWidth, batchStride: qWidth },
      b: { tensor: this.kvB, ld: C, batchStride: (nope + vDim) * C },
      c: { tensor: qLat, ld: H * C, batchStride: C },
    });
    const qPe = b.sliceCols(b.reshape(q, [N * H, qWidth]), nope, qWidth);
    const oLat = b.mlaLatentAttention(qLat, b.reshape(qPe, [ctx.batch, ctx.seq, H, rope]), cache.ckv, cache.kpe, this.softmaxScale, ctx.start, ctx.start + ctx.seq);

    // o[n, h] = oLat[n, h] · W_uv[h]ᵀ, W_uv[h] = rows [h(nope+v)+nope, (h+1)(nope+v)) of W_kvb: [v, C]
    const o = b.zeros([N, H * vDim]);
    b.gemm({
      m: N, n: vDim, k: C, batch: H,
      a: { tensor: oLat, ld: H * C, batchStride: C },
      b: { tensor: this.kvB, offset: nope * C, ld: C, batchStride: (nope + vDim) * C, trans: true },
      c: { tensor: o, ld: H * vDim, batchStride: vDim },
    });
    const out = b.linear(o, this.o);
    for (const t of [q, ckv, kpe, qLat, qPe, oLat, o]) b.free(t);
    return out;
  }
}
