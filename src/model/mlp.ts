// The SwiGLU feed-forward network of dense layers, routed experts and shared experts:
// FFN(x) = W_down (silu(W_gate x) · W_up x).

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { WeightGradJob } from './grad-jobs.js';
import { Linear } from './linear.js';
import type { ParameterSet } from './parameters.js';

/** What the backward pass needs from one forward call. */
export interface MlpSaved {
  x: Tensor;
  gate: Tensor;
  up: Tensor;
  act: Tensor;
}

export class MLP {
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;

  /** prefix e.g. "model.layers.0.mlp"; hidden d, width I. */
  constructor(params: ParameterSet, prefix: string, hidden: number, width: number) {
    this.gate = new Linear(params.param(`${prefix}.gate_proj.weight`, [width, hidden]));
    this.up = new Linear(params.param(`${prefix}.up_proj.weight`, [width, hidden]));
    this.down = new Linear(params.param(`${prefix}.down_proj.weight`, [hidden, width]));
  }

  /** x [M, d] → [M, d]; with `save`, keeps what backward needs there instead of freeing it. */
  forward(b: Backend, x: Tensor, save?: (s: MlpSaved) => void): Tensor {
    const gate = this.gate.forward(b, x);
    const up = this.up.forward(b, x);
    const act = b.swiglu(gate, up);
    const y = this.down.forward(b, act);
    if (save) save({ x, gate, up, act });
    else for (const t of [gate, up, act]) b.free(t);
    return y;
  }

  /**
   * dy [M, d] → dx [M, d] (added into `into` when given; else a new 'state' tensor, where the
   * gate's and the up projection's contributions add up in full precision).
   */
  backwardInput(b: Backend, s: MlpSaved, dy: Tensor, jobs: WeightGradJob[], into?: Tensor): Tensor {
    const dAct = this.down.backwardInput(b, s.act, dy, jobs);
    const { dGate, dUp } = b.swigluBackward(s.gate, s.up, dAct);
    b.free(dAct);
    const dx = this.gate.backwardInput(b, s.x, dGate, jobs, into ?? b.zeros([...dy.shape.slice(0, -1), s.x.shape[s.x.shape.length - 1]]));
    this.up.backwardInput(b, s.x, dUp, jobs, dx);
    return dx;
  }
}
