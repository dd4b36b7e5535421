// The argument block shared by every GEMM implementation (BLAS, our own kernel, the reference).

export type FloatArray = Float32Array | Float64Array;

/**
 * C = alpha·op(A)·op(B) + beta·C, row-major. op(A) is [m, k], op(B) is [k, n], C is [m, n].
 * A is stored [m, k] (transA false) or [k, m] (transA true) with row stride lda, starting at
 * aOffset; likewise B ([k, n] or [n, k], ldb) and C ([m, n], ldc). beta = 0 ignores C's old
 * contents, NaN included. C must not overlap A or B.
 */
export interface GemmArgs<A extends FloatArray> {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  beta: number;
  a: A;
  aOffset: number;
  lda: number;
  b: A;
  bOffset: number;
  ldb: number;
  c: A;
  cOffset: number;
  ldc: number;
}

export type AnyGemmArgs = GemmArgs<Float32Array> | GemmArgs<Float64Array>;
