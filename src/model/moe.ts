// DeepSeekMoE (SPEC §3): shared experts that see every token plus routed experts chosen per
// token by a group-limited top-k over sigmoid affinities with a selection-only bias.

import type { Backend, MoePermutation, RouterConfig, RouterOutput } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { WeightGradJob } from './grad-jobs.js';
import { Linear } from './linear.js';
import { MLP, type MlpSaved } from './mlp.js';
import type { Parameter, ParameterSet } from './parameters.js';

export function routerConfig(c: ModelConfig): RouterConfig {
  return {
    topK: c.numExpertsPerTok,
    nGroup: c.nGroup,
    topkGroup: c.topkGroup,
    scoring: c.scoringFunc,
    groupLimited: c.topkMethod !== 'greedy',
    groupScoreTop2: c.topkMethod === 'noaux_tc',
    normTopkProb: c.normTopkProb,
    routedScalingFactor: c.routedScalingFactor,
  };
}

/** Per-call options of a MoE forward in training. */
export interface MoeTrainOptions {
  /** Sequences and tokens per sequence of the block (for the sequence-wise balance loss). */
  batch: number;
  seq: number;
  /** α of the balance loss (0: off). */
  balanceAlpha: number;
}

export interface MoeSaved {
  x: Tensor;
  logits: Tensor;
  route: RouterOutput;
  perm: MoePermutation;
  expertOut: Tensor;
  experts: (MlpSaved | null)[];
  shared: MlpSaved | null;
  /** Gradient of the balance loss on the affinities, or null when α = 0. */
  balanceGrad: Tensor | null;
}

export class MoE {
  /** Router [E, d], kept in high precision (SPEC §5). */
  readonly gate: Linear;
  /** e_score_correction_bias [E] (noaux_tc only): shifts which experts are chosen, never their weights; no gradient. */
  readonly bias: Parameter | null;
  readonly experts: MLP[];
  readonly shared: MLP | null;
  readonly router: RouterConfig;

  constructor(params: ParameterSet, prefix: string, readonly config: ModelConfig) {
    const c = config;
    const d = c.hiddenSize;
    this.gate = new Linear(params.param(`${prefix}.gate.weight`, [c.nRoutedExperts, d]));
    this.bias = c.topkMethod === 'noaux_tc' ? params.param(`${prefix}.gate.e_score_correction_bias`, [c.nRoutedExperts]) : null;
    this.experts = [];
    for (let e = 0; e < c.nRoutedExperts; e++) this.experts.push(new MLP(params, `${prefix}.experts.${e}`, d, c.moeIntermediateSize));
    this.shared = c.nSharedExperts > 0 ? new MLP(params, `${prefix}.shared_experts`, d, c.moeIntermediateSize * c.nSharedExperts) : null;
    this.router = routerConfig(c);
  }

  /**
   * x [N, d] → [N, d]. `expertLoad`, when given, accumulates the tokens each expert received.
   * With `save` (training), keeps the activations and returns the balance loss through it.
   */
  forward(b: Backend, x: Tensor, expertLoad?: Float64Array, save?: (s: MoeSaved, balanceLoss: number) => void, train?: MoeTrainOptions): Tensor {
    const logits = this.gate.forward(b, x);
    const route = b.routerTopK(logits, this.bias?.value ?? null, this.router);
    const perm = b.moePermute(x, route.indices, this.experts.length);
    const expertOut = b.zeros(perm.rows.shape);
    const expertSaves: (MlpSaved | null)[] = this.experts.map(() => null);
    let offset = 0;
    for (let e = 0; e < this.experts.length; e++) {
      const count = perm.counts[e];
      if (expertLoad) expertLoad[e] += count;
      if (count === 0) continue;
      const y = this.experts[e].forward(b, b.rows(perm.rows, offset, count), save && ((s) => (expertSaves[e] = s)));
      b.addInPlace(b.rows(expertOut, offset, count), y);
      b.free(y);
      offset += count;
    }
    const out = b.moeUnpermute(expertOut, perm.sourceSlot, route.weights);
    let sharedSave: MlpSaved | null = null;
    if (this.shared) {
      const s = this.shared.forward(b, x, save && ((saved) => (sharedSave = saved)));
      b.addInPlace(out, s);
      b.free(s);
    }
    if (save) {
      const balance = train && train.balanceAlpha > 0 ? b.sequenceBalanceLoss(route, train.batch, train.seq, train.balanceAlpha) : null;
      save({ x, logits, route, perm, expertOut, experts: expertSaves, shared: sharedSave, balanceGrad: balance?.dScores ?? null }, balance?.loss ?? 0);
    } else {
      for (const t of [logits, route.scores, route.indices, route.weights, perm.rows, perm.sourceSlot, expertOut]) b.free(t);
    }
    return out;
  }

  /** dy [N, d] → dx [N, d], the balance loss's gradient included; queues parameter gradients on `jobs`. */
  backwardInput(b: Backend, s: MoeSaved, dy: Tensor, jobs: WeightGradJob[]): Tensor {
    const N = s.x.shape[0];
    const { dExpertOut, dWeights } = b.moeUnpermuteBackward(dy, s.expertOut, s.perm.sourceSlot, s.route.weights);
    const dRows = b.zeros(s.perm.rows.shape);
    let offset = 0;
    for (let e = 0; e < this.experts.length; e++) {
      const count = s.perm.counts[e];
      if (count === 0) continue;
      this.experts[e].backwardInput(b, s.experts[e]!, b.rows(dExpertOut, offset, count), jobs, b.rows(dRows, offset, count));
      offset += count;
    }
    const dx = b.moePermuteBackward(dRows, s.perm.sourceSlot, N);
    const dLogits = b.routerBackward(s.logits, s.route, dWeights, s.balanceGrad, this.router);
    this.gate.backwardInput(b, s.x, dLogits, jobs, dx);
    if (this.shared) this.shared.backwardInput(b, s.shared!, dy, jobs, dx);
    return dx;
  }
}
