// AdamW over the model's parameters: FP32 master weights (the parameters themselves), FP32 or
// BF16 moments (stored in BF16 where the backend has it, else BF16-rounded values), decoupled
// weight decay on matrices only, global-norm gradient clipping inside the update.
// Router correction biases take no gradient: the balancing rule in ./expert-balance updates them.

import type { Backend } from '../backend/backend.js';
import type { Parameter } from '../model/parameters.js';
import type { Tensor } from '../tensor/tensor.js';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this (0: no clipping). */
  gradClip: number;
  momentsDtype: 'f32' | 'bf16';
}

export interface OptimizerState {
  step: number;
  m: Map<string, Tensor>;
  v: Map<string, Tensor>;
}

export function isTrainable(p: Parameter): boolean {
  return !p.name.endsWith('e_score_correction_bias');
}

export class AdamW {
  readonly state: OptimizerState = { step: 0, m: new Map(), v: new Map() };
  private readonly params: Parameter[];

  constructor(private readonly b: Backend, params: Parameter[], readonly config: AdamWConfig) {
    this.params = params.filter(isTrainable);
    for (const p of this.params) {
      this.state.m.set(p.name, b.zeros(p.value.shape, config.momentsDtype));
      this.state.v.set(p.name, b.zeros(p.value.shape, config.momentsDtype));
    }
  }

  /** The global L2 norm of all gradients: one multi-tensor reduction, one number downloaded. */
  gradNorm(): number {
    return Math.sqrt(this.b.sumSquaresMany(this.params.map((p) => p.gradient)));
  }

  /**
   * Update every parameter with learning rate `lr` from its gradient clipped by the global norm
   * (scaled inside the update; the gradients are left as they are); returns the norm before clipping.
   */
  step(lr: number): number {
    const norm = this.gradNorm();
    if (!Number.isFinite(norm)) throw new Error(`gradient norm is ${norm} at step ${this.state.step + 1}: training diverged (lower --lr?)`);
    const clip = this.config.gradClip > 0 && norm > this.config.gradClip ? this.config.gradClip / norm : 1;
    this.state.step++;
    // one pass over every parameter (one launch on the GPU); decoupled weight decay on matrices
    // only: not on norms or other vectors
    const m = this.state.m, v = this.state.v;
    this.b.adamwMany(
      this.params.map((p) => p.value), this.params.map((p) => p.gradient), this.params.map((p) => m.get(p.name)!), this.params.map((p) => v.get(p.name)!),
      {
        lr, beta1: this.config.beta1, beta2: this.config.beta2, eps: this.config.eps, step: this.state.step, momentsBf16: this.config.momentsDtype === 'bf16',
        gradScale: clip,
      },
      this.params.map((p) => (p.value.shape.length >= 2 ? this.config.weightDecay : 0)),
    );
    return norm;
  }
}
