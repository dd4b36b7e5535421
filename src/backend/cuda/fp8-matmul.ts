// DeepSeek-V3's fine-grained FP8 GEMM on Hopper (SPEC §5, DESIGN §4): E4M3 operands with one FP32
// scale per 1×128 activation tile and one per 128×128 weight block, multiplied by cuBLASLt
// (≥ 12.9) with the scales applied inside the kernel and FP32 accumulation promoted at every block
// of K (fast accumulation off), plus the quantization kernels that produce those operands
// (kernels/fp8-quantize.cu, bit-exact with src/fp8/quantize.ts).
//
//   D[M, N] = (A · scaleA) · (B · scaleB)ᵀ      A: activations [M, K], B: the weight [N, K] ([out, in])
//
// Row-major operands are read by column-major cuBLASLt as their transposes, as in matmul.ts:
// cuBLASLt's A is our weight (stored K×N, op T: the "TN" layout FP8 requires), its B our
// activations (stored K×M, op N), and D is N×M column-major, i.e. our [M, N] row-major.
//
// Scale layouts (where cuBLASLt reads them; `activationScaleLayout` and `weightScaleLayout` give the sizes):
//   activations, VEC128_32F, cuBLASLt's B:     scale(m, kb) at kb · roundup(M, 4) + m        (M-major)
//   weights,     BLK128x128_32F, cuBLASLt's A: scale(nb, kb) at nb · roundup(ceil(K/128), 4) + kb  (K-major)
// The weight layout is a checkpoint's weight_scale_inv [ceil(N/128), ceil(K/128)] with its rows
// padded to a multiple of 4; the activation layout is quantizeTiles1x128's [M, ceil(K/128)] transposed,
// its columns padded to a multiple of 4. Every scale is a dequantization multiplier (scaleInv).
//
// Each shape gets a plan (descriptor, layouts, algorithm) on first use; for a large shape the
// algorithm is the fastest of the heuristic's first few candidates, timed on the stream (autotune.ts).

import type { Handle } from './ffi/driver.js';
import {
  check, cublasLt, cublasLtVersion,
  CUDA_R_8F_E4M3, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_OP_N, CUBLAS_OP_T,
  CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB, CUBLASLT_MATMUL_DESC_FAST_ACCUM,
  CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
  CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
} from './ffi/cublaslt.js';
import type { CudaContext } from './context.js';
import type { KernelArgType } from './launch.js';
import { heuristicResults, usableAlgos } from './autotune.js';

/** Edge of a weight block and width of an activation tile. */
export const FP8_BLOCK = 128;
/** cuBLASLt reads scale rows (and the FP8 GEMM's inputs) in 16-byte units: 4 FP32 scales. */
const SCALE_ROW_MULTIPLE = 4;
/** cublasLtGetVersion() of cuBLAS 12.9, the first with VEC128_32F and BLK128x128_32F. */
const MIN_CUBLASLT_VERSION = 120900;

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const roundUp = (a: number, m: number) => ceilDiv(a, m) * m;

export interface ScaleLayout {
  /** Lines of scales: ceil(K/128) for activations, ceil(N/128) for weights. */
  lines: number;
  /** Elements from one line to the next (padded to a multiple of 4). */
  ld: number;
  /** FP32 elements to allocate: lines · ld. */
  elements: number;
}

/** Where the 1×128 scales of activations [M, K] go: line kb holds the M scales of K block kb. */
export function activationScaleLayout(M: number, K: number): ScaleLayout {
  const lines = ceilDiv(K, FP8_BLOCK);
  const ld = roundUp(Math.max(M, 1), SCALE_ROW_MULTIPLE);
  return { lines, ld, elements: lines * ld };
}

/** Where the 128×128 scales of a weight [N, K] go: line nb holds the ceil(K/128) scales of row block nb. */
export function weightScaleLayout(N: number, K: number): ScaleLayout {
  const lines = ceilDiv(N, FP8_BLOCK);
  const ld = roundUp(ceilDiv(K, FP8_BLOCK), SCALE_ROW_MULTIPLE);
  return { lines, ld, elements: lines * ld };
}

/** quantizeTiles1x128's scaleInv [M, ceil(K/128)] (row-major) in the device layout (padding zero). */
export function activationScalesToDevice(scaleInv: Float32Array, M: number, K: number): Float32Array {
  const kb = ceilDiv(K, FP8_BLOCK);
  if (scaleInv.length !== M * kb) throw new Error(`activationScalesToDevice: ${scaleInv.length} scales for [${M}, ${K}] (expected ${M * kb})`);
  const layout = activationScaleLayout(M, K);
  const out = new Float32Array(layout.elements);
  for (let m = 0; m < M; m++) for (let b = 0; b < kb; b++) out[b * layout.ld + m] = scaleInv[m * kb + b]!;
  return out;
}

/** The device layout of activation scales back to [M, ceil(K/128)] row-major. */
export function activationScalesFromDevice(device: Float32Array, M: number, K: number): Float32Array {
  const kb = ceilDiv(K, FP8_BLOCK);
  const layout = activationScaleLayout(M, K);
  if (device.length < layout.elements) throw new Error(`activationScalesFromDevice: ${device.length} values, the layout of [${M}, ${K}] has ${layout.elements}`);
  const out = new Float32Array(M * kb);
  for (let m = 0; m < M; m++) for (let b = 0; b < kb; b++) out[m * kb + b] = device[b * layout.ld + m]!;
  return out;
}

/** A checkpoint's weight_scale_inv [ceil(N/128), ceil(K/128)] (quantizeWeightBlocks128's) in the device layout. */
export function weightScalesToDevice(scaleInv: Float32Array, N: number, K: number): Float32Array {
  const nb = ceilDiv(N, FP8_BLOCK), kb = ceilDiv(K, FP8_BLOCK);
  if (scaleInv.length !== nb * kb) throw new Error(`weightScalesToDevice: ${scaleInv.length} scales for [${N}, ${K}] (expected ${nb * kb})`);
  const layout = weightScaleLayout(N, K);
  const out = new Float32Array(layout.elements);
  for (let r = 0; r < nb; r++) out.set(scaleInv.subarray(r * kb, (r + 1) * kb), r * layout.ld);
  return out;
}

/** The device layout of weight scales back to [ceil(N/128), ceil(K/128)] row-major. */
export function weightScalesFromDevice(device: Float32Array, N: number, K: number): Float32Array {
  const nb = ceilDiv(N, FP8_BLOCK), kb = ceilDiv(K, FP8_BLOCK);
  const layout = weightScaleLayout(N, K);
  if (device.length < layout.elements) throw new Error(`weightScalesFromDevice: ${device.length} values, the layout of [${N}, ${K}] has ${layout.elements}`);
  const out = new Float32Array(nb * kb);
  for (let r = 0; r < nb; r++) out.set(device.subarray(r * layout.ld, r * layout.ld + kb), r * kb);
  return out;
}

// ---- quantization kernels -------------------------------------------------------------------

export type Fp8InputType = 'bf16' | 'f32';

export interface QuantizeArgs {
  /** Rows of the row-major input: M tokens (activations) or N output features (weights). */
  rows: number;
  /** Columns: the inner dimension K. */
  cols: number;
  /** Device pointer to the input [rows, cols]. */
  input: number;
  inputType: Fp8InputType;
  /** Device pointer to rows · cols bytes of E4M3 codes. */
  codes: number;
  /** Device pointer to the scales, in the layout of activationScaleLayout / weightScaleLayout. */
  scales: number;
  /** Power-of-two scales (2^ceil(log2(amax/448))) instead of amax/448. */
  powerOfTwo?: boolean;
}

const QUANTIZE_ARGS: readonly KernelArgType[] = ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32'];
const QUANTIZE_FILE = 'fp8-quantize.cu';

function checkQuantizeArgs(what: string, a: QuantizeArgs): void {
  if (!Number.isInteger(a.rows) || !Number.isInteger(a.cols) || a.rows < 0 || a.cols < 0) throw new Error(`${what}: shape [${a.rows}, ${a.cols}]`);
  if (a.inputType !== 'bf16' && a.inputType !== 'f32') throw new Error(`${what}: input type ${String(a.inputType)} (bf16 or f32)`);
  if (a.scales % 4 !== 0) throw new Error(`${what}: the scale pointer 0x${a.scales.toString(16)} is not 4-byte aligned`);
}

/** Activations [M, K] → E4M3 codes [M, K] and 1×128 scales in the VEC128 layout, on the context's stream. */
export function quantizeActivations1x128(ctx: CudaContext, a: QuantizeArgs): void {
  checkQuantizeArgs('quantizeActivations1x128', a);
  const M = a.rows, K = a.cols;
  if (M === 0 || K === 0) return;
  const tiles = M * ceilDiv(K, FP8_BLOCK);
  if (tiles >= 2 ** 31 - 1) throw new Error(`quantizeActivations1x128: [${M}, ${K}] has ${tiles} tiles (at most 2^31 - 2)`);
  const name = `quantize_1x128_${a.powerOfTwo ? 'pow2_' : ''}${a.inputType}`;
  // 8 warps per block, two tiles per warp and pass
  const blocks = Math.min(ceilDiv(tiles, 16), ctx.smCount * 32);
  ctx.kernels(QUANTIZE_FILE).fn(name, QUANTIZE_ARGS).launch(ctx.stream, blocks, 256, 0, [a.input, a.codes, a.scales, M, K, activationScaleLayout(M, K).ld]);
}

/** A weight [N, K] → E4M3 codes [N, K] and 128×128 scales in the BLK128x128 layout, on the context's stream. */
export function quantizeWeights128x128(ctx: CudaContext, a: QuantizeArgs): void {
  checkQuantizeArgs('quantizeWeights128x128', a);
  const N = a.rows, K = a.cols;
  if (N === 0 || K === 0) return;
  if (ceilDiv(N, FP8_BLOCK) > 65535) throw new Error(`quantizeWeights128x128: ${N} rows (at most ${65535 * FP8_BLOCK})`);
  const name = `quantize_128x128_${a.powerOfTwo ? 'pow2_' : ''}${a.inputType}`;
  ctx.kernels(QUANTIZE_FILE).fn(name, QUANTIZE_ARGS)
    .launch(ctx.stream, [ceilDiv(K, FP8_BLOCK), ceilDiv(N, FP8_BLOCK)], 256, 0, [a.input, a.codes, a.scales, N, K, weightScaleLayout(N, K).ld]);
}

// ---- the GEMM -------------------------------------------------------------------------------

export type Fp8OutputType = 'bf16' | 'f32';

export interface Fp8GemmArgs {
  M: number;
  N: number;
  K: number;
  /** E4M3 codes of the activations [M, K], row-major (device pointer). */
  a: number;
  /** Their 1×128 scales, activationScaleLayout(M, K) (device pointer). */
  aScale: number;
  /** E4M3 codes of the weight [N, K] ([out, in]), row-major (device pointer). */
  b: number;
  /** Its 128×128 scales, weightScaleLayout(N, K) (device pointer). */
  bScale: number;
  /** The output [M, N], row-major (device pointer). */
  d: number;
  /** Output type (default bf16). */
  dType?: Fp8OutputType;
  /** D += product instead of D = product. */
  accumulate?: boolean;
}

interface Plan {
  desc: Handle;
  aLayout: Handle;
  bLayout: Handle;
  dLayout: Handle;
  algo: Buffer;
  /** The scale addresses the descriptor holds now (set again only when they change). */
  aScale: number;
  bScale: number;
}

/** Largest power of two (≤ 256) dividing the address: the alignment cuBLASLt may assume. */
function alignmentOf(ptr: number): number {
  let a = 256;
  while (a > 1 && ptr % a !== 0) a >>= 1;
  return a;
}

/** Why this GPU and cuBLASLt cannot run the block-scaled FP8 GEMM, or null when they can. */
export function fp8GemmUnsupported(ctx: CudaContext): string | null {
  const [major, minor] = ctx.computeCapability;
  if (major !== 9) return `block-scaled FP8 GEMMs (cuBLASLt VEC128_32F / BLK128x128_32F) run on Hopper (compute capability 9.x); this GPU is ${major}.${minor}`;
  const version = Number(cublasLt().cublasLtGetVersion());
  if (version < MIN_CUBLASLT_VERSION) return `block-scaled FP8 GEMMs need cuBLASLt ≥ 12.9; the loaded one is ${cublasLtVersion()} (${cublasLt().path})`;
  return null;
}

function int32(v: number): Int32Array {
  return new Int32Array([v]);
}

function pointerValue(ptr: number): BigUint64Array {
  return new BigUint64Array([BigInt(ptr)]);
}

/** The block-scaled FP8 GEMM with its plans (descriptors and the heuristic's algorithm per problem), kept until dispose(). */
export class Fp8BlockScaledGemm {
  private readonly plans = new Map<string, Plan>();
  private readonly alpha = new Float32Array([1]);
  private readonly beta = new Float32Array([0]);
  private checked = false;

  constructor(private readonly ctx: CudaContext) {}

  /** D = (A·scaleA)(B·scaleB)ᵀ (or D += …) on the context's stream. */
  run(g: Fp8GemmArgs): void {
    const { M, N, K } = g;
    const dType = g.dType ?? 'bf16';
    if (![M, N, K].every((v) => Number.isInteger(v) && v >= 0)) throw new Error(`fp8BlockScaledGemm: M=${M} N=${N} K=${K}`);
    if (M === 0 || N === 0) return;
    if (!this.checked) {
      const reason = fp8GemmUnsupported(this.ctx);
      if (reason) throw new Error(reason);
      this.checked = true;
    }
    // FP8 tensor-core GEMMs read rows in 16-byte units: K codes per row, and N outputs per row.
    if (K === 0 || K % 16 !== 0) throw new Error(`fp8BlockScaledGemm: K = ${K} must be a positive multiple of 16`);
    if (N % 16 !== 0) throw new Error(`fp8BlockScaledGemm: N = ${N} must be a multiple of 16`);
    // cuBLASLt 13.1 finds no block-scaled algorithm for M = 1 or 77 on an H200 (measured): pad the tokens
    if (M % 8 !== 0) throw new Error(`fp8BlockScaledGemm: M = ${M} must be a multiple of 8 (pad the activations with zero rows)`);
    if (dType !== 'bf16' && dType !== 'f32') throw new Error(`fp8BlockScaledGemm: output type ${String(dType)} (bf16 or f32)`);
    for (const [what, ptr] of [['a', g.a], ['aScale', g.aScale], ['b', g.b], ['bScale', g.bScale], ['d', g.d]] as const) {
      if (!ptr || ptr % 16 !== 0) throw new Error(`fp8BlockScaledGemm: ${what} = 0x${ptr.toString(16)} must be a 16-byte aligned device pointer`);
    }
    const accumulate = g.accumulate === true;
    const key = `${M},${N},${K},${dType},${accumulate ? 1 : 0},${alignmentOf(g.a)},${alignmentOf(g.b)},${alignmentOf(g.d)}`;
    // beta first: the timed runs of a new plan use it too
    this.beta[0] = accumulate ? 1 : 0;
    let plan = this.plans.get(key);
    if (!plan) {
      plan = this.makePlan(g, dType);
      this.plans.set(key, plan);
    }
    const lt = cublasLt();
    // Scale pointers live in the descriptor; it is read when the call is enqueued (also under graph
    // capture). Set only on change: cuBLASLt may redo work for a descriptor that changed.
    if (plan.bScale !== g.bScale) {
      check('cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)', lt.cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, pointerValue(g.bScale), 8));
      plan.bScale = g.bScale;
    }
    if (plan.aScale !== g.aScale) {
      check('cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)', lt.cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, pointerValue(g.aScale), 8));
      plan.aScale = g.aScale;
    }
    check('cublasLtMatmul(FP8 block-scaled)', cublasLt().cublasLtMatmul(this.ctx.ltHandle, plan.desc, this.alpha, g.b, plan.aLayout, g.a, plan.bLayout, this.beta,
      g.d, plan.dLayout, g.d, plan.dLayout, plan.algo, this.ctx.workspace, this.ctx.workspaceBytes, this.ctx.stream));
  }

  /** Swapped operands: cuBLASLt's A is our weight b, its B our activations a; D (and C) is `d`. */
  private makePlan(g: Fp8GemmArgs, dType: Fp8OutputType): Plan {
    const lt = cublasLt();
    const { M, N, K } = g;
    const out: Handle[] = [null];
    check('cublasLtMatmulDescCreate', lt.cublasLtMatmulDescCreate(out, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const desc = out[0];
    const layouts: Handle[] = [];
    try {
      const set = (what: string, attr: number, value: ArrayBufferView, bytes: number) =>
        check(`cublasLtMatmulDescSetAttribute(${what})`, lt.cublasLtMatmulDescSetAttribute(desc, attr, value, bytes));
      set('TRANSA', CUBLASLT_MATMUL_DESC_TRANSA, int32(CUBLAS_OP_T), 4);
      set('TRANSB', CUBLASLT_MATMUL_DESC_TRANSB, int32(CUBLAS_OP_N), 4);
      // Fast accumulation off: partial sums are promoted to FP32 at every 128-wide block of K.
      set('FAST_ACCUM', CUBLASLT_MATMUL_DESC_FAST_ACCUM, new Int8Array([0]), 1);
      set('A_SCALE_MODE', CUBLASLT_MATMUL_DESC_A_SCALE_MODE, int32(CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F), 4);
      set('B_SCALE_MODE', CUBLASLT_MATMUL_DESC_B_SCALE_MODE, int32(CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F), 4);
      set('A_SCALE_POINTER', CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, pointerValue(g.bScale), 8);
      set('B_SCALE_POINTER', CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, pointerValue(g.aScale), 8);
      const layout = (type: number, rows: number, cols: number, ld: number): Handle => {
        const o: Handle[] = [null];
        check('cublasLtMatrixLayoutCreate', lt.cublasLtMatrixLayoutCreate(o, type, rows, cols, ld));
        layouts.push(o[0]);
        return o[0];
      };
      const aLayout = layout(CUDA_R_8F_E4M3, K, N, K); // the weight [N, K] row-major = K×N column-major, op T
      const bLayout = layout(CUDA_R_8F_E4M3, K, M, K); // the activations [M, K] = K×M column-major, op N
      const dLayout = layout(dType === 'bf16' ? CUDA_R_16BF : CUDA_R_32F, N, M, N); // D [M, N] = N×M column-major

      const prefOut: Handle[] = [null];
      check('cublasLtMatmulPreferenceCreate', lt.cublasLtMatmulPreferenceCreate(prefOut));
      const pref = prefOut[0];
      // The heuristic's first answer: timing its candidates (autotune.ts) made the V3 shapes slower on
      // an H200 (geomean 0.89× torch against 0.95×, bench/RESULTS.md), unlike the BF16 GEMMs.
      const count = 1;
      const results = heuristicResults(count);
      const returned = [0];
      let status: number;
      try {
        check('cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)',
          lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, new BigUint64Array([BigInt(this.ctx.workspaceBytes)]), 8));
        const aligns: [number, number][] = [[CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignmentOf(g.b)], [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignmentOf(g.a)],
          [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignmentOf(g.d)], [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignmentOf(g.d)]];
        for (const [attr, bytes] of aligns) {
          check('cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)', lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, new Uint32Array([bytes]), 4));
        }
        status = lt.cublasLtMatmulAlgoGetHeuristic(this.ctx.ltHandle, desc, aLayout, bLayout, dLayout, dLayout, pref, count, results, returned);
      } finally {
        lt.cublasLtMatmulPreferenceDestroy(pref);
      }
      if (status !== 0 || returned[0] === 0) {
        const why = status !== 0 ? `failed (${status === 15 ? 'CUBLAS_STATUS_NOT_SUPPORTED' : `status ${status}`})` : 'found no algorithm';
        throw new Error(`cublasLtMatmulAlgoGetHeuristic ${why} for the block-scaled FP8 GEMM M=${M} N=${N} K=${K} → ${dType} (cuBLASLt ${cublasLtVersion()})`);
      }
      const algos = usableAlgos(results, returned[0]!, this.ctx.workspaceBytes);
      if (algos.length === 0) {
        throw new Error(`cuBLASLt offered ${returned[0]} FP8 algorithm(s) for M=${M} N=${N} K=${K}, none usable (failed, or over the ${this.ctx.workspaceBytes}-byte workspace)`);
      }
      return { desc, aLayout, bLayout, dLayout, algo: algos[0]!, aScale: g.aScale, bScale: g.bScale };
    } catch (e) {
      for (const l of layouts) lt.cublasLtMatrixLayoutDestroy(l);
      lt.cublasLtMatmulDescDestroy(desc);
      throw e;
    }
  }

  /** Release every plan's descriptors. */
  dispose(): void {
    const lt = cublasLt();
    for (const p of this.plans.values()) {
      lt.cublasLtMatrixLayoutDestroy(p.aLayout);
      lt.cublasLtMatrixLayoutDestroy(p.bLayout);
      lt.cublasLtMatrixLayoutDestroy(p.dLayout);
      lt.cublasLtMatmulDescDestroy(p.desc);
    }
    this.plans.clear();
  }
}

const perContext = new WeakMap<CudaContext, Fp8BlockScaledGemm>();

/** D = (A·scaleA)(B·scaleB)ᵀ with the context's shared plan cache (see Fp8BlockScaledGemm). */
export function fp8BlockScaledGemm(ctx: CudaContext, g: Fp8GemmArgs): void {
  let gemm = perContext.get(ctx);
  if (!gemm) {
    gemm = new Fp8BlockScaledGemm(ctx);
    perContext.set(ctx, gemm);
  }
  gemm.run(g);
}

/** Release the context's shared FP8 plans (call before disposing the context). */
export function releaseFp8GemmPlans(ctx: CudaContext): void {
  perContext.get(ctx)?.dispose();
  perContext.delete(ctx);
}
