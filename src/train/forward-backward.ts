// One training micro-batch through the whole model: forward with saved activations, the main
// and MTP cross-entropy losses computed chunk by chunk (the [tokens, vocab] logits never exist
// whole), the balance losses, then backward through MTP, the main stack and the embedding.
// Parameter gradients accumulate into each Parameter's grad.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LayerSaved, TrainForward } from '../model/decoder-layer.js';
import { runWeightGradJobs, type WeightGradJob } from '../model/grad-jobs.js';
import type { Linear } from '../model/linear.js';
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
 * Cross-entropy of head(h) against targets, chunk by chunk: returns the summed loss and dh
 * (for loss · scale), and adds the head's weight gradient immediately (a chunk's logits are
 * freed before the next one exists). With `withGrad` false only the loss is computed.
 */
export function chunkedCrossEntropy(
  b: Backend, h: Tensor, head: Linear, targets: Int32Array, scale: number, chunkRows: number, withGrad: boolean,
): { lossSum: number; count: number; dh: Tensor | null } {
  const N = h.shape[0];
  // dh's rows come from the chunks one by one; the main loss's dh then takes the MTP gradient too
  const dh = withGrad ? b.zeros(h.shape) : null;
  let lossSum = 0, count = 0;
  const jobs: WeightGradJob[] = [];
  const allTargets = b.uploadInt(targets, [N]);
  for (let r0 = 0; r0 < N; r0 += chunkRows) {
    const rows = Math.min(chunkRows, N - r0);
    const hc = b.rows(h, r0, rows);
    const logits = head.forward(b, hc);
    const t = b.rows(allTargets, r0, rows);
    const ce = b.crossEntropy(logits, t, scale);
    lossSum += ce.lossSum;
    count += ce.count;
    if (dh) {
      head.backwardInput(b, hc, ce.dLogits, jobs, b.rows(dh, r0, rows));
      runWeightGradJobs(b, jobs);
    }
    b.free(logits);
    b.free(ce.dLogits);
  }
  b.free(allTargets);
  return { lossSum, count, dh };
}

/**
 * Forward and backward of one micro-batch. tokens [batch, window] with window = seq + 1 + D
 * (D = the model's MTP depth): inputs are positions [0, seq), main targets [1, seq], and MTP
 * depth k reads tokens [k, seq + k) and predicts [k + 1, seq + k].
 */
export function forwardBackward(model: DeepseekV3, tokens: Int32Array, batch: number, seq: number, opts: LossOptions): MicroBatchResult {
  const b = model.backend;
  const D = model.mtp.length;
  const window = seq + 1 + D;
  if (tokens.length !== batch * window) throw new Error(`forwardBackward: ${tokens.length} tokens for ${batch} windows of ${window}`);
  const chunk = opts.lossChunkRows ?? 1024;
  const gradScale = opts.gradScale ?? 1;
  // the balance loss's gradient is produced inside the MoE forward, so its α carries the gradient scale
  const train: TrainForward = { recompute: opts.recompute, balanceAlpha: opts.balanceAlpha * gradScale };
  const jobs: WeightGradJob[] = [];

  // ---- forward ---------------------------------------------------------------------
  const ctx = model.context(batch, seq, 0);
  const ids = shifted(tokens, batch, window, seq, 0);
  const idsT = b.uploadInt(ids, [ids.length]);
  let h = b.embedding(model.embedTokens.value, idsT);
  const saved: LayerSaved[] = [];
  const expertLoad = [...model.layers, ...model.mtp.map((m) => m.block)].map((l) => new Float64Array('experts' in l.ffn ? l.ffn.experts.length : 0));
  model.layers.forEach((layer, l) => {
    h = layer.forward(b, h, ctx, { train, saved, expertLoad: expertLoad[l] });
  });
  const hLast = h;
  const hNorm = model.norm.forward(b, hLast);

  const mainTargets = shifted(tokens, batch, window, seq, 1);
  const main = chunkedCrossEntropy(b, hNorm, model.lmHead, mainTargets, gradScale / (batch * seq), chunk, true);
  const mainLoss = main.lossSum / main.count;
  let balanceLoss = saved.reduce((s, l) => s + l.balanceLoss, 0);

  // MTP: forward every depth (each needs the previous h^k), then backward from the deepest
  const mtpLosses: number[] = [];
  const mtpSaved: MtpSaved[] = [];
  const mtpNormedGrads: Tensor[] = [];
  const mtpEmbIds: Tensor[] = [];
  let hPrev = hNorm;
  model.mtp.forEach((module, i) => {
    const k = i + 1;
    const embIds = b.uploadInt(shifted(tokens, batch, window, seq, k), [batch * seq]);
    const emb = b.embedding(model.embedTokens.value, embIds);
    const { normed, hk } = module.forward(b, hPrev, emb, ctx, { train, save: (s) => mtpSaved.push(s), expertLoad: expertLoad[model.layers.length + i] });
    const ce = chunkedCrossEntropy(b, normed, model.lmHead, shifted(tokens, batch, window, seq, k + 1), (gradScale * opts.mtpWeight) / (D * batch * seq), chunk, true);
    mtpLosses.push(ce.lossSum / ce.count);
    mtpNormedGrads.push(ce.dh!);
    mtpEmbIds.push(embIds);
    balanceLoss += mtpSaved[i].block[0].balanceLoss;
    hPrev = hk;
  });

  // ---- backward --------------------------------------------------------------------
  let dHNext: Tensor | null = null;
  for (let i = D - 1; i >= 0; i--) {
    const { dHPrev, dEmb } = model.mtp[i].backwardInput(b, mtpSaved[i], mtpNormedGrads[i], dHNext, jobs);
    jobs.push({ kind: 'embedding', weight: model.embedTokens, ids: mtpEmbIds[i], dy: dEmb });
    runWeightGradJobs(b, jobs);
    dHNext = dHPrev;
  }
  const dHNorm = main.dh!;
  if (dHNext) b.addInPlace(dHNorm, dHNext);
  let dH = model.norm.backwardInput(b, hLast, dHNorm, jobs);
  for (let l = model.layers.length - 1; l >= 0; l--) {
    dH = model.layers[l].backwardInput(b, saved[l], dH, jobs);
    runWeightGradJobs(b, jobs);
  }
  jobs.push({ kind: 'embedding', weight: model.embedTokens, ids: idsT, dy: dH });
  runWeightGradJobs(b, jobs);

  const mtpTotal = D > 0 ? (opts.mtpWeight / D) * mtpLosses.reduce((a, c) => a + c, 0) : 0;
  balanceLoss /= gradScale;
  return { loss: mainLoss + mtpTotal + balanceLoss, mainLoss, mtpLosses, balanceLoss, expertLoad };
}
