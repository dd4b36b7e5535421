// CPU tensor storage: typed arrays backed by SharedArrayBuffer, so the GEMM worker threads
// read and write them in place. Views (`rows`, `reshape`) are subarrays of the same buffer.

import { allocShared } from './gemm/index.js';
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
  return allocShared(dtype === 'f64' ? Float64Array : Float32Array, length);
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
