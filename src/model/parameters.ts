// Where a module gets its weights: a source that hands out tensors by their Hugging Face
// name and checks the shape. Loading from a checkpoint, random initialisation and tests all
// implement it, so the modules are written once. A ParameterSet wraps a source and keeps every
// parameter handed out, with its gradient once training allocates one.

import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';

export interface ParameterSource {
  /** The tensor called `name`, which must have `shape`. */
  get(name: string, shape: readonly number[]): Tensor;
  /** Whether the source has a tensor called `name` (for optional parts such as MTP modules). */
  has(name: string): boolean;
}

export class Parameter {
  /** Accumulated gradient (same shape), allocated by ParameterSet.allocateGradients. */
  grad: Tensor | null = null;

  constructor(readonly name: string, public value: Tensor) {}

  /** The gradient, which must have been allocated. */
  get gradient(): Tensor {
    if (!this.grad) throw new Error(`parameter ${this.name} has no gradient buffer: allocate gradients before a backward pass`);
    return this.grad;
  }
}

export class ParameterSet {
  readonly byName = new Map<string, Parameter>();

  constructor(readonly source: ParameterSource) {}

  param(name: string, shape: readonly number[]): Parameter {
    const existing = this.byName.get(name);
    if (existing) return existing;
    const p = new Parameter(name, this.source.get(name, shape));
    this.byName.set(name, p);
    return p;
  }

  has(name: string): boolean {
    return this.source.has(name);
  }

  /** A parameter already handed out under `name` (shared weights such as the MTP head). */
  existing(name: string): Parameter {
    const p = this.byName.get(name);
    if (!p) throw new Error(`no parameter named ${name}`);
    return p;
  }

  all(): Parameter[] {
    return [...this.byName.values()];
  }

  allocateGradients(b: Backend): void {
    for (const p of this.byName.values()) if (!p.grad) p.grad = b.zeros(p.value.shape);
  }

  zeroGradients(b: Backend): void {
    for (const p of this.byName.values()) if (p.grad) b.scaleInPlace(p.grad, 0);
  }
}
