// One decoding step — a token per sequence through the model over the latent cache — recorded once
// into a graph and replayed (DESIGN §7): on the GPU, hundreds of kernel launches and GEMMs then cost
// one launch. Everything a step reads that changes from one token to the next lives in fixed device
// buffers: the token ids and their positions, uploaded before each replay (outside the graph), and
// the logits, which the step writes in place. The first step runs eagerly, so that whatever the ops
// make on first use (compiled kernels, GEMM plans, the MoE's tables of expert weight addresses)
// exists before the second step is captured; every later step replays the capture.

import type { CapturedGraph } from '../backend/backend.js';
import type { ForwardContext } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import { MoE, MOE_DIRECT_MAX_SLOTS } from '../model/moe.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LatentCache } from './latent-cache.js';

export class DecodeStep {
  /** [B] i32: the token of each sequence, rewritten before every step. */
  private readonly ids: Tensor;
  /** [B] i32: the position of each sequence's token, rewritten before every step. */
  private readonly positions: Tensor;
  /** [B, vocab]: the step's output, written in place. */
  private readonly logits: Tensor;
  /** The model's RoPE tables, covering the cache's capacity, that the capture reads. */
  private tables: { cos: Tensor; sin: Tensor };
  /**
   * Whether the step can be captured: not where a MoE layer permutes its rows (more than
   * MOE_DIRECT_MAX_SLOTS (token, expert) slots), whose counts reach the host; such a step runs
   * eagerly every time.
   */
  readonly capturable: boolean;
  private warm = false;
  private graph: CapturedGraph | null = null;

  constructor(readonly model: DeepseekV3, readonly cache: LatentCache) {
    const b = model.backend;
    const B = cache.batch;
    // made now: growing the tables later would reallocate them under a captured step
    this.tables = model.ropeTablesFor(cache.capacity);
    this.ids = b.uploadInt(new Int32Array(B), [B]);
    this.positions = b.uploadInt(new Int32Array(B), [B]);
    this.logits = b.zeros([B, model.config.vocabSize], 'activation');
    this.capturable = model.layers.every((l) => !(l.ffn instanceof MoE) || B * l.ffn.router.topK <= MOE_DIRECT_MAX_SLOTS);
  }

  /**
   * ids [B] (host): the token of each sequence, all at `position` (at most the cache's length; the
   * cache holds position + 1 tokens afterwards) → logits [B, vocab], overwritten by the next run.
   */
  run(ids: Int32Array, position: number): Tensor {
    const { model, cache } = this;
    const b = model.backend;
    if (ids.length !== cache.batch) throw new Error(`DecodeStep.run: ${ids.length} token ids for a batch of ${cache.batch}`);
    if (!Number.isInteger(position) || position < 0 || position > cache.length || position >= cache.capacity) {
      throw new Error(`DecodeStep.run: position ${position} for a cache holding ${cache.length} of ${cache.capacity} positions`);
    }
    b.copyFromHostInt(this.ids, ids);
    b.copyFromHostInt(this.positions, new Int32Array(cache.batch).fill(position));
    const tables = model.ropeTablesFor(cache.capacity);
    if (tables.cos !== this.tables.cos || tables.sin !== this.tables.sin) {
      // something else grew the model's tables: the capture reads freed ones, record it again
      this.tables = tables;
      this.graph?.free();
      this.graph = null;
    }
    if (!this.warm || !this.capturable) {
      this.forward();
      this.warm = true;
    } else {
      this.graph ??= b.captureGraph(() => this.forward());
      this.graph.replay();
    }
    cache.length = position + 1;
    return this.logits;
  }

  /** The step itself: reads only the fixed buffers, the cache and the weights. */
  private forward(): void {
    const { model, cache } = this;
    const b = model.backend;
    const ctx: ForwardContext = { batch: cache.batch, seq: 1, positions: this.positions, cos: this.tables.cos, sin: this.tables.sin };
    const h = model.hiddenAt(this.ids, ctx, { cache });
    model.lmHead.forwardInto(b, h, this.logits);
    b.free(h);
  }

  /** Release the graph and the step's buffers (not the cache). */
  free(): void {
    const b = this.model.backend;
    this.graph?.free();
    this.graph = null;
    for (const t of [this.ids, this.positions, this.logits]) b.free(t);
  }
}
