// One transformer block: h += MLA(norm(h)); h += FFN(norm(h)), the FFN dense for the first
// `first_k_dense_replace` layers and DeepSeekMoE after.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import { MultiHeadLatentAttention, type ForwardContext, type LatentCacheLayer } from './mla.js';
import { MLP } from './mlp.js';
import { MoE } from './moe.js';
import type { ParameterSource } from './parameters.js';

export class DecoderLayer {
  readonly inputNorm: Tensor;
  readonly postAttentionNorm: Tensor;
  readonly attention: MultiHeadLatentAttention;
  readonly ffn: MLP | MoE;

  constructor(params: ParameterSource, prefix: string, readonly config: ModelConfig, dense: boolean, softmaxScale: number) {
    const d = config.hiddenSize;
    this.inputNorm = params.get(`${prefix}.input_layernorm.weight`, [d]);
    this.postAttentionNorm = params.get(`${prefix}.post_attention_layernorm.weight`, [d]);
    this.attention = new MultiHeadLatentAttention(params, `${prefix}.self_attn`, config, softmaxScale);
    this.ffn = dense ? new MLP(params, `${prefix}.mlp`, d, config.intermediateSize) : new MoE(params, `${prefix}.mlp`, config);
  }

  /**
   * h [N, d] → [N, d]. With a cache slice the attention is the absorbed one over the cache;
   * without, the naive one within the block.
   */
  forward(b: Backend, h: Tensor, ctx: ForwardContext, cache?: LatentCacheLayer, expertLoad?: Float64Array): Tensor {
    const eps = this.config.rmsNormEps;
    const x = b.rmsNorm(h, this.inputNorm, eps);
    const a = cache ? this.attention.forwardAbsorbed(b, x, ctx, cache) : this.attention.forwardNaive(b, x, ctx);
    const h1 = b.add(h, a);
    b.free(x);
    b.free(a);
    const x2 = b.rmsNorm(h1, this.postAttentionNorm, eps);
    const f = this.ffn instanceof MoE ? this.ffn.forward(b, x2, expertLoad) : this.ffn.forward(b, x2);
    b.addInPlace(h1, f);
    b.free(x2);
    b.free(f);
    return h1;
  }
}
