// Parameters drawn at random, by the same Hugging Face names a checkpoint uses: the
// initialisation of a new model, and fresh inputs for tests.

import type { Backend } from '../backend/backend.js';
import { numel, type Tensor } from '../tensor/tensor.js';
import { Random } from '../util/random.js';
import type { ParameterSource } from './parameters.js';

export interface RandomInitOptions {
  seed: number;
  /** Standard deviation of matrix entries (default 0.02, as in the Hugging Face config's initializer_range). */
  std?: number;
  /**
   * Norm weights and router biases: 'standard' gives ones and zeros (training from scratch);
   * 'random' perturbs them too, so that tests exercise every parameter.
   */
  vectors?: 'standard' | 'random';
}

export class RandomParameters implements ParameterSource {
  private readonly rng: Random;
  /** Host values of everything handed out, by name (for saving a checkpoint or building a reference). */
  readonly host = new Map<string, { shape: number[]; data: Float64Array }>();

  constructor(private readonly backend: Backend, private readonly opts: RandomInitOptions) {
    this.rng = new Random(opts.seed);
  }

  has(): boolean {
    return true;
  }

  get(name: string, shape: readonly number[]): Tensor {
    const n = numel(shape);
    const data = new Float64Array(n);
    const std = this.opts.std ?? 0.02;
    const random = this.opts.vectors === 'random';
    const isNorm = /(layernorm|norm)\.weight$/.test(name);
    const isBias = name.endsWith('e_score_correction_bias');
    for (let i = 0; i < n; i++) {
      if (isNorm) data[i] = random ? 1 + 0.2 * (this.rng.next() - 0.5) : 1;
      else if (isBias) data[i] = random ? 0.05 * (this.rng.next() - 0.5) : 0;
      else data[i] = std * this.rng.normal();
    }
    this.host.set(name, { shape: [...shape], data });
    return this.backend.upload(this.backend.floatDType === 'f64' ? data : Float32Array.from(data), shape);
  }
}
