// The plain triple loop that tests hold every other GEMM against. It accumulates in FP64
// (JS numbers) whatever the storage type, so it is at least as accurate as what it checks.

import type { AnyGemmArgs } from './types.js';

export function gemmReference(args: AnyGemmArgs): void {
  const { transA, transB, m, n, k, alpha, beta, a, aOffset, lda, b, bOffset, ldb, c, cOffset, ldc } = args;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let p = 0; p < k; p++) {
        const av = transA ? a[aOffset + p * lda + i] : a[aOffset + i * lda + p];
        const bv = transB ? b[bOffset + j * ldb + p] : b[bOffset + p * ldb + j];
        sum += av * bv;
      }
      const ci = cOffset + i * ldc + j;
      c[ci] = beta === 0 ? alpha * sum : alpha * sum + beta * c[ci];
    }
  }
}
