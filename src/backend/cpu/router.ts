// DeepSeekMoE routing on the CPU (SPEC §3): expert affinities, group-limited top-k on the
// bias-corrected scores, gating weights from the unbiased ones.

import type { RouterConfig } from '../backend.js';
import type { FloatArray } from './cpu-tensor.js';

/** Indices of the `count` largest values[i] (ties: lower index first), best first. */
function topIndices(values: Float64Array, count: number, allowed?: Uint8Array): number[] {
  const chosen: number[] = [];
  const taken = new Uint8Array(values.length);
  for (let c = 0; c < count; c++) {
    let best = -1;
    for (let i = 0; i < values.length; i++) {
      if (taken[i] || (allowed && !allowed[i])) continue;
      if (best < 0 || values[i] > values[best]) best = i;
    }
    taken[best] = 1;
    chosen.push(best);
  }
  return chosen;
}

/**
 * logits [N, E], bias [E] or null → scores [N, E] (unbiased affinities), indices [N, K], weights [N, K].
 */
export function routeTokens(
  logits: FloatArray, bias: FloatArray | null, N: number, E: number, cfg: RouterConfig,
  scores: FloatArray, indices: Int32Array, weights: FloatArray,
): void {
  const K = cfg.topK;
  const perGroup = E / cfg.nGroup;
  const choice = new Float64Array(E);
  const groupScore = new Float64Array(cfg.nGroup);
  const allowed = new Uint8Array(E);
  for (let n = 0; n < N; n++) {
    const row = n * E;
    if (cfg.scoring === 'sigmoid') {
      for (let e = 0; e < E; e++) scores[row + e] = 1 / (1 + Math.exp(-logits[row + e]));
    } else {
      let max = -Infinity;
      for (let e = 0; e < E; e++) max = Math.max(max, logits[row + e]);
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(logits[row + e] - max);
      for (let e = 0; e < E; e++) scores[row + e] = Math.exp(logits[row + e] - max) / sum;
    }
    for (let e = 0; e < E; e++) choice[e] = scores[row + e] + (bias ? bias[e] : 0);

    if (cfg.groupLimited && cfg.nGroup > 1) {
      for (let g = 0; g < cfg.nGroup; g++) {
        const top = topIndices(choice.subarray(g * perGroup, (g + 1) * perGroup), cfg.groupScoreTop2 ? 2 : 1);
        groupScore[g] = top.reduce((acc, i) => acc + choice[g * perGroup + i], 0);
      }
      allowed.fill(0);
      for (const g of topIndices(groupScore, cfg.topkGroup)) allowed.fill(1, g * perGroup, (g + 1) * perGroup);
    } else {
      allowed.fill(1);
    }

    const picked = topIndices(choice, K, allowed);
    let sum = 0;
    for (let k = 0; k < K; k++) {
      indices[n * K + k] = picked[k];
      sum += scores[row + picked[k]];
    }
    const norm = cfg.normTopkProb ? 1 / (sum + 1e-20) : 1;
    for (let k = 0; k < K; k++) weights[n * K + k] = scores[row + picked[k]] * norm * cfg.routedScalingFactor;
  }
}
