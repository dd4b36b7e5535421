// DeepSeekMoE (SPEC §3): shared experts that see every token plus routed experts chosen per
// token by a group-limited top-k over sigmoid affinities with a selection-only bias.

import type { Backend, RouterConfig } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import { MLP } from './mlp.js';
import type { ParameterSource } from './parameters.js';

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

export class MoE {
  /** Router weight [E, d]. */
  readonly gate: Tensor;
  /** e_score_correction_bias [E] (noaux_tc only): shifts which experts are chosen, never their weights. */
  readonly bias: Tensor | null;
  readonly experts: MLP[];
  readonly shared: MLP | null;
  readonly router: RouterConfig;

  constructor(params: ParameterSource, prefix: string, readonly config: ModelConfig) {
    const c = config;
    const d = c.hiddenSize;
    this.gate = params.get(`${prefix}.gate.weight`, [c.nRoutedExperts, d]);
    this.bias = c.topkMethod === 'noaux_tc' ? params.get(`${prefix}.gate.e_score_correction_bias`, [c.nRoutedExperts]) : null;
    this.experts = [];
    for (let e = 0; e < c.nRoutedExperts; e++) this.experts.push(new MLP(params, `${prefix}.experts.${e}`, d, c.moeIntermediateSize));
    this.shared = c.nSharedExperts > 0 ? new MLP(params, `${prefix}.shared_experts`, d, c.moeIntermediateSize * c.nSharedExperts) : null;
    this.router = routerConfig(c);
  }

  /** x [N, d] → [N, d]; `expertLoad`, when given, accumulates the number of tokens each expert received. */
  forward(b: Backend, x: Tensor, expertLoad?: Float64Array): Tensor {
    const logits = b.linear(x, this.gate);
    const route = b.routerTopK(logits, this.bias, this.router);
    const perm = b.moePermute(x, route.indices, this.experts.length);
    const expertOut = b.zeros(perm.rows.shape);
    let offset = 0;
    for (let e = 0; e < this.experts.length; e++) {
      const count = perm.counts[e];
      if (expertLoad) expertLoad[e] += count;
      if (count === 0) continue;
      const y = this.experts[e].forward(b, b.rows(perm.rows, offset, count));
      b.addInPlace(b.rows(expertOut, offset, count), y);
      b.free(y);
      offset += count;
    }
    const out = b.moeUnpermute(expertOut, perm.sourceSlot, route.weights);
    if (this.shared) {
      const s = this.shared.forward(b, x);
      b.addInPlace(out, s);
      b.free(s);
    }
    for (const t of [logits, route.scores, route.indices, route.weights, perm.rows, perm.sourceSlot, expertOut]) b.free(t);
    return out;
  }
}
