// CPU tensor storage: plain typed arrays. Views (`rows`, `reshape`) are subarrays of the same
// buffer. Not SharedArrayBuffers, although the GEMM workers could then use them in place:
// Node 20's V8 does not count SharedArrayBuffer memory towards collection pressure, so a
// training loop's temporaries piled up by gigabytes before a collection; the GEMM copies what
// its workers need into reused shared scratch instead.

import { numel, type ComputeDType, type Tensor } from '../../tensor/tensor.js';

export type FloatArray = Float32Array | Float64Array;

export class CpuTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: ComputeDType,
    readonly data: FloatArray | Int32Array,
  ) {
    if (data.length !== numel(shape)) throw new Error(`CpuTensor: ${data.length} elements for shape [${shape.join(', ')}]`);
  }
}

export function allocFloat(dtype: 'f32' | 'f64', length: number): FloatArray {
  return dtype === 'f64' ? new Float64Array(length) : new Float32Array(length);
}

/** The float storage of a CPU tensor, with a check that the tensor really is one. */
export function floats(t: Tensor): FloatArray {
  if (!(t instanceof CpuTensor) || t.dtype === 'i32') throw new Error(`expected a float CPU tensor, got ${t.dtype} [${t.shape.join(', ')}]`);
  return t.data as FloatArray;
}

export function ints(t: Tensor): Int32Array {
  if (!(t instanceof CpuTensor) || t.dtype !== 'i32') throw new Error(`expected an i32 CPU tensor, got ${t.dtype} [${t.shape.join(', ')}]`);
  return t.data as Int32Array;
}
