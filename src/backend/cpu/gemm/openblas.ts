// The system BLAS through koffi: cblas_sgemm / cblas_dgemm, row-major. Typed arrays go in as
// pointers (koffi passes the view's memory, offset included, without copying).

import koffi, { type IKoffiLib } from 'koffi';
import type { AnyGemmArgs } from './types.js';

const CblasRowMajor = 101;
const CblasNoTrans = 111;
const CblasTrans = 112;

type GemmFn = (
  order: number, transA: number, transB: number, m: number, n: number, k: number,
  alpha: number, a: Float32Array | Float64Array, lda: number, b: Float32Array | Float64Array, ldb: number,
  beta: number, c: Float32Array | Float64Array, ldc: number,
) => void;

export interface BlasLibrary {
  /** The name it was loaded by. */
  name: string;
  sgemm: GemmFn;
  dgemm: GemmFn;
  /** Present for OpenBLAS. */
  setThreads?: (n: number) => void;
  getThreads?: () => number;
  config?: string;
}

/** Tried in order; the generic names only count if they export the cblas symbols. */
const CANDIDATES =
  process.platform === 'darwin'
    ? ['libopenblas.0.dylib', 'libopenblas.dylib', 'libcblas.3.dylib', 'libblas.3.dylib']
    : ['libopenblas.so.0', 'libopenblas.so', 'libcblas.so.3', 'libblas.so.3'];

let cached: BlasLibrary | null | undefined;

/** The first BLAS with cblas_sgemm and cblas_dgemm; null if none. Cached. */
export function loadBlas(): BlasLibrary | null {
  if (cached !== undefined) return cached;
  cached = null;
  for (const name of CANDIDATES) {
    let lib: IKoffiLib;
    try {
      lib = koffi.load(name);
    } catch {
      continue;
    }
    try {
      const sig = (t: string) =>
        `void cblas_${t}gemm(int order, int transA, int transB, int m, int n, int k, ${t === 's' ? 'float' : 'double'} alpha, ` +
        `const ${t === 's' ? 'float' : 'double'} *a, int lda, const ${t === 's' ? 'float' : 'double'} *b, int ldb, ` +
        `${t === 's' ? 'float' : 'double'} beta, ${t === 's' ? 'float' : 'double'} *c, int ldc)`;
      const found: BlasLibrary = { name, sgemm: lib.func(sig('s')) as GemmFn, dgemm: lib.func(sig('d')) as GemmFn };
      const optional = (decl: string) => {
        try {
          return lib.func(decl);
        } catch {
          return undefined;
        }
      };
      const setThreads = optional('void openblas_set_num_threads(int n)');
      const getThreads = optional('int openblas_get_num_threads()');
      const getConfig = optional('const char *openblas_get_config()');
      if (setThreads) found.setThreads = (n) => setThreads(n);
      if (getThreads) found.getThreads = () => getThreads() as number;
      if (getConfig) found.config = String(getConfig());
      cached = found;
      return cached;
    } catch {
      lib.unload();
    }
  }
  return cached;
}

export function blasGemm(lib: BlasLibrary, args: AnyGemmArgs): void {
  const { a, b, c } = args;
  const fn = a instanceof Float32Array ? lib.sgemm : lib.dgemm;
  fn(
    CblasRowMajor, args.transA ? CblasTrans : CblasNoTrans, args.transB ? CblasTrans : CblasNoTrans,
    args.m, args.n, args.k,
    args.alpha, a.subarray(args.aOffset), args.lda, b.subarray(args.bOffset), args.ldb,
    args.beta, c.subarray(args.cOffset), args.ldc,
  );
}
