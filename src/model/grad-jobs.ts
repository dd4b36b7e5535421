// Parameter-gradient work deferred from backwardInput to backwardWeight (DESIGN §5): the input
// pass records, per parameter, the activation and the output gradient it needs; the weight pass
// runs them. Keeping the two apart is what zero-bubble and DualPipe schedules reorder.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Parameter } from './parameters.js';

export type WeightGradJob =
  /** Linear y = x Wᵀ: W.grad += dyᵀ x, x [M, in], dy [M, out]. */
  | { kind: 'linear'; weight: Parameter; x: Tensor; dy: Tensor }
  /** Experts' Linear layers on padded expert blocks (Backend.groupedLinear): W_e.grad += dy[block e]ᵀ x[block e]. */
  | { kind: 'grouped'; weights: Parameter[]; x: Tensor; dy: Tensor }
  /** RMSNorm y = w ∘ x / rms(x): w.grad += Σ dy ∘ x / rms(x), x and dy [M, d]. */
  | { kind: 'rmsnorm'; weight: Parameter; x: Tensor; dy: Tensor; eps: number }
  /** Embedding rows: table.grad[ids[n]] += dy[n]. */
  | { kind: 'embedding'; weight: Parameter; ids: Tensor; dy: Tensor };

export function runWeightGradJobs(b: Backend, jobs: WeightGradJob[]): void {
  for (const job of jobs) {
    if (job.kind === 'grouped') {
      b.groupedLinearBackwardWeight(job.x, job.dy, job.weights.map((w) => w.gradient));
      continue;
    }
    const grad = job.weight.gradient;
    if (job.kind === 'linear') {
      const [out, inp] = job.weight.value.shape;
      const rows = job.x.shape.reduce((a, s) => a * s, 1) / inp;
      b.gemm({ m: out, n: inp, k: rows, beta: 1, a: { tensor: job.dy, ld: out, trans: true }, b: { tensor: job.x, ld: inp }, c: { tensor: grad, ld: inp } });
    } else if (job.kind === 'rmsnorm') {
      b.rmsNormBackwardWeight(job.x, job.dy, job.eps, grad);
    } else {
      b.embeddingBackward(job.ids, job.dy, grad);
    }
  }
  jobs.length = 0;
}
