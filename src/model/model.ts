// The DeepSeek-V3 causal language model: embedding, decoder layers, final norm, output head,
// and the optional multi-token-prediction modules. One class serves every configuration.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LatentCache } from '../infer/latent-cache.js';
import type { ModelConfig } from './config.js';
import { DecoderLayer } from './decoder-layer.js';
import { Linear } from './linear.js';
import type { ForwardContext } from './mla.js';
import { MtpModule } from './mtp.js';
import type { Parameter, ParameterSet } from './parameters.js';
import { RMSNorm } from './rms-norm.js';
import { ropeTables, softmaxScale } from './rope.js';

export interface ForwardOptions {
  /** Use (and extend) this latent cache: absorbed attention over everything cached so far. */
  cache?: LatentCache;
  /** Receives the embedding output, each layer's output, and the output of the final norm. */
  hiddenStates?: Tensor[];
  /** Compute logits for the last position of each sequence only (decoding). */
  lastOnly?: boolean;
  /** Accumulates per layer the tokens each routed expert received: [E] on the device per layer. */
  expertLoad?: Tensor[];
}

export class DeepseekV3 {
  readonly embedTokens: Parameter;
  readonly layers: DecoderLayer[] = [];
  readonly norm: RMSNorm;
  readonly lmHead: Linear;
  /** MTP modules k = 1..D (empty when the checkpoint has none and training did not ask for them). */
  readonly mtp: MtpModule[] = [];
  private cos: Tensor | null = null;
  private sin: Tensor | null = null;
  private ropePositions = 0;

  /** `withMtp`: build the config's num_nextn_predict_layers MTP modules (training, speculative decoding). */
  constructor(readonly backend: Backend, readonly config: ModelConfig, readonly params: ParameterSet, withMtp = false) {
    const c = config;
    this.embedTokens = params.param('model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]);
    const scale = softmaxScale(c);
    for (let l = 0; l < c.numHiddenLayers; l++) {
      this.layers.push(new DecoderLayer(params, `model.layers.${l}`, c, l < c.firstKDenseReplace, scale));
    }
    this.norm = new RMSNorm(params.param('model.norm.weight', [c.hiddenSize]), c.rmsNormEps);
    this.lmHead = new Linear(c.tieWordEmbeddings ? this.embedTokens : params.param('lm_head.weight', [c.vocabSize, c.hiddenSize]));
    if (withMtp) {
      for (let k = 1; k <= c.numNextnPredictLayers; k++) this.mtp.push(new MtpModule(params, `model.layers.${c.numHiddenLayers + k - 1}`, c, scale));
    }
  }

  /**
   * RoPE tables [P, rope/2] covering positions [0, needed), grown by doubling up to
   * max_position_embeddings. Growing reallocates them: a captured decode step asks for its cache's
   * capacity before capture, so that later steps find them in place.
   */
  ropeTablesFor(needed: number): { cos: Tensor; sin: Tensor } {
    const max = this.config.maxPositionEmbeddings;
    if (needed > max) throw new Error(`a sequence of ${needed} tokens exceeds max_position_embeddings (${max})`);
    if (needed > this.ropePositions) {
      const positions = Math.min(max, Math.max(needed, 2 * this.ropePositions, 256));
      const { cos, sin } = ropeTables(this.config, positions);
      const half = this.config.qkRopeHeadDim / 2;
      if (this.cos) this.backend.free(this.cos);
      if (this.sin) this.backend.free(this.sin);
      this.cos = this.backend.upload(cos, [positions, half]);
      this.sin = this.backend.upload(sin, [positions, half]);
      this.ropePositions = positions;
    }
    return { cos: this.cos!, sin: this.sin! };
  }

  /** The context of a block of `seq` tokens per sequence starting at absolute position `start` (its positions uploaded: the caller frees them). */
  context(batch: number, seq: number, start: number): ForwardContext {
    const { cos, sin } = this.ropeTablesFor(start + seq);
    const pos = new Int32Array(batch * seq);
    for (let i = 0; i < pos.length; i++) pos[i] = start + (i % seq);
    return { batch, seq, positions: this.backend.uploadInt(pos, [batch * seq]), cos, sin };
  }

  /** Embedding rows: ids [N] (host) → [N, d]. */
  embed(ids: Int32Array): Tensor {
    const b = this.backend;
    const idsT = b.uploadInt(ids, [ids.length]);
    const h = b.embedding(this.embedTokens.value, idsT);
    b.free(idsT);
    return h;
  }

  /** Final hidden states after model.norm: ids [B·T] (row-major [B, T]) → [B·T, d]. */
  hidden(ids: Int32Array, batch: number, seq: number, opts: ForwardOptions = {}): Tensor {
    const b = this.backend;
    const cache = opts.cache;
    const start = cache ? cache.length : 0;
    if (cache && (cache.batch !== batch || start + seq > cache.capacity)) {
      throw new Error(`latent cache of batch ${cache.batch} and capacity ${cache.capacity} cannot take ${batch}×${seq} more tokens after ${start}`);
    }
    const ctx = this.context(batch, seq, start);
    const idsT = b.uploadInt(ids, [ids.length]);
    const out = this.hiddenAt(idsT, ctx, opts);
    b.free(idsT);
    b.free(ctx.positions);
    if (cache) cache.length += seq;
    return out;
  }

  /**
   * Final hidden states after model.norm for token ids on the device: ids [B·T] i32 → [B·T, d], at
   * ctx.positions, over and into `opts.cache` when given (whose length the caller advances). Reads
   * nothing from the host, so a decode step made of it can be captured into a graph.
   */
  hiddenAt(ids: Tensor, ctx: ForwardContext, opts: ForwardOptions = {}): Tensor {
    const b = this.backend;
    let h = b.embedding(this.embedTokens.value, ids);
    opts.hiddenStates?.push(h);
    this.layers.forEach((layer, l) => {
      const next = layer.forward(b, h, ctx, { cache: opts.cache?.layers[l], expertLoad: opts.expertLoad?.[l] });
      if (!opts.hiddenStates) b.free(h);
      h = next;
      opts.hiddenStates?.push(h);
    });
    const out = this.norm.forward(b, h);
    if (!opts.hiddenStates) b.free(h);
    opts.hiddenStates?.push(out);
    return out;
  }

  /** Logits: ids [B·T] → [B·T, vocab], or [B, vocab] for the last positions with `lastOnly`. */
  logits(ids: Int32Array, batch: number, seq: number, opts: ForwardOptions = {}): Tensor {
    const b = this.backend;
    const h = this.hidden(ids, batch, seq, opts);
    let x = h;
    if (opts.lastOnly && seq > 1) {
      x = b.zeros([batch, this.config.hiddenSize]);
      for (let i = 0; i < batch; i++) b.addInPlace(b.rows(x, i, 1), b.rows(h, i * seq + seq - 1, 1));
    }
    const logits = this.lmHead.forward(b, x);
    if (x !== h) b.free(x);
    if (!opts.hiddenStates) b.free(h);
    return logits;
  }
}
