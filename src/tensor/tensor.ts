// A tensor handle: a shape, a dtype and storage owned by one backend.
// Model code only ever sees this interface; each backend keeps its own storage behind it
// (the CPU backend a typed array, the CUDA backend a device pointer).

/** Compute dtypes a backend holds tensors in. Storage-only formats (bf16, fp8…) live in ./dtypes. */
export type ComputeDType = 'f32' | 'f64' | 'bf16' | 'i32';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: ComputeDType;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function assertShape(t: Tensor, expected: readonly number[], what: string): void {
  if (t.shape.length !== expected.length || t.shape.some((s, i) => expected[i] !== -1 && s !== expected[i])) {
    throw new Error(`${what}: expected shape ${shapeString(expected)}, got ${shapeString(t.shape)}`);
  }
}
