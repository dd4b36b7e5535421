// DeepSeekMoE (SPEC §3): shared experts that see every token plus routed experts chosen per
// token by a group-limited top-k over sigmoid affinities with a selection-only bias.

import type { Backend, MoeFixedCapacity, MoePadding, MoePermutation, RouterConfig, RouterOutput } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { WeightGradJob } from './grad-jobs.js';
import { Linear } from './linear.js';
import { MLP, type MlpSaved } from './mlp.js';
import type { Parameter, ParameterSet } from './parameters.js';

/** A packed permutation's host counts (only fixed-capacity permutations, which are padded, have none). */
function hostCounts(perm: MoePermutation): number[] {
  if (!perm.counts) throw new Error('MoE: a fixed-capacity permutation has no host counts');
  return perm.counts;
}

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

/**
 * Slots (token, chosen expert) up to which an inference forward runs the routed experts straight
 * from the routing (Backend.moeExpertsDirect) instead of permuting the rows. A decode step's few
 * tokens give each chosen expert a row or a few: reading its weights is the whole cost either way,
 * and the permutation's per-expert counts, downloaded to size the GEMMs (a synchronisation), would
 * keep the step out of a CUDA graph. With more rows per expert (prefill), the grouped GEMMs on
 * tensor cores win. 256 covers decoding 32 sequences with DeepSeek-V3's 8 experts per token.
 */
export const MOE_DIRECT_MAX_SLOTS = 256;

/** Per-call options of a MoE forward in training. */
export interface MoeTrainOptions {
  /** Sequences and tokens per sequence of the block (for the sequence-wise balance loss). */
  batch: number;
  seq: number;
  /** α of the balance loss (0: off). */
  balanceAlpha: number;
  /** [1]: the balance loss is added into it on the device (needed when α > 0). */
  balanceSum: Tensor | null;
}

/**
 * The routed experts' activations for every permuted row [R, I] (the permutation's rows), expert
 * after expert in the permutation's order: W_gate x, W_up x and silu(W_gate x) · W_up x.
 */
export interface ExpertsSaved {
  gate: Tensor;
  up: Tensor;
  act: Tensor;
}

export interface MoeSaved {
  x: Tensor;
  logits: Tensor;
  route: RouterOutput;
  perm: MoePermutation;
  expertOut: Tensor;
  experts: ExpertsSaved;
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
  /**
   * Padding of the permuted rows (MoePermutation): undefined takes the backend's (Backend.moePadding),
   * null always packs them.
   */
  padding: MoePadding | null | undefined = undefined;
  /**
   * When set, the permutation pads to this capacity per expert without reading the counts back
   * (a captured training step, CapturedTrainStep): slots past an expert's capacity are dropped,
   * counted into its `stats` with the capacity the layer needed.
   */
  fixedCapacity: MoeFixedCapacity | null = null;

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
   * x [N, d] → [N, d]. `expertLoad` [E], when given, accumulates the tokens each expert received
   * (on the device). With `save` (training), keeps the activations; the balance loss goes into
   * train.balanceSum.
   *
   * The routed experts run on the permuted rows in place: on padded expert blocks each Linear is
   * one batched GEMM for every expert (Backend.groupedLinear); on packed rows each expert's GEMMs
   * read and write its rows of tensors that hold every row. Either way the SwiGLU between them runs
   * once for all experts. Inference on at most MOE_DIRECT_MAX_SLOTS slots skips the permutation
   * (moeExpertsDirect) unless `expertLoad` asks for the counts it would bring.
   */
  forward(b: Backend, x: Tensor, expertLoad?: Tensor, save?: (s: MoeSaved) => void, train?: MoeTrainOptions): Tensor {
    const logits = this.gate.forward(b, x);
    const route = b.routerTopK(logits, this.bias?.value ?? null, this.router);
    if (!save && !expertLoad && x.shape[0] * this.router.topK <= MOE_DIRECT_MAX_SLOTS) {
      const out = b.moeExpertsDirect(x, route.indices, route.weights, this.weights('gate'), this.weights('up'), this.weights('down'));
      for (const t of [logits, route.scores, route.indices, route.weights]) b.free(t);
      this.addShared(b, x, out);
      return out;
    }
    let balanceGrad: Tensor | null = null;
    if (save && train && train.balanceAlpha > 0) {
      if (!train.balanceSum) throw new Error('MoE.forward: a balance loss (α > 0) needs train.balanceSum');
      balanceGrad = b.sequenceBalanceLossInto(route, train.batch, train.seq, train.balanceAlpha, train.balanceSum);
    }
    const padding = this.padding === undefined ? b.moePadding : this.padding;
    const perm = b.moePermute(x, route.indices, this.experts.length, padding ?? undefined, this.fixedCapacity ?? undefined);
    if (expertLoad) b.expertLoadInto(route.indices, this.experts.length, expertLoad);
    let gate: Tensor, up: Tensor, act: Tensor, expertOut: Tensor;
    if (perm.capacity !== null) {
      gate = b.groupedLinear(perm.rows, this.weights('gate'));
      up = b.groupedLinear(perm.rows, this.weights('up'));
      act = b.swiglu(gate, up);
      expertOut = b.groupedLinear(act, this.weights('down'));
    } else {
      const rows = perm.rows.shape[0];
      const width = this.config.moeIntermediateSize;
      gate = b.zeros([rows, width], 'activation');
      up = b.zeros([rows, width], 'activation');
      this.eachExpert(perm, (expert, offset, count) => {
        const xe = b.rows(perm.rows, offset, count);
        expert.gate.forwardInto(b, xe, b.rows(gate, offset, count));
        expert.up.forwardInto(b, xe, b.rows(up, offset, count));
      });
      act = b.swiglu(gate, up);
      expertOut = b.zeros(perm.rows.shape, 'activation');
      this.eachExpert(perm, (expert, offset, count) => expert.down.forwardInto(b, b.rows(act, offset, count), b.rows(expertOut, offset, count)));
    }
    const out = b.moeUnpermute(expertOut, perm.sourceSlot, route.weights);
    const sharedSave = this.addShared(b, x, out, save !== undefined);
    if (save) {
      save({ x, logits, route, perm, expertOut, experts: { gate, up, act }, shared: sharedSave, balanceGrad });
    } else {
      for (const t of [logits, route.scores, route.indices, route.weights, perm.rows, perm.sourceSlot, gate, up, act, expertOut]) b.free(t);
    }
    return out;
  }

  /** out += the shared experts' output for x [N, d] (when there are shared experts); with `keep`, what their backward needs. */
  private addShared(b: Backend, x: Tensor, out: Tensor, keep = false): MlpSaved | null {
    if (!this.shared) return null;
    let saved: MlpSaved | null = null;
    const s = this.shared.forward(b, x, keep ? (r) => (saved = r) : undefined);
    b.addInPlace(out, s);
    b.free(s);
    return saved;
  }

  /**
   * Allocate the routed experts' weight gradients (those not allocated yet) as row blocks of one
   * tensor per projection, [E·out, in]: evenly spaced, so that groupedLinearBackwardWeight's one
   * batched GEMM adds into all of them in place. ParameterSet.allocateGradients then leaves them be.
   */
  allocateGradients(b: Backend): void {
    for (const which of ['gate', 'up', 'down'] as const) {
      const params = this.params(which);
      if (params.some((p) => p.grad)) continue;
      const [out, inp] = params[0].value.shape;
      const all = b.zeros([params.length * out, inp]);
      params.forEach((p, e) => (p.grad = b.rows(all, e * out, out)));
    }
  }

  /** The routed experts' weights of one projection, expert by expert. */
  private weights(which: 'gate' | 'up' | 'down'): Tensor[] {
    return this.experts.map((m) => m[which].weight.value);
  }

  private params(which: 'gate' | 'up' | 'down'): Parameter[] {
    return this.experts.map((m) => m[which].weight);
  }

  /** Packed rows: `body` for each expert that received rows, with its rows' offset and count. */
  private eachExpert(perm: MoePermutation, body: (expert: MLP, offset: number, count: number) => void): void {
    const counts = hostCounts(perm);
    let offset = 0;
    for (let e = 0; e < this.experts.length; e++) {
      const count = counts[e];
      if (count === 0) continue;
      body(this.experts[e], offset, count);
      offset += count;
    }
  }

  /** dy [N, d] → dx [N, d], the balance loss's gradient included; queues parameter gradients on `jobs`. */
  backwardInput(b: Backend, s: MoeSaved, dy: Tensor, jobs: WeightGradJob[]): Tensor {
    const N = s.x.shape[0];
    const { perm, experts: saved } = s;
    const { dExpertOut, dWeights } = b.moeUnpermuteBackward(dy, s.expertOut, perm.sourceSlot, s.route.weights);
    // a row's gradient sums the gate's and the up projection's parts: in full precision ('state')
    const dRows = b.zeros(perm.rows.shape);
    if (perm.capacity !== null) {
      const dAct = b.groupedLinearBackwardInput(dExpertOut, this.weights('down'));
      jobs.push({ kind: 'grouped', weights: this.params('down'), x: saved.act, dy: dExpertOut });
      const { dGate, dUp } = b.swigluBackward(saved.gate, saved.up, dAct);
      b.free(dAct);
      b.groupedLinearBackwardInput(dGate, this.weights('gate'), dRows);
      b.groupedLinearBackwardInput(dUp, this.weights('up'), dRows, true);
      jobs.push({ kind: 'grouped', weights: this.params('gate'), x: perm.rows, dy: dGate });
      jobs.push({ kind: 'grouped', weights: this.params('up'), x: perm.rows, dy: dUp });
    } else {
      const dAct = b.zeros(saved.act.shape, 'activation');
      this.eachExpert(perm, (expert, offset, count) => {
        expert.down.backwardInput(b, b.rows(saved.act, offset, count), b.rows(dExpertOut, offset, count), jobs, b.rows(dAct, offset, count), true);
      });
      const { dGate, dUp } = b.swigluBackward(saved.gate, saved.up, dAct);
      b.free(dAct);
      this.eachExpert(perm, (expert, offset, count) => {
        const xe = b.rows(perm.rows, offset, count), dxe = b.rows(dRows, offset, count);
        expert.gate.backwardInput(b, xe, b.rows(dGate, offset, count), jobs, dxe, true);
        expert.up.backwardInput(b, xe, b.rows(dUp, offset, count), jobs, dxe);
      });
    }
    const dx = b.moePermuteBackward(dRows, perm.sourceSlot, N, N * this.router.topK);
    b.free(dRows);
    const dLogits = b.routerBackward(s.logits, s.route, dWeights, s.balanceGrad, this.router);
    this.gate.backwardInput(b, s.x, dLogits, jobs, dx);
    if (this.shared) this.shared.backwardInput(b, s.shared!, dy, jobs, dx);
    return dx;
  }
}
