// Where a module gets its weights: a source that hands out tensors by their Hugging Face
// name and checks the shape. Loading from a checkpoint, random initialisation and tests all
// implement it, so the modules are written once.

import type { Tensor } from '../tensor/tensor.js';

export interface ParameterSource {
  /** The tensor called `name`, which must have `shape`. */
  get(name: string, shape: readonly number[]): Tensor;
  /** Whether the source has a tensor called `name` (for optional parts such as MTP modules). */
  has(name: string): boolean;
}
