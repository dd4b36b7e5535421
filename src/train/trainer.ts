// The training loop: micro-batches of windows from the sampler, forward/backward with the main,
// MTP and balance losses, AdamW with a schedule, the auxiliary-loss-free bias update from the
// step's expert loads, evaluation on the held-out split, and checkpoints that resume exactly.

import type { Recompute } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import type { BatchSampler, BatchSamplerState } from './data/batches.js';
import { expertLoadStats, updateCorrectionBias } from './expert-balance.js';
import { chunkedCrossEntropy, forwardBackward, shifted } from './forward-backward.js';
import { AdamW, type AdamWConfig } from './optimizer.js';
import { loadTrainerState, saveCheckpoint, type TrainerMeta } from './checkpoint.js';
import type { EvalMetrics, StepMetrics } from './plot.js';
import { learningRate, type ScheduleConfig } from './schedule.js';

export interface TrainerOptions {
  steps: number;
  batchSize: number;
  seqLen: number;
  /** Micro-batches per optimizer step (gradient accumulation). */
  gradAccum: number;
  schedule: ScheduleConfig;
  adamw: AdamWConfig;
  /** λ of the MTP loss. */
  mtpWeight: number;
  /** α of the sequence-wise balance loss. */
  balanceAlpha: number;
  /** γ of the bias update (0: off). */
  biasUpdateSpeed: number;
  recompute: Recompute;
  /** Held-out batches per evaluation. */
  evalBatches: number;
  keepCheckpoints: number;
}

export class Trainer {
  step = 0;
  tokens = 0;
  readonly optimizer: AdamW;

  constructor(readonly model: DeepseekV3, readonly sampler: BatchSampler, readonly opts: TrainerOptions) {
    const window = opts.seqLen + 1 + model.mtp.length;
    if (sampler.windowLength !== window) throw new Error(`the sampler's windows hold ${sampler.windowLength} tokens; training needs seqLen + 1 + MTP depth = ${window}`);
    if (opts.seqLen + model.mtp.length > model.config.maxPositionEmbeddings) {
      throw new Error(`--seq-len ${opts.seqLen} exceeds the model's limit of ${model.config.maxPositionEmbeddings} positions`);
    }
    // the routed experts' gradients first, evenly spaced (one batched GEMM adds into all of a layer's)
    for (const { ffn } of this.moeLayers()) ffn.allocateGradients(model.backend);
    model.params.allocateGradients(model.backend);
    this.optimizer = new AdamW(model.backend, model.params.all(), opts.adamw);
    // RoPE tables for the training length now, so that no step allocates anything that outlives it
    model.backend.free(model.context(1, opts.seqLen + model.mtp.length, 0).positions);
  }

  /** The MoE layers whose correction bias the balancing rule updates, by their index in the step's loads. */
  private moeLayers() {
    return [...this.model.layers, ...this.model.mtp.map((m) => m.block)]
      .map((layer, index) => ({ index, ffn: layer.ffn }))
      .filter((l): l is { index: number; ffn: import('../model/moe.js').MoE } => 'experts' in l.ffn);
  }

  trainStep(): StepMetrics {
    const b = this.model.backend;
    const mark = b.markAllocations();
    try {
      return this.trainStepScoped();
    } finally {
      b.releaseAllocations(mark);
    }
  }

  private trainStepScoped(): StepMetrics {
    const { model, opts } = this;
    const b = model.backend;
    const started = performance.now();
    // every gradient to zero in one launch
    b.scaleInPlaceMany(model.params.all().flatMap((p) => (p.grad ? [p.grad] : [])), 0);
    let loss = 0, mainLoss = 0, balanceLoss = 0;
    let mtpLoss = new Array<number>(model.mtp.length).fill(0);
    let loads: Float64Array[] | null = null;
    for (let micro = 0; micro < opts.gradAccum; micro++) {
      const tokens = this.sampler.nextBatch(opts.batchSize);
      const r = forwardBackward(model, tokens, opts.batchSize, opts.seqLen, {
        mtpWeight: opts.mtpWeight, balanceAlpha: opts.balanceAlpha, recompute: opts.recompute, gradScale: 1 / opts.gradAccum,
      });
      loss += r.loss / opts.gradAccum;
      mainLoss += r.mainLoss / opts.gradAccum;
      balanceLoss += r.balanceLoss / opts.gradAccum;
      mtpLoss = mtpLoss.map((m, k) => m + r.mtpLosses[k] / opts.gradAccum);
      if (!loads) loads = r.expertLoad;
      else loads.forEach((l, i) => l.forEach((_, e) => (l[e] += r.expertLoad[i][e])));
    }
    const lr = learningRate(opts.schedule, this.step + 1);
    const gradNorm = this.optimizer.step(lr);
    const moe = this.moeLayers();
    for (const { index, ffn } of moe) if (ffn.bias) updateCorrectionBias(b, ffn.bias, loads![index], opts.biasUpdateSpeed);
    this.step++;
    const stepTokens = opts.batchSize * opts.seqLen * opts.gradAccum;
    this.tokens += stepTokens;
    return {
      step: this.step, loss, main_loss: mainLoss, mtp_loss: mtpLoss, balance_loss: balanceLoss, lr, grad_norm: gradNorm,
      tokens_per_s: stepTokens / ((performance.now() - started) / 1000),
      expert_load: moe.map(({ index }) => expertLoadStats(index, loads![index])),
    };
  }

  /** Main-model loss and perplexity on up to `evalBatches` held-out batches. */
  evaluate(): EvalMetrics {
    const { model, opts } = this;
    const b = model.backend;
    const mark = b.markAllocations();
    try {
      return this.evaluateScoped();
    } finally {
      b.releaseAllocations(mark);
    }
  }

  private evaluateScoped(): EvalMetrics {
    const { model, opts } = this;
    const b = model.backend;
    const window = this.sampler.windowLength;
    let lossSum = 0, count = 0;
    for (const tokens of this.sampler.evalBatches(opts.batchSize, opts.evalBatches)) {
      const rows = tokens.length / window;
      const h = model.hidden(shifted(tokens, rows, window, opts.seqLen, 0), rows, opts.seqLen);
      const ce = chunkedCrossEntropy(b, h, model.lmHead, shifted(tokens, rows, window, opts.seqLen, 1), 1, 1024, false);
      b.free(h);
      lossSum += ce.lossSum;
      count += ce.count;
    }
    const loss = lossSum / count;
    return { step: this.step, eval_loss: loss, eval_ppl: Math.exp(loss) };
  }

  save(outDir: string, tokenizerFiles: string[], runOptions: unknown, onTensor?: (name: string) => void): string {
    const meta: TrainerMeta = { step: this.step, tokens: this.tokens, data: this.sampler.state, options: runOptions };
    return saveCheckpoint(outDir, this.model, this.optimizer.state, meta, tokenizerFiles, this.opts.adamw.momentsDtype, { keep: this.opts.keepCheckpoints, onTensor });
  }

  /** Continue from a checkpoint directory whose weights `model` was loaded from. */
  restore(checkpointDir: string): TrainerMeta {
    const meta = loadTrainerState(checkpointDir, this.model.backend, this.optimizer.state);
    this.step = meta.step;
    this.tokens = meta.tokens;
    this.sampler.restore(meta.data as BatchSamplerState);
    return meta;
  }
}
