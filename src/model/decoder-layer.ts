// One transformer block: h += MLA(norm(h)); h += FFN(norm(h)), the FFN dense for the first
// `first_k_dense_replace` layers and DeepSeekMoE after.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { WeightGradJob } from './grad-jobs.js';
import { MultiHeadLatentAttention, type ForwardContext, type LatentCacheLayer, type MlaSaved, type Recompute } from './mla.js';
import { MLP, type MlpSaved } from './mlp.js';
import { MoE, type MoeSaved } from './moe.js';
import type { ParameterSet } from './parameters.js';
import { RMSNorm } from './rms-norm.js';

/** Options of a training forward. */
export interface TrainForward {
  recompute: Recompute;
  /** α of the sequence-wise balance loss (0: off). */
  balanceAlpha: number;
  /** [1]: the balance losses are added into it on the device (needed when α > 0). */
  balanceSum: Tensor | null;
}

export interface LayerSaved {
  h: Tensor;
  x?: Tensor;
  attn?: MlaSaved;
  h1: Tensor;
  x2?: Tensor;
  ffn?: MlpSaved | MoeSaved;
}

export class DecoderLayer {
  readonly inputNorm: RMSNorm;
  readonly postAttentionNorm: RMSNorm;
  readonly attention: MultiHeadLatentAttention;
  readonly ffn: MLP | MoE;

  constructor(params: ParameterSet, prefix: string, readonly config: ModelConfig, dense: boolean, softmaxScale: number) {
    const d = config.hiddenSize;
    this.inputNorm = new RMSNorm(params.param(`${prefix}.input_layernorm.weight`, [d]), config.rmsNormEps);
    this.postAttentionNorm = new RMSNorm(params.param(`${prefix}.post_attention_layernorm.weight`, [d]), config.rmsNormEps);
    this.attention = new MultiHeadLatentAttention(params, `${prefix}.self_attn`, config, softmaxScale);
    this.ffn = dense ? new MLP(params, `${prefix}.mlp`, d, config.intermediateSize) : new MoE(params, `${prefix}.mlp`, config);
  }

  /**
   * h [N, d] → [N, d]. With a cache slice the attention is the absorbed one over the cache;
   * without, the naive one within the block. With `train`, returns what backward needs in `saved`.
   */
  forward(b: Backend, h: Tensor, ctx: ForwardContext, opts: { cache?: LatentCacheLayer; expertLoad?: Tensor; train?: TrainForward; saved?: LayerSaved[] } = {}): Tensor {
    const train = opts.train;
    const saved: LayerSaved = { h, h1: h };
    const x = this.inputNorm.forward(b, h);
    const a = opts.cache
      ? this.attention.forwardAbsorbed(b, x, ctx, opts.cache)
      : this.attention.forwardNaive(b, x, ctx, train && ((s) => (saved.attn = s)), train?.recompute);
    const h1 = b.add(h, a);
    b.free(a);
    const x2 = this.postAttentionNorm.forward(b, h1);
    const f = this.ffn instanceof MoE
      ? this.ffn.forward(b, x2, opts.expertLoad, train && ((s) => (saved.ffn = s)), train && { batch: ctx.batch, seq: ctx.seq, balanceAlpha: train.balanceAlpha, balanceSum: train.balanceSum })
      : this.ffn.forward(b, x2, train && ((s) => (saved.ffn = s)));
    const out = b.add(h1, f);
    b.free(f);
    if (train && opts.saved) {
      saved.h1 = h1;
      if (train.recompute.norms) {
        // the saved records still name x and x2; backward rebinds them to recomputed copies
        b.free(x);
        b.free(x2);
      } else {
        saved.x = x;
        saved.x2 = x2;
      }
      opts.saved.push(saved);
    } else {
      for (const t of [x, h1, x2]) b.free(t);
    }
    return out;
  }

  /** Point the FFN's saved input (the post-attention norm's output) at a recomputed x2. */
  private rebindFfnInput(saved: MlpSaved | MoeSaved, x2: Tensor): void {
    saved.x = x2;
    if ('shared' in saved && saved.shared) saved.shared.x = x2;
  }

  /** dOut [N, d] → dh [N, d]; queues this layer's parameter gradients on `jobs`. */
  backwardInput(b: Backend, s: LayerSaved, dOut: Tensor, jobs: WeightGradJob[]): Tensor {
    // out = h1 + ffn(norm2(h1)),  h1 = h + attn(norm1(h))
    if (!s.attn || !s.ffn) throw new Error('DecoderLayer.backwardInput: the forward did not save activations (call it with train options)');
    if (!s.x2) this.rebindFfnInput(s.ffn, this.postAttentionNorm.forward(b, s.h1));
    const ffn = this.ffn;
    const dX2 = ffn instanceof MoE ? ffn.backwardInput(b, s.ffn as MoeSaved, dOut, jobs) : ffn.backwardInput(b, s.ffn as MlpSaved, dOut, jobs);
    const dH1 = this.postAttentionNorm.backwardInput(b, s.h1, dX2, jobs);
    b.addInPlace(dH1, dOut);
    if (!s.x) s.attn.x = this.inputNorm.forward(b, s.h);
    const dX = this.attention.backwardInput(b, s.attn, dH1, jobs);
    const dH = this.inputNorm.backwardInput(b, s.h, dX, jobs);
    b.addInPlace(dH, dH1);
    return dH;
  }
}
