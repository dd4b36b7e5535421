// One training micro-batch through the whole model: forward with saved activations, the main
// and MTP cross-entropy losses computed chunk by chunk (the [tokens, vocab] logits never exist
// whole), the balance losses, then backward through MTP, the main stack and the embedding.
// Parameter gradients accumulate into each Parameter's grad.
//
// The step reads nothing back to the host while it runs: its inputs are device tensors
// (StepInputs), the losses and expert loads accumulate into one device tensor (StepSums), read
// once afterwards. So the same code runs eagerly (forwardBackward) and inside a captured graph
// (CapturedTrainStep), as long as the MoE layers permute to a fixed capacity there.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LayerSaved, TrainForward } from '../model/decoder-layer.js';
import { runWeightGradJobs, type WeightGradJob } from '../model/grad-jobs.js';
import type { Linear } from '../model/linear.js';
import type { ForwardContext } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import type { MtpSaved } from '../model/mtp.js';

export interface LossOptions {
  /** λ of the MTP loss L = L_main + (λ / D) Σ_k CE_k (SPEC §4). */
  mtpWeight: number;
  /** α of the sequence-wise balance loss (SPEC §3); 0 turns it off. */
  balanceAlpha: number;
  recompute: TrainForward['recompute'];
  /** Rows of logits materialised at once by the chunked cross-entropy. */
  lossChunkRows?: number;
  /** Gradient multiplier (1 / micro-batches, for gradient accumulation). */
  gradScale?: number;
}

export interface MicroBatchResult {
  /** The objective: main + weighted MTP + balance. */
  loss: number;
  mainLoss: number;
  /** CE_k for each MTP depth. */
  mtpLosses: number[];
  balanceLoss: number;
  /** Tokens routed to each expert per layer ([layer][expert]): the main layers, then one per MTP module; dense layers empty. */
  expertLoad: Float64Array[];
}

/** The targets `shift` positions ahead: for window row b and position t < seq, tokens[b·W + t + shift]. */
export function shifted(tokens: Int32Array, batch: number, window: number, seq: number, shift: number): Int32Array {
  const out = new Int32Array(batch * seq);
  for (let b = 0; b < batch; b++) out.set(tokens.subarray(b * window + shift, b * window + shift + seq), b * seq);
  return out;
}

/**
 * A micro-batch's token ids on the device, each [batch·seq] i32: `shifted` by 0 (the inputs), 1 (the
 * main targets), …, D + 1 (depth D's targets); depth k's inputs are the targets of depth k − 1.
 */
export interface StepInputs {
  byShift: Tensor[];
}

/**
 * Throw unless every id is a token of the model's vocabulary: the device ops would not say (a
 * target ≥ V only turns the summed loss into NaN on the GPU), so ids are checked where they are uploaded.
 */
export function checkTokenIds(ids: Int32Array, vocabSize: number, what: string): void {
  for (const id of ids) if (id < 0 || id >= vocabSize) throw new Error(`${what}: token id ${id} outside the model's vocabulary of ${vocabSize}`);
}

/**
 * Upload the shifts 0 … D + 1 (D = the model's MTP depth) of tokens [batch, window = seq + 1 + D]
 * (into `into` when given), after checking them.
 */
export function uploadStepInputs(model: DeepseekV3, tokens: Int32Array, batch: number, seq: number, into?: StepInputs): StepInputs {
  const b = model.backend;
  const D = model.mtp.length;
  const window = seq + 1 + D;
  if (tokens.length !== batch * window) throw new Error(`training step: ${tokens.length} tokens for ${batch} windows of ${window}`);
  checkTokenIds(tokens, model.config.vocabSize, 'training data');
  const byShift: Tensor[] = [];
  for (let shift = 0; shift <= D + 1; shift++) {
    const ids = shifted(tokens, batch, window, seq, shift);
    if (into) b.copyFromHostInt(into.byShift[shift], ids);
    else byShift.push(b.uploadInt(ids, [ids.length]));
  }
  return into ?? { byShift };
}

/**
 * What a step accumulates on the device, in one FP32 tensor read with one download: the main
 * loss (sum, targets), each MTP depth's (sum, targets), the balance loss, and per MoE layer the
 * tokens each expert received. Zeroed by `reset`; micro-batches add into it.
 */
export class StepSums {
  readonly all: Tensor;
  readonly main: Tensor;
  readonly mtp: Tensor[];
  readonly balance: Tensor;
  /** [E] per layer of the main stack then per MTP block; null for dense layers. */
  readonly loads: (Tensor | null)[];
  private readonly layerExperts: number[];

  constructor(private readonly b: Backend, model: DeepseekV3) {
    const D = model.mtp.length;
    this.layerExperts = [...model.layers, ...model.mtp.map((m) => m.block)].map((l) => ('experts' in l.ffn ? l.ffn.experts.length : 0));
    const total = 2 + 2 * D + 1 + this.layerExperts.reduce((a, e) => a + e, 0);
    this.all = b.zeros([total], 'f32');
    let at = 0;
    const take = (n: number) => {
      const view = b.rows(this.all, at, n);
      at += n;
      return view;
    };
    this.main = take(2);
    this.mtp = Array.from({ length: D }, () => take(2));
    this.balance = take(1);
    this.loads = this.layerExperts.map((e) => (e > 0 ? take(e) : null));
  }

  reset(): void {
    this.b.scaleInPlace(this.all, 0);
  }

  /**
   * The figures of what was added since `reset`: each loss averaged over its targets, the balance
   * loss divided by `balanceGradScale`, the gradient scale it was computed with (1 for micro-batches
   * at 1 / micro-batches each, whose sum is then their mean).
   */
  read(mtpWeight: number, balanceGradScale: number): MicroBatchResult {
    const v = this.b.download(this.all);
    const D = this.mtp.length;
    const mainLoss = v[0] / v[1];
    const mtpLosses = Array.from({ length: D }, (_, k) => v[2 + 2 * k] / v[3 + 2 * k]);
    const balanceLoss = v[2 + 2 * D] / balanceGradScale;
    let at = 3 + 2 * D;
    const expertLoad = this.layerExperts.map((e) => {
      const load = Float64Array.from(v.subarray(at, at + e));
      at += e;
      return load;
    });
    const mtpTotal = D > 0 ? (mtpWeight / D) * mtpLosses.reduce((a, c) => a + c, 0) : 0;
    return { loss: mainLoss + mtpTotal + balanceLoss, mainLoss, mtpLosses, balanceLoss, expertLoad };
  }

  free(): void {
    this.b.free(this.all);
  }
}

/**
 * Cross-entropy of head(h) [N, d] against targets [N] i32, chunk by chunk: adds (loss sum, targets)
 * into sums [2] and returns dh (for loss · scale), adding the head's weight gradient immediately (a
 * chunk's logits are freed before the next one exists). With `withGrad` false only the loss.
 */
export function chunkedCrossEntropy(
  b: Backend, h: Tensor, head: Linear, targets: Tensor, scale: number, chunkRows: number, withGrad: boolean, sums: Tensor,
): Tensor | null {
  const N = h.shape[0];
  // dh's rows come from the chunks one by one; the main loss's dh then takes the MTP gradient too
  const dh = withGrad ? b.zeros(h.shape) : null;
  const jobs: WeightGradJob[] = [];
  for (let r0 = 0; r0 < N; r0 += chunkRows) {
    const rows = Math.min(chunkRows, N - r0);
    const hc = b.rows(h, r0, rows);
    const logits = head.forward(b, hc);
    const dLogits = b.crossEntropyInto(logits, b.rows(targets, r0, rows), scale, sums);
    if (dh) {
      head.backwardInput(b, hc, dLogits, jobs, b.rows(dh, r0, rows));
      runWeightGradJobs(b, jobs);
    }
    b.free(logits);
    b.free(dLogits);
  }
  return dh;
}

/**
 * Forward and backward of one micro-batch on the device, no host read: `ctx` the positions of
 * [batch, seq] tokens (from model.context), `inputs` its token ids, `sums` what it accumulates.
 * Inputs are positions [0, seq), main targets [1, seq], and MTP depth k reads tokens [k, seq + k)
 * and predicts [k + 1, seq + k].
 */
export function forwardBackwardOnDevice(model: DeepseekV3, ctx: ForwardContext, inputs: StepInputs, opts: LossOptions, sums: StepSums): void {
  const b = model.backend;
  const D = model.mtp.length;
  const { batch, seq } = ctx;
  const chunk = opts.lossChunkRows ?? 1024;
  const gradScale = opts.gradScale ?? 1;
  // the balance loss's gradient is produced inside the MoE forward, so its α carries the gradient scale
  const train: TrainForward = { recompute: opts.recompute, balanceAlpha: opts.balanceAlpha * gradScale, balanceSum: sums.balance };
  const jobs: WeightGradJob[] = [];

  // ---- forward ---------------------------------------------------------------------
  const idsT = inputs.byShift[0];
  let h = b.embedding(model.embedTokens.value, idsT);
  const saved: LayerSaved[] = [];
  model.layers.forEach((layer, l) => {
    h = layer.forward(b, h, ctx, { train, saved, expertLoad: sums.loads[l] ?? undefined });
  });
  const hLast = h;
  const hNorm = model.norm.forward(b, hLast);
  const dHNorm = chunkedCrossEntropy(b, hNorm, model.lmHead, inputs.byShift[1], gradScale / (batch * seq), chunk, true, sums.main)!;

  // MTP: forward every depth (each needs the previous h^k), then backward from the deepest
  const mtpSaved: MtpSaved[] = [];
  const mtpNormedGrads: Tensor[] = [];
  let hPrev = hNorm;
  model.mtp.forEach((module, i) => {
    const k = i + 1;
    const emb = b.embedding(model.embedTokens.value, inputs.byShift[k]);
    const { normed, hk } = module.forward(b, hPrev, emb, ctx, { train, save: (s) => mtpSaved.push(s), expertLoad: sums.loads[model.layers.length + i] ?? undefined });
    mtpNormedGrads.push(chunkedCrossEntropy(b, normed, model.lmHead, inputs.byShift[k + 1], (gradScale * opts.mtpWeight) / (D * batch * seq), chunk, true, sums.mtp[i])!);
    hPrev = hk;
  });

  // ---- backward --------------------------------------------------------------------
  let dHNext: Tensor | null = null;
  for (let i = D - 1; i >= 0; i--) {
    const { dHPrev, dEmb } = model.mtp[i].backwardInput(b, mtpSaved[i], mtpNormedGrads[i], dHNext, jobs);
    jobs.push({ kind: 'embedding', weight: model.embedTokens, ids: inputs.byShift[i + 1], dy: dEmb });
    runWeightGradJobs(b, jobs);
    dHNext = dHPrev;
  }
  if (dHNext) b.addInPlace(dHNorm, dHNext);
  let dH = model.norm.backwardInput(b, hLast, dHNorm, jobs);
  for (let l = model.layers.length - 1; l >= 0; l--) {
    dH = model.layers[l].backwardInput(b, saved[l], dH, jobs);
    runWeightGradJobs(b, jobs);
  }
  jobs.push({ kind: 'embedding', weight: model.embedTokens, ids: idsT, dy: dH });
  runWeightGradJobs(b, jobs);
}

/**
 * Forward and backward of one micro-batch, eagerly: tokens [batch, window] with window =
 * seq + 1 + D (D = the model's MTP depth), its losses and expert loads added into `sums`.
 */
export function forwardBackwardInto(model: DeepseekV3, tokens: Int32Array, batch: number, seq: number, opts: LossOptions, sums: StepSums): void {
  const b = model.backend;
  const inputs = uploadStepInputs(model, tokens, batch, seq);
  const ctx = model.context(batch, seq, 0);
  try {
    forwardBackwardOnDevice(model, ctx, inputs, opts, sums);
  } finally {
    b.free(ctx.positions);
    for (const t of inputs.byShift) b.free(t);
  }
}

/** forwardBackwardInto into sums of its own: the micro-batch's losses and expert loads (one download). */
export function forwardBackward(model: DeepseekV3, tokens: Int32Array, batch: number, seq: number, opts: LossOptions): MicroBatchResult {
  const sums = new StepSums(model.backend, model);
  try {
    forwardBackwardInto(model, tokens, batch, seq, opts, sums);
    return sums.read(opts.mtpWeight, opts.gradScale ?? 1);
  } finally {
    sums.free();
  }
}
