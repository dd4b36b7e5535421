// The SwiGLU feed-forward network of dense layers, routed experts and shared experts:
// FFN(x) = W_down (silu(W_gate x) · W_up x).

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ParameterSource } from './parameters.js';

export class MLP {
  readonly gate: Tensor;
  readonly up: Tensor;
  readonly down: Tensor;

  /** prefix e.g. "model.layers.0.mlp"; hidden d, width I. */
  constructor(params: ParameterSource, prefix: string, hidden: number, width: number) {
    this.gate = params.get(`${prefix}.gate_proj.weight`, [width, hidden]);
    this.up = params.get(`${prefix}.up_proj.weight`, [width, hidden]);
    this.down = params.get(`${prefix}.down_proj.weight`, [hidden, width]);
  }

  /** x [M, d] → [M, d] */
  forward(b: Backend, x: Tensor): Tensor {
    const g = b.linear(x, this.gate);
    const u = b.linear(x, this.up);
    const act = b.swiglu(g, u);
    b.free(g);
    b.free(u);
    const y = b.linear(act, this.down);
    b.free(act);
    return y;
  }
}
