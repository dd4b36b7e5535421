// Row-major GEMMs through cuBLASLt (DESIGN §4): C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b].
//
// cuBLASLt is column-major. A row-major matrix X with row stride ld is, read column-major, Xᵀ
// with the same ld; so the row-major product C = op(A)·op(B) is computed as the column-major
// product Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our B, its "B" is our A, m' = N, n' = M. The
// Linear layer y = x·Wᵀ (W stored [N, K]) becomes transa = T on W, transb = N on x: the "TN"
// layout that FP8 GEMMs require too.
//
// Each distinct problem (shape, dtypes, transposes, strides, pointer alignment) gets a plan —
// descriptors plus an algorithm — built once and kept until dispose(). Asking the heuristic costs
// ~0.1–0.3 ms, and MoE GEMMs take a new token count M (or K, for weight gradients) per expert per
// step, so the algorithm is shared by the problems whose M and K round up to the same powers of
// two; should cuBLASLt refuse it for one of them, that problem gets its own. For a large problem
// the algorithm is the fastest of the heuristic's first few candidates, timed on the stream
// (autotune.ts) when the plan is made; otherwise the heuristic's first answer.
// Descriptors (one per pair of transposes) and matrix layouts are cached apart from the plans, so
// a new problem mostly assembles its plan from handles that exist already.

import type { Handle } from './ffi/driver.js';
import {
  check, cublasLt, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_OP_N, CUBLAS_OP_T,
  CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
} from './ffi/cublaslt.js';
import type { CudaContext } from './context.js';
import { candidateCount, fastestAlgo, heuristicResults, usableAlgos } from './autotune.js';
import { GemmProfile } from './gemm-profile.js';

export type GemmDType = 'bf16' | 'f32';

const ELEMENT_BYTES: Record<GemmDType, number> = { bf16: 2, f32: 4 };
const CUDA_TYPE: Record<GemmDType, number> = { bf16: CUDA_R_16BF, f32: CUDA_R_32F };

/** One row-major GEMM problem; op(A) is [m, k], op(B) is [k, n], C is [m, n]. */
export interface RowMajorGemm {
  m: number;
  n: number;
  k: number;
  /** A, B (and C/D) element types; A and B must match. */
  abType: GemmDType;
  cType: GemmDType;
  transA: boolean;
  transB: boolean;
  lda: number;
  ldb: number;
  ldc: number;
  batch?: number;
  /** Element strides between consecutive matrices of a batch. */
  strideA?: number;
  strideB?: number;
  strideC?: number;
}

interface Plan {
  desc: Handle;
  aLayout: Handle;
  bLayout: Handle;
  cLayout: Handle;
  algo: Buffer;
  /** The algorithm came from another problem of the same class. */
  shared: boolean;
}

/** Largest power of two (≤ 256) dividing the address: the alignment cuBLASLt may assume. */
function alignmentOf(ptr: number): number {
  let a = 256;
  while (a > 1 && ptr % a !== 0) a >>= 1;
  return a;
}

function int32(v: number): Int32Array {
  return new Int32Array([v]);
}

/** Plans and layouts kept before the caches are emptied (a bound on descriptors when shapes keep changing). */
const MAX_PLANS = 16384;
const MAX_LAYOUTS = 16384;

const roundUpPow2 = (v: number) => 2 ** Math.ceil(Math.log2(Math.max(v, 16)));

export class CublasLtMatmul {
  /** Matmul descriptors by transposes: they hold nothing else (FP32 compute and scale). */
  private readonly descs = new Map<string, Handle>();
  /** Matrix layouts by type, shape, leading dimension and batch: shared by every plan that uses one. */
  private readonly layouts = new Map<string, Handle>();
  /** Plans by problem (a plan owns no descriptor: it names a descriptor, three layouts and an algorithm). */
  private readonly plans = new Map<string, Plan>();
  /** Algorithms by problem class (M and K rounded up to powers of two): the heuristic's, or the fastest of its candidates. */
  private readonly algos = new Map<string, Buffer>();
  private readonly alpha = new Float32Array(1);
  private readonly beta = new Float32Array(1);

  /** Per-problem GEMM times (DSV3_GEMM_PROFILE=1), reported at dispose. */
  private readonly profile: GemmProfile | null;

  constructor(private readonly ctx: CudaContext) {
    this.profile = GemmProfile.fromEnvironment(ctx);
  }

  /**
   * C = alpha·op(A)·op(B) + beta·C on the context's stream (device pointers a, b, c). A problem
   * seen before costs a key, a lookup and the cublasLtMatmul call; a new one builds its plan from
   * cached descriptors and layouts, which MoE GEMMs (a new M per expert and step) mostly find.
   */
  run(g: RowMajorGemm, a: number, b: number, c: number, alpha = 1, beta = 0): void {
    if (g.m === 0 || g.n === 0) return;
    const alignA = alignmentOf(a), alignB = alignmentOf(b), alignC = alignmentOf(c);
    const rest = `${g.n},${g.abType},${g.cType},${g.transA ? 1 : 0}${g.transB ? 1 : 0},${g.lda},${g.ldb},${g.ldc},${g.batch ?? 1},${g.strideA ?? 0},${g.strideB ?? 0},${g.strideC ?? 0},${alignA},${alignB},${alignC}`;
    const key = `${g.m},${g.k},${rest}`;
    // alpha and beta first: the timed runs of a new plan use them too
    this.alpha[0] = alpha;
    this.beta[0] = beta;
    let plan = this.plans.get(key);
    if (!plan) {
      if (this.plans.size >= MAX_PLANS || this.layouts.size >= MAX_LAYOUTS) this.clearPlans();
      const classKey = `${roundUpPow2(g.m)},${roundUpPow2(g.k)},${rest}`;
      const classAlgo = this.algos.get(classKey);
      plan = this.makePlan(g, classAlgo);
      if (!classAlgo) {
        plan.algo = this.chooseAlgo(plan, g, a, b, c);
        this.algos.set(classKey, plan.algo);
      }
      this.plans.set(key, plan);
    }
    let status = this.profile
      ? this.profile.time(describe(g), 2 * g.m * g.n * g.k * (g.batch ?? 1), () => this.launch(plan!, a, b, c))
      : this.launch(plan, a, b, c);
    if (status !== 0 && plan.shared) {
      // the class's algorithm does not fit this problem: choose one for this problem
      plan.algo = this.chooseAlgo(plan, g, a, b, c);
      plan.shared = false;
      status = this.launch(plan, a, b, c);
    }
    check('cublasLtMatmul', status);
  }

  /** Swapped operands: cuBLASLt's A is our B and its B is our A (see the header comment). */
  private launch(plan: Plan, a: number, b: number, c: number, algo = plan.algo): number {
    return cublasLt().cublasLtMatmul(this.ctx.ltHandle, plan.desc, this.alpha, b, plan.aLayout, a, plan.bLayout, this.beta, c, plan.cLayout, c, plan.cLayout,
      algo, this.ctx.workspace, this.ctx.workspaceBytes, this.ctx.stream);
  }

  /**
   * The algorithm for a plan's problem: the heuristic's best, or for a large problem the fastest
   * of its candidates, timed reading A and B and writing a scratch C (the caller's C is untouched).
   */
  private chooseAlgo(plan: Plan, g: RowMajorGemm, a: number, b: number, c: number): Buffer {
    const batch = g.batch ?? 1;
    const work = g.m * g.n * g.k * batch;
    const algos = this.heuristic(plan, g, alignmentOf(a), alignmentOf(b), alignmentOf(c), candidateCount(this.ctx, work));
    // every matrix of the batch: the last starts (batch - 1)·strideC in and has m rows of ldc
    const cBytes = ELEMENT_BYTES[g.cType] * ((batch - 1) * (g.strideC ?? 0) + g.m * g.ldc);
    return fastestAlgo(this.ctx, algos, cBytes, (algo, scratch) => this.launch(plan, a, b, scratch, algo), work, describe(g));
  }

  /** The descriptor for one pair of transposes (made on first use). */
  private desc(transA: boolean, transB: boolean): Handle {
    const key = `${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}`;
    let desc = this.descs.get(key);
    if (desc === undefined) {
      const lt = cublasLt();
      const out: Handle[] = [null];
      check('cublasLtMatmulDescCreate', lt.cublasLtMatmulDescCreate(out, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      desc = out[0];
      try {
        check('cublasLtMatmulDescSetAttribute(TRANSA)', lt.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, int32(transB ? CUBLAS_OP_T : CUBLAS_OP_N), 4));
        check('cublasLtMatmulDescSetAttribute(TRANSB)', lt.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, int32(transA ? CUBLAS_OP_T : CUBLAS_OP_N), 4));
      } catch (e) {
        lt.cublasLtMatmulDescDestroy(desc);
        throw e;
      }
      this.descs.set(key, desc);
    }
    return desc;
  }

  /** A column-major layout (made on first use): rows × cols with leading dimension ld, `batch` matrices `stride` apart. */
  private layout(type: GemmDType, rows: number, cols: number, ld: number, batch: number, stride: number): Handle {
    const key = `${type},${rows},${cols},${ld},${batch},${batch > 1 ? stride : 0}`;
    let layout = this.layouts.get(key);
    if (layout === undefined) {
      const lt = cublasLt();
      const o: Handle[] = [null];
      check('cublasLtMatrixLayoutCreate', lt.cublasLtMatrixLayoutCreate(o, CUDA_TYPE[type], rows, cols, ld));
      layout = o[0];
      try {
        if (batch > 1) {
          check('cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)', lt.cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, int32(batch), 4));
          check('cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)',
            lt.cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, new BigInt64Array([BigInt(stride)]), 8));
        }
      } catch (e) {
        lt.cublasLtMatrixLayoutDestroy(layout);
        throw e;
      }
      this.layouts.set(key, layout);
    }
    return layout;
  }

  /** A plan with the class's algorithm, or (classAlgo undefined) none yet: the caller chooses it. */
  private makePlan(g: RowMajorGemm, classAlgo: Buffer | undefined): Plan {
    const batch = g.batch ?? 1;
    const desc = this.desc(g.transA, g.transB);
    // cuBLASLt A = our B: op must be [N, K]. Stored row-major [K, N] reads column-major as [N, K].
    const aLayout = g.transB ? this.layout(g.abType, g.k, g.n, g.ldb, batch, g.strideB ?? 0) : this.layout(g.abType, g.n, g.k, g.ldb, batch, g.strideB ?? 0);
    // cuBLASLt B = our A: op must be [K, M]. Stored row-major [M, K] reads column-major as [K, M].
    const bLayout = g.transA ? this.layout(g.abType, g.m, g.k, g.lda, batch, g.strideA ?? 0) : this.layout(g.abType, g.k, g.m, g.lda, batch, g.strideA ?? 0);
    const cLayout = this.layout(g.cType, g.n, g.m, g.ldc, batch, g.strideC ?? 0);
    return { desc, aLayout, bLayout, cLayout, algo: classAlgo ?? Buffer.alloc(0), shared: classAlgo !== undefined };
  }

  /** Forget the plans and destroy the layouts (the descriptors and the class algorithms stay). */
  private clearPlans(): void {
    const lt = cublasLt();
    this.plans.clear();
    for (const l of this.layouts.values()) lt.cublasLtMatrixLayoutDestroy(l);
    this.layouts.clear();
  }

  /** The heuristic's `count` best algorithms for one problem (at least one), best first. */
  private heuristic(plan: Plan, g: RowMajorGemm, alignA: number, alignB: number, alignC: number, count: number): Buffer[] {
    const lt = cublasLt();
    const prefOut: Handle[] = [null];
    check('cublasLtMatmulPreferenceCreate', lt.cublasLtMatmulPreferenceCreate(prefOut));
    const pref = prefOut[0];
    const results = heuristicResults(count);
    const returned = [0];
    try {
      check('cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)',
        lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, new BigUint64Array([BigInt(this.ctx.workspaceBytes)]), 8));
      // Our A/B/C are cuBLASLt's B/A/C and D.
      const aligns: [number, number][] = [[CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignB], [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignA],
        [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignC], [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignC]];
      for (const [attr, bytes] of aligns) {
        check('cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)', lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, new Uint32Array([bytes]), 4));
      }
      check('cublasLtMatmulAlgoGetHeuristic',
        lt.cublasLtMatmulAlgoGetHeuristic(this.ctx.ltHandle, plan.desc, plan.aLayout, plan.bLayout, plan.cLayout, plan.cLayout, pref, count, results, returned));
    } finally {
      lt.cublasLtMatmulPreferenceDestroy(pref);
    }
    if (returned[0] === 0) throw new Error(`cublasLtMatmulAlgoGetHeuristic found no algorithm for ${describe(g)}`);
    const algos = usableAlgos(results, returned[0]!, this.ctx.workspaceBytes);
    if (algos.length === 0) throw new Error(`cuBLASLt offered ${returned[0]} algorithm(s) for ${describe(g)}, none usable (failed, or over the ${this.ctx.workspaceBytes}-byte workspace)`);
    return algos;
  }

  /** Release every descriptor and layout. */
  dispose(): void {
    this.profile?.report();
    this.clearPlans();
    const lt = cublasLt();
    for (const d of this.descs.values()) lt.cublasLtMatmulDescDestroy(d);
    this.descs.clear();
    this.algos.clear();
  }
}

function describe(g: RowMajorGemm): string {
  return `${g.transA ? 'Aᵀ' : 'A'}·${g.transB ? 'Bᵀ' : 'B'} m=${g.m} n=${g.n} k=${g.k} ${g.abType}→${g.cType} lda=${g.lda} ldb=${g.ldb} ldc=${g.ldc} batch=${g.batch ?? 1}`;
}

export { ELEMENT_BYTES as GEMM_ELEMENT_BYTES };
