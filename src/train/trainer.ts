// The training loop: micro-batches of windows from the sampler, forward/backward with the main,
// MTP and balance losses, AdamW with a schedule, the auxiliary-loss-free bias update from the
// step's expert loads, evaluation on the held-out split, and checkpoints that resume exactly.

import type { Recompute } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import type { BatchSampler, BatchSamplerState } from './data/batches.js';
import { CapturedTrainStep } from './captured-step.js';
import { expertLoadStats, updateCorrectionBias } from './expert-balance.js';
import { checkTokenIds, chunkedCrossEntropy, forwardBackwardInto, shifted, StepSums, type LossOptions } from './forward-backward.js';
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
  /** Replay each micro-batch's forward and backward from a captured graph (CapturedTrainStep). */
  captureGraph?: boolean;
  /** Captured expert capacity over the largest load first measured (default 1.25; below 1 only to test overflows). */
  captureHeadroom?: number;
}

export class Trainer {
  step = 0;
  tokens = 0;
  readonly optimizer: AdamW;
  /** What every step accumulates on the device: losses and expert loads. */
  private readonly sums: StepSums;
  private readonly lossOptions: LossOptions;
  private readonly captured: CapturedTrainStep | null;
  /** Steps redone eagerly because an expert's load overflowed its captured capacity. */
  capturedOverflows = 0;

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
    this.sums = new StepSums(model.backend, model);
    this.lossOptions = { mtpWeight: opts.mtpWeight, balanceAlpha: opts.balanceAlpha, recompute: opts.recompute, gradScale: 1 / opts.gradAccum };
    this.captured = opts.captureGraph ? new CapturedTrainStep(model, opts.batchSize, opts.seqLen, this.lossOptions, this.sums, opts.captureHeadroom) : null;
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
    const batches = Array.from({ length: opts.gradAccum }, () => this.sampler.nextBatch(opts.batchSize));
    this.clearStep();
    const eagerly = () => {
      for (const tokens of batches) forwardBackwardInto(model, tokens, opts.batchSize, opts.seqLen, this.lossOptions, this.sums);
    };
    if (!this.captured) {
      eagerly();
    } else if (this.captured.runStep(batches, () => (this.clearStep(), eagerly()))) {
      this.capturedOverflows++;
    }
    // the balance losses were computed with gradScale = 1 / gradAccum: their sum is the mean
    const r = this.sums.read(opts.mtpWeight, 1);
    const lr = learningRate(opts.schedule, this.step + 1);
    const gradNorm = this.optimizer.step(lr);
    const moe = this.moeLayers();
    for (const { index, ffn } of moe) if (ffn.bias) updateCorrectionBias(b, ffn.bias, this.sums.loads[index]!, opts.biasUpdateSpeed);
    this.step++;
    const stepTokens = opts.batchSize * opts.seqLen * opts.gradAccum;
    this.tokens += stepTokens;
    return {
      step: this.step, loss: r.loss, main_loss: r.mainLoss, mtp_loss: r.mtpLosses, balance_loss: r.balanceLoss, lr, grad_norm: gradNorm,
      tokens_per_s: stepTokens / ((performance.now() - started) / 1000),
      expert_load: moe.map(({ index }) => expertLoadStats(index, r.expertLoad[index])),
    };
  }

  /** Every gradient (one launch) and the step's sums to zero. */
  private clearStep(): void {
    this.model.backend.scaleInPlaceMany(this.model.params.all().flatMap((p) => (p.grad ? [p.grad] : [])), 0);
    this.sums.reset();
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
    const sums = b.zeros([2], 'f32');
    for (const tokens of this.sampler.evalBatches(opts.batchSize, opts.evalBatches)) {
      const rows = tokens.length / window;
      checkTokenIds(tokens, model.config.vocabSize, 'held-out data');
      const h = model.hidden(shifted(tokens, rows, window, opts.seqLen, 0), rows, opts.seqLen);
      const targets = b.uploadInt(shifted(tokens, rows, window, opts.seqLen, 1), [rows * opts.seqLen]);
      chunkedCrossEntropy(b, h, model.lmHead, targets, 1, 1024, false, sums);
      b.free(h);
      b.free(targets);
    }
    const [lossSum, count] = b.download(sums);
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
