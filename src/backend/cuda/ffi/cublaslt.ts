// cuBLASLt through koffi: the C signatures used, the enum values we need, and one `check`.
// Device pointers (A, B, C, D, workspace) are declared `uint64_t`, like CUdeviceptr in
// driver.ts: on x86-64 and AArch64 a pointer and a 64-bit integer travel in the same register.

import { loadLibrary } from './libraries.js';
import { handleType } from './driver.js';

for (const t of ['cublasLtHandle_t', 'cublasLtMatmulDesc_t', 'cublasLtMatrixLayout_t', 'cublasLtMatmulPreference_t']) handleType(t);

const SIGNATURES = {
  cublasLtCreate: 'int cublasLtCreate(_Out_ cublasLtHandle_t *handle)',
  cublasLtDestroy: 'int cublasLtDestroy(cublasLtHandle_t handle)',
  cublasLtGetVersion: 'size_t cublasLtGetVersion()',
  cublasLtGetStatusName: 'const char *cublasLtGetStatusName(int status)',
  cublasLtMatmulDescCreate: 'int cublasLtMatmulDescCreate(_Out_ cublasLtMatmulDesc_t *desc, int computeType, int scaleType)',
  cublasLtMatmulDescSetAttribute: 'int cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, int attr, const void *buf, size_t size)',
  cublasLtMatmulDescDestroy: 'int cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc)',
  cublasLtMatrixLayoutCreate: 'int cublasLtMatrixLayoutCreate(_Out_ cublasLtMatrixLayout_t *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)',
  cublasLtMatrixLayoutSetAttribute: 'int cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, int attr, const void *buf, size_t size)',
  cublasLtMatrixLayoutDestroy: 'int cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout)',
  cublasLtMatmulPreferenceCreate: 'int cublasLtMatmulPreferenceCreate(_Out_ cublasLtMatmulPreference_t *pref)',
  cublasLtMatmulPreferenceSetAttribute: 'int cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref, int attr, const void *buf, size_t size)',
  cublasLtMatmulPreferenceDestroy: 'int cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref)',
  // heuristicResultsArray: `requested` cublasLtMatmulHeuristicResult_t (HEURISTIC_RESULT_BYTES each).
  cublasLtMatmulAlgoGetHeuristic:
    'int cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested, void *results, _Out_ int *returned)',
  cublasLtMatmul:
    'int cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, uint64_t A, cublasLtMatrixLayout_t aDesc, uint64_t B, cublasLtMatrixLayout_t bDesc, const void *beta, uint64_t C, cublasLtMatrixLayout_t cDesc, uint64_t D, cublasLtMatrixLayout_t dDesc, const void *algo, uint64_t workspace, size_t workspaceBytes, CUstream stream)',
} as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
export type CublasLtApi = { [K in keyof typeof SIGNATURES]: CFunction } & { path: string };

// cublasLtMatmulHeuristicResult_t = { cublasLtMatmulAlgo_t algo (uint64_t data[8]); size_t workspaceSize;
// cublasStatus_t state; float wavesCount; int reserved[4]; } — 64 + 8 + 4 + 4 + 16 bytes.
export const HEURISTIC_RESULT_BYTES = 96;
export const HEURISTIC_ALGO_BYTES = 64;
export const HEURISTIC_WORKSPACE_OFFSET = 64;
export const HEURISTIC_STATE_OFFSET = 72;

// library_types.h (cudaDataType_t)
export const CUDA_R_32F = 0;
export const CUDA_R_64F = 1;
export const CUDA_R_16F = 2;
export const CUDA_R_32I = 10;
export const CUDA_R_16BF = 14;
export const CUDA_R_8F_E4M3 = 28;
export const CUDA_R_8F_E5M2 = 29;
// cublas_api.h
export const CUBLAS_COMPUTE_32F = 68;
export const CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
export const CUBLAS_COMPUTE_64F = 70;
export const CUBLAS_OP_N = 0;
export const CUBLAS_OP_T = 1;
// cublasLt.h: cublasLtMatmulDescAttributes_t
export const CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0;
export const CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1;
export const CUBLASLT_MATMUL_DESC_POINTER_MODE = 2;
export const CUBLASLT_MATMUL_DESC_TRANSA = 3;
export const CUBLASLT_MATMUL_DESC_TRANSB = 4;
export const CUBLASLT_MATMUL_DESC_EPILOGUE = 7;
export const CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17;
export const CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18;
export const CUBLASLT_MATMUL_DESC_C_SCALE_POINTER = 19;
export const CUBLASLT_MATMUL_DESC_D_SCALE_POINTER = 20;
export const CUBLASLT_MATMUL_DESC_AMAX_D_POINTER = 21;
export const CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25;
export const CUBLASLT_MATMUL_DESC_A_SCALE_MODE = 31;
export const CUBLASLT_MATMUL_DESC_B_SCALE_MODE = 32;
// cublasLtMatmulMatrixScale_t
export const CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F = 0;
export const CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F = 3;
export const CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F = 4;
export const CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F = 5;
// cublasLtMatrixLayoutAttribute_t
export const CUBLASLT_MATRIX_LAYOUT_TYPE = 0;
export const CUBLASLT_MATRIX_LAYOUT_ORDER = 1;
export const CUBLASLT_MATRIX_LAYOUT_ROWS = 2;
export const CUBLASLT_MATRIX_LAYOUT_COLS = 3;
export const CUBLASLT_MATRIX_LAYOUT_LD = 4;
export const CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;
export const CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;
export const CUBLASLT_ORDER_COL = 0;
export const CUBLASLT_ORDER_ROW = 1;
// cublasLtMatmulPreferenceAttributes_t
export const CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0;
export const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

/** cublasStatus_t names (cublas_api.h), for when cublasLtGetStatusName is unavailable. */
const STATUS_NAMES: Record<number, string> = {
  0: 'CUBLAS_STATUS_SUCCESS', 1: 'CUBLAS_STATUS_NOT_INITIALIZED', 3: 'CUBLAS_STATUS_ALLOC_FAILED', 7: 'CUBLAS_STATUS_INVALID_VALUE',
  8: 'CUBLAS_STATUS_ARCH_MISMATCH', 11: 'CUBLAS_STATUS_MAPPING_ERROR', 13: 'CUBLAS_STATUS_EXECUTION_FAILED',
  14: 'CUBLAS_STATUS_INTERNAL_ERROR', 15: 'CUBLAS_STATUS_NOT_SUPPORTED', 16: 'CUBLAS_STATUS_LICENSE_ERROR',
};

let api: CublasLtApi | undefined;

/** The bound cuBLASLt API (libcublasLt is located and opened on first use). */
export function cublasLt(): CublasLtApi {
  if (api) return api;
  const { lib, path } = loadLibrary('cublasLt');
  const fns: Record<string, CFunction> = {};
  for (const [name, proto] of Object.entries(SIGNATURES)) fns[name] = lib.func(proto);
  api = { ...(fns as { [K in keyof typeof SIGNATURES]: CFunction }), path };
  return api;
}

export function statusName(status: number): string {
  let name = STATUS_NAMES[status];
  if (!name && api) {
    try {
      name = api.cublasLtGetStatusName(status) ?? undefined;
    } catch {
      // Unknown code.
    }
  }
  return `${name ?? 'CUBLAS_STATUS'} (${status})`;
}

/** Throw `Error("cublasLtMatmul failed: CUBLAS_STATUS_NOT_SUPPORTED (15)")` unless status is CUBLAS_STATUS_SUCCESS. */
export function check(call: string, status: number): void {
  if (status !== 0) throw new Error(`${call} failed: ${statusName(status)}`);
}

/** "13.1.0" from cublasLtGetVersion's major*10000 + minor*100 + patch. */
export function cublasLtVersion(): string {
  const v = Number(cublasLt().cublasLtGetVersion());
  return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`;
}
