// AdamW over the model's parameters: FP32 master weights (the parameters themselves), FP32 or
// BF16 moments (stored in BF16 where the backend has it, else BF16-rounded values), decoupled
// weight decay on matrices only, global-norm gradient clipping inside the update.
// Router correction biases take no gradient: the balancing rule in ./expert-balance updates them.
//
// A step has a host part (`prepare`: the step number and the learning rate, written into a small
// device tensor) and a device part (`applyOnDevice`: the norm, the clipping coefficient and the
// update, which read that tensor and nothing from the host), so that a captured training step can
// replay the device part after each `prepare`. `step` does both and reads the norm back.

import { adamwHyperValues, type AdamWScalars, type Backend } from '../backend/backend.js';
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
  /** [2]: the global gradient norm and its clipping coefficient, written by gradNormClip. */
  private readonly normAndScale: Tensor;
  /** The update's device scalars: hyper written by `prepare`, gradScale (a view of normAndScale) and skip by gradNormClip. */
  private readonly scalars: AdamWScalars;

  constructor(private readonly b: Backend, params: Parameter[], readonly config: AdamWConfig) {
    this.params = params.filter(isTrainable);
    for (const p of this.params) {
      this.state.m.set(p.name, b.zeros(p.value.shape, config.momentsDtype));
      this.state.v.set(p.name, b.zeros(p.value.shape, config.momentsDtype));
    }
    this.normAndScale = b.zeros([2], 'f32');
    this.scalars = { hyper: b.zeros([3], 'f32'), gradScale: b.rows(this.normAndScale, 1, 1), skip: b.uploadInt(new Int32Array(1), [1]) };
  }

  /** The host part of a step, outside any graph capture: the next step number, and its learning rate and bias corrections uploaded. */
  prepare(lr: number): void {
    this.state.step++;
    this.b.copyFromHost(this.scalars.hyper, adamwHyperValues(lr, this.config, this.state.step));
  }

  /**
   * The device part of the step `prepare` set up, which reads nothing back (a graph may capture
   * it): the global gradient norm, then every parameter updated from its gradient scaled by the
   * clipping coefficient (the gradients are left as they are); a NaN or infinite norm skips the
   * update. Returns the device tensor [2] holding the norm and the coefficient.
   */
  applyOnDevice(): Tensor {
    const { b, config } = this;
    const grads = this.params.map((p) => p.gradient);
    b.gradNormClip(grads, config.gradClip, this.normAndScale, this.scalars.skip);
    // one pass over every parameter (one launch on the GPU); decoupled weight decay on matrices
    // only: not on norms or other vectors
    const m = this.state.m, v = this.state.v;
    b.adamwMany(
      this.params.map((p) => p.value), grads, this.params.map((p) => m.get(p.name)!), this.params.map((p) => v.get(p.name)!),
      { beta1: config.beta1, beta2: config.beta2, eps: config.eps, momentsBf16: config.momentsDtype === 'bf16' },
      this.params.map((p) => (p.value.shape.length >= 2 ? config.weightDecay : 0)),
      this.scalars,
    );
    return this.normAndScale;
  }

  /**
   * Update every parameter with learning rate `lr` from its gradient clipped by the global norm
   * (scaled inside the update; the gradients are left as they are); returns the norm before clipping.
   */
  step(lr: number): number {
    this.prepare(lr);
    const norm = this.b.download(this.applyOnDevice())[0]!;
    if (!Number.isFinite(norm)) {
      this.state.step--; // the update was skipped: the state is still the previous step's
      throw new Error(`gradient norm is ${norm} at step ${this.state.step + 1}: training diverged (lower --lr?)`);
    }
    return norm;
  }
}
