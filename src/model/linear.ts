// The Linear layer y = x Wᵀ (no bias), with its backward split into the input gradient
// dx = dy W and the deferred weight gradient dW += dyᵀ x. The FP8 recipe plugs in here.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { WeightGradJob } from './grad-jobs.js';
import type { Parameter } from './parameters.js';

export class Linear {
  constructor(readonly weight: Parameter) {}

  /** x [M, in] → [M, out] */
  forward(b: Backend, x: Tensor): Tensor {
    return b.linear(x, this.weight.value);
  }

  /** y = x Wᵀ written into y [M, out] (a view of a larger tensor, say), which it overwrites. */
  forwardInto(b: Backend, x: Tensor, y: Tensor): void {
    const [out, inp] = this.weight.value.shape;
    const rows = x.shape.reduce((a, s) => a * s, 1) / inp;
    b.gemm({ m: rows, n: out, k: inp, a: { tensor: x, ld: inp }, b: { tensor: this.weight.value, ld: inp, trans: true }, c: { tensor: y, ld: out } });
  }

  /**
   * dy [M, out] → dx [M, in], queuing W.grad += dyᵀ x (x being this layer's input) on `jobs`.
   * Without `into`, dx is a new tensor in the activation dtype. With `into`, dx is added into it
   * (for inputs that feed several layers; make it a 'state' tensor to sum in full precision),
   * or written over it with `overwrite`.
   */
  backwardInput(b: Backend, x: Tensor, dy: Tensor, jobs: WeightGradJob[], into?: Tensor, overwrite = false): Tensor {
    const [out, inp] = this.weight.value.shape;
    const rows = dy.shape.reduce((a, s) => a * s, 1) / out;
    const dx = into ?? b.zeros([...dy.shape.slice(0, -1), inp], 'activation');
    const beta = into && !overwrite ? 1 : 0;
    b.gemm({ m: rows, n: inp, k: out, beta, a: { tensor: dy, ld: out }, b: { tensor: this.weight.value, ld: inp }, c: { tensor: dx, ld: inp } });
    jobs.push({ kind: 'linear', weight: this.weight, x, dy });
    return dx;
  }
}
