// Auxiliary-loss-free load balancing (SPEC §3) and the expert-load statistics of the metrics.
// After each optimizer step, with load_i the tokens routed to expert i in the whole step:
//   b_i ← b_i + γ · sign(mean − load_i).

import type { Backend } from '../backend/backend.js';
import type { Parameter } from '../model/parameters.js';
import type { Tensor } from '../tensor/tensor.js';

export interface ExpertLoadStats {
  layer: number;
  max_over_mean: number;
  min_over_mean: number;
  /** Experts that received no token in the step. */
  dead: number;
}

export function expertLoadStats(layer: number, load: Float64Array): ExpertLoadStats {
  const mean = load.reduce((a, b) => a + b, 0) / load.length;
  let max = -Infinity, min = Infinity, dead = 0;
  for (const l of load) {
    max = Math.max(max, l);
    min = Math.min(min, l);
    if (l === 0) dead++;
  }
  return { layer, max_over_mean: mean > 0 ? max / mean : 0, min_over_mean: mean > 0 ? min / mean : 0, dead };
}

/** Apply the bias update to one MoE layer's correction bias from that layer's step load [E] (on the device). */
export function updateCorrectionBias(b: Backend, bias: Parameter, load: Tensor, gamma: number): void {
  if (gamma === 0) return;
  b.correctionBiasUpdate(bias.value, load, gamma);
}
