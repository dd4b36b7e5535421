// A multi-token-prediction module (SPEC §4). Module k at position i combines the embedding of
// token i+k with the previous depth's hidden state, runs one MoE decoder block, and predicts
// token i+k+1 through the shared output head:
//   h'_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)]),  h^k = Block_k(h'),  logits = head(norm_k(h^k)).

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import { DecoderLayer, type LayerSaved, type TrainForward } from './decoder-layer.js';
import type { WeightGradJob } from './grad-jobs.js';
import { Linear } from './linear.js';
import type { ForwardContext, LatentCacheLayer } from './mla.js';
import type { ParameterSet } from './parameters.js';
import { RMSNorm } from './rms-norm.js';

export interface MtpSaved {
  hPrev: Tensor;
  emb: Tensor;
  /** [enorm(emb) ; hnorm(hPrev)] [N, 2d], the input of eh_proj. */
  joined: Tensor;
  block: LayerSaved[];
  /** The block's output h^k [N, d] (input of the head norm). */
  hk: Tensor;
}

export class MtpModule {
  readonly enorm: RMSNorm;
  readonly hnorm: RMSNorm;
  readonly ehProj: Linear;
  readonly block: DecoderLayer;
  /** shared_head.norm: the module's own final norm before the shared output head. */
  readonly headNorm: RMSNorm;

  /** `prefix` is model.layers.{num_hidden_layers + k − 1}. */
  constructor(params: ParameterSet, readonly prefix: string, config: ModelConfig, softmaxScale: number) {
    const d = config.hiddenSize;
    const eps = config.rmsNormEps;
    this.enorm = new RMSNorm(params.param(`${prefix}.enorm.weight`, [d]), eps);
    this.hnorm = new RMSNorm(params.param(`${prefix}.hnorm.weight`, [d]), eps);
    this.ehProj = new Linear(params.param(`${prefix}.eh_proj.weight`, [d, 2 * d]));
    this.block = new DecoderLayer(params, prefix, config, false, softmaxScale);
    this.headNorm = new RMSNorm(params.param(`${prefix}.shared_head.norm.weight`, [d]), eps);
  }

  /**
   * hPrev [N, d] (h^{k−1}), emb [N, d] (Emb(t_{i+k})) → the normed hidden state [N, d] that the shared
   * head turns into logits, and h^k [N, d] for the next depth.
   */
  forward(
    b: Backend, hPrev: Tensor, emb: Tensor, ctx: ForwardContext,
    opts: { train?: TrainForward; save?: (s: MtpSaved) => void; expertLoad?: Tensor; cache?: LatentCacheLayer } = {},
  ): { normed: Tensor; hk: Tensor } {
    const N = hPrev.shape[0];
    const d = hPrev.shape[1];
    const e = this.enorm.forward(b, emb);
    const h = this.hnorm.forward(b, hPrev);
    const stacked = b.concatHeads(b.reshape(e, [N, 1, d]), b.reshape(h, [N, 1, d]));
    const joined = b.reshape(stacked, [N, 2 * d]);
    b.free(e);
    b.free(h);
    const hIn = this.ehProj.forward(b, joined);
    const blockSaved: LayerSaved[] = [];
    const hk = this.block.forward(b, hIn, ctx, { train: opts.train, saved: blockSaved, expertLoad: opts.expertLoad, cache: opts.cache });
    // the block's saved record keeps hIn as its input h: free it only when nothing is saved
    if (opts.save) {
      opts.save({ hPrev, emb, joined, block: blockSaved, hk });
    } else {
      b.free(stacked);
      b.free(hIn);
    }
    return { normed: this.headNorm.forward(b, hk), hk };
  }

  /**
   * dNormed [N, d] (from this depth's loss) and dHk [N, d] or null (from the next depth) →
   * gradients of hPrev and emb; queues parameter gradients on `jobs`.
   */
  backwardInput(b: Backend, s: MtpSaved, dNormed: Tensor, dHk: Tensor | null, jobs: WeightGradJob[]): { dHPrev: Tensor; dEmb: Tensor } {
    const d = s.hPrev.shape[1];
    const dOut = this.headNorm.backwardInput(b, s.hk, dNormed, jobs);
    if (dHk) b.addInPlace(dOut, dHk);
    const dHIn = this.block.backwardInput(b, s.block[0], dOut, jobs);
    const dJoined = this.ehProj.backwardInput(b, s.joined, dHIn, jobs);
    const dE = b.sliceCols(dJoined, 0, d);
    const dH = b.sliceCols(dJoined, d, 2 * d);
    const dEmb = this.enorm.backwardInput(b, s.emb, dE, jobs);
    const dHPrev = this.hnorm.backwardInput(b, s.hPrev, dH, jobs);
    return { dHPrev, dEmb };
  }
}
