// RMSNorm y = w ∘ x / sqrt(mean(x²) + eps), statistics in FP32 or better.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { WeightGradJob } from './grad-jobs.js';
import type { Parameter } from './parameters.js';

export class RMSNorm {
  constructor(readonly weight: Parameter, readonly eps: number) {}

  /** x [M, d] → [M, d] */
  forward(b: Backend, x: Tensor): Tensor {
    return b.rmsNorm(x, this.weight.value, this.eps);
  }

  /** dy [M, d] → dx [M, d], x being this norm's input; queues the weight gradient on `jobs`. */
  backwardInput(b: Backend, x: Tensor, dy: Tensor, jobs: WeightGradJob[]): Tensor {
    jobs.push({ kind: 'rmsnorm', weight: this.weight, x, dy, eps: this.eps });
    return b.rmsNormBackwardInput(x, this.weight.value, dy, this.eps);
  }
}
