// Our own GEMM on one thread: Goto/BLIS blocking around the WebAssembly micro-kernel.
//
//   for each KC-deep slice of k:                 stage + pack op(B)[pc:pc+kc, tile cols] → NR-wide panels
//     for each MC-high block of the tile's rows: stage + pack alpha·op(A)[rows, pc:pc+kc] → MR-high panels
//       macro-kernel: every MR×NR register tile of the block, acc += A_panel · B_panel
//
// The packed A block (MC×KC) stays in L2 while one packed B panel (KC×NR) sits in L1 and is
// reused across the whole block. WASM sees only its own memory, so each block of A and B is
// first copied into a staging area there with TypedArray.set (memcpy; one call when the rows
// are contiguous, one per row otherwise), then packed by SIMD code; JS does only the ragged
// edges. Packing pads to MR/NR multiples with zeros, so the kernel has no edge cases. The
// tile accumulates in the instance's memory starting from beta·C (zeros when beta = 0, which
// never reads C) and is copied out once. Moving packing and write-back from JS loops into
// set + WASM took 128³ from 31 to 55 GFLOP/s and 1024³ from 53 to 60 on one Zen 5 core.
//
// One engine per dtype per thread (the main thread and every pool worker own theirs).

import { buildKernelModule, type KernelDType, type MacroKernel, type PackKernel, type ScaleKernel } from './wasm-kernel.js';
import type { AnyGemmArgs, FloatArray } from './types.js';

// tsconfig's lib (ES2022, no DOM) declares no WebAssembly; these are the members used here.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
};

export interface Blocking {
  /** Register tile rows and columns (the micro-kernel's shape). */
  mr: number;
  nr: number;
  /** Depth of one packed slice of k; the A block is MC×KC, a B panel KC×NR. */
  kc: number;
  mc: number;
}

// Measured on an AMD EPYC (Zen 5, 48 KiB L1d, 1 MiB L2 per core): the kernel speed is flat
// within ±3% for KC in 128…512 and MC in 64…256, so these sit in the middle.
export const BLOCKING: Record<KernelDType, Blocking> = {
  f32: { mr: 4, nr: 8, kc: 256, mc: 128 },
  f64: { mr: 4, nr: 4, kc: 256, mc: 64 },
};

/** The C tile a task owns is capped so its scratch stays small (16 MiB in f64). */
const MAX_TILE_ELEMENTS = 1 << 21;
/** The parallel claim word keeps 12 bits for the task index (see pool.ts). */
export const MAX_TASKS = 4095;

export function dtypeOf(a: FloatArray): KernelDType {
  return a instanceof Float32Array ? 'f32' : 'f64';
}

const roundUp = (x: number, to: number) => Math.ceil(x / to) * to;

/** How C is cut into tiles: tasks for the pool, and the memory bound for one thread. */
export interface TilePlan {
  tileM: number;
  tileN: number;
  gm: number;
  gn: number;
  count: number;
}

/**
 * Cut C into at least `participants` tiles. Splitting rows makes every task pack all of its
 * columns of B again, splitting columns makes every task repack its rows of A, so the larger
 * dimension is split; tiles above MAX_TILE_ELEMENTS are halved along their longer side.
 */
export function planTiles(m: number, n: number, dtype: KernelDType, participants: number): TilePlan {
  const { mr, nr } = BLOCKING[dtype];
  let gm = 1;
  let gn = 1;
  if (participants > 1) {
    if (m >= n) gm = Math.min(participants, Math.ceil(m / mr));
    else gn = Math.min(participants, Math.ceil(n / nr));
  }
  let cap = MAX_TILE_ELEMENTS;
  for (;;) {
    while (Math.ceil(m / gm) * Math.ceil(n / gn) > cap) {
      if (Math.ceil(m / gm) >= Math.ceil(n / gn)) gm *= 2;
      else gn *= 2;
    }
    const tileM = roundUp(Math.ceil(m / gm), mr);
    const tileN = roundUp(Math.ceil(n / gn), nr);
    const plan = { tileM, tileN, gm: Math.ceil(m / tileM), gn: Math.ceil(n / tileN), count: 0 };
    plan.count = plan.gm * plan.gn;
    if (plan.count <= MAX_TASKS) return plan;
    cap *= 2;
    gm = 1;
    gn = 1;
  }
}

/**
 * Copy a rows×cols block (row stride srcLd) into dst at dstOff with row stride dstLd. Bulk
 * `set` is memcpy; a row at a time it costs ~30 ns of call overhead, so short rows go
 * through a plain loop instead.
 */
function copyBlock(src: FloatArray, srcOff: number, srcLd: number, rows: number, cols: number, dst: FloatArray, dstOff: number, dstLd: number): void {
  if (srcLd === cols && dstLd === cols) {
    dst.set(src.subarray(srcOff, srcOff + rows * cols), dstOff);
  } else if (cols >= 64) {
    for (let i = 0; i < rows; i++) dst.set(src.subarray(srcOff + i * srcLd, srcOff + i * srcLd + cols), dstOff + i * dstLd);
  } else {
    for (let i = 0; i < rows; i++) {
      const s = srcOff + i * srcLd;
      const d = dstOff + i * dstLd;
      for (let j = 0; j < cols; j++) dst[d + j] = src[s + j];
    }
  }
}

export class OwnGemmEngine {
  readonly blocking: Blocking;
  private readonly memory = new WebAssembly.Memory({ initial: 1 });
  private readonly macro: MacroKernel;
  private readonly packRowsA: PackKernel;
  private readonly packColsA: PackKernel;
  private readonly packRowsB: PackKernel;
  private readonly packColsB: PackKernel;
  private readonly scale: ScaleKernel;
  private readonly es: number;
  private readonly lanes: number;
  private view: FloatArray;

  constructor(readonly dtype: KernelDType) {
    this.blocking = BLOCKING[dtype];
    const { mr, nr } = this.blocking;
    const module = new WebAssembly.Module(buildKernelModule({ dtype, mr, nr }));
    const exports = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports;
    this.macro = exports.macro as MacroKernel;
    this.packRowsA = exports[`packRows${mr}`] as PackKernel;
    this.packColsA = exports[`packCols${mr}`] as PackKernel;
    this.packRowsB = exports[`packRows${nr}`] as PackKernel;
    this.packColsB = exports[`packCols${nr}`] as PackKernel;
    this.scale = exports.scale as ScaleKernel;
    this.es = dtype === 'f32' ? 4 : 8;
    this.lanes = 16 / this.es;
    this.view = this.makeView();
  }

  private makeView(): FloatArray {
    return this.dtype === 'f32' ? new Float32Array(this.memory.buffer) : new Float64Array(this.memory.buffer);
  }

  private ensure(elements: number): void {
    const bytes = elements * this.es;
    const have = this.memory.buffer.byteLength;
    if (bytes <= have) return;
    this.memory.grow(Math.ceil((bytes - have) / 65536));
    this.view = this.makeView();
  }

  /** Task `t` of `plan`: one tile of C. */
  runTask(args: AnyGemmArgs, plan: TilePlan, t: number): void {
    const ti = Math.floor(t / plan.gn);
    const tj = t - ti * plan.gn;
    const i0 = ti * plan.tileM;
    const j0 = tj * plan.tileN;
    this.tile(args, i0, Math.min(args.m, i0 + plan.tileM), j0, Math.min(args.n, j0 + plan.tileN));
  }

  /** C[i0:i1, j0:j1] = alpha·op(A)[i0:i1, :]·op(B)[:, j0:j1] + beta·C[i0:i1, j0:j1], k > 0. */
  tile(args: AnyGemmArgs, i0: number, i1: number, j0: number, j1: number): void {
    const { mr, nr, kc: KC, mc: MC } = this.blocking;
    const { k, a, b, c, lda, ldb, ldc, aOffset, bOffset, cOffset, alpha, beta } = args;
    const es = this.es;
    // The WASM side rounds alpha to the element type; the JS edges must use the same value.
    const alphaT = this.dtype === 'f32' ? Math.fround(alpha) : alpha;
    const tm = i1 - i0;
    const tn = j1 - j0;
    const tmPad = roundUp(tm, mr);
    const tnPad = roundUp(tn, nr);
    const kcMax = Math.min(KC, k);
    // Memory: accumulator C [tmPad, tnPad] | packed B [kc, tnPad] | packed A [MC, kc] | staging
    const accLen = tmPad * tnPad;
    const bPack = accLen;
    const aPack = bPack + kcMax * tnPad;
    const stage = aPack + Math.min(MC, tmPad) * kcMax;
    this.ensure(stage + kcMax * Math.max(tn, Math.min(MC, tm)));
    const v = this.view;

    // acc = beta·C (the kernel adds alpha·A·B to it); beta = 0 never reads C.
    v.fill(0, 0, accLen);
    if (beta !== 0) {
      copyBlock(c, cOffset + i0 * ldc + j0, ldc, tm, tn, v, 0, tnPad);
      if (beta !== 1) this.scale(0, accLen, beta);
    }
    for (let pc = 0; pc < k; pc += KC) {
      const kc = Math.min(KC, k - pc);
      if (args.transB) {
        // stored B rows j0…j1, columns pc…pc+kc
        copyBlock(b, bOffset + j0 * ldb + pc, ldb, tn, kc, v, stage, kc);
        this.packRows(this.packRowsB, v, bPack, stage, kc, tn, kc, nr, 1);
      } else {
        // stored B rows pc…pc+kc, columns j0…j1
        copyBlock(b, bOffset + pc * ldb + j0, ldb, kc, tn, v, stage, tn);
        this.packCols(this.packColsB, v, bPack, stage, tn, tn, kc, nr, 1);
      }
      for (let ic = 0; ic < tm; ic += MC) {
        const rows = Math.min(MC, tm - ic);
        if (args.transA) {
          copyBlock(a, aOffset + pc * lda + i0 + ic, lda, kc, rows, v, stage, rows);
          this.packCols(this.packColsA, v, aPack, stage, rows, rows, kc, mr, alphaT);
        } else {
          copyBlock(a, aOffset + (i0 + ic) * lda + pc, lda, rows, kc, v, stage, kc);
          this.packRows(this.packRowsA, v, aPack, stage, kc, rows, kc, mr, alphaT);
        }
        this.macro(aPack * es, bPack * es, ic * tnPad * es, roundUp(rows, mr) / mr, tnPad / nr, kc, tnPad * es);
      }
    }
    copyBlock(v, 0, tnPad, tm, tn, c, cOffset + i0 * ldc + j0, ldc);
  }

  /**
   * Staged rows (n of them, kc elements each, row stride ld) → panels [kc][r]: WASM does the
   * full panels up to the last whole vector of k; the loops here do the k tail and the
   * zero-padded last panel.
   */
  private packRows(kernel: PackKernel, v: FloatArray, dst: number, src: number, ld: number, n: number, kc: number, r: number, alpha: number): void {
    const full = Math.floor(n / r);
    const kcVec = kc - (kc % this.lanes);
    kernel(dst * this.es, src * this.es, ld * this.es, full, kc, kcVec, alpha);
    for (let q = 0; q < full; q++) {
      for (let p = kcVec; p < kc; p++) {
        for (let i = 0; i < r; i++) v[dst + (q * kc + p) * r + i] = alpha * v[src + (q * r + i) * ld + p];
      }
    }
    if (full * r < n) {
      const valid = n - full * r;
      const d = dst + full * kc * r;
      const s = src + full * r * ld;
      for (let p = 0; p < kc; p++) {
        for (let i = 0; i < r; i++) v[d + p * r + i] = i < valid ? alpha * v[s + i * ld + p] : 0;
      }
    }
  }

  /** Staged kc rows of n elements (row stride ld) → panels [kc][r] of r consecutive columns. */
  private packCols(kernel: PackKernel, v: FloatArray, dst: number, src: number, ld: number, n: number, kc: number, r: number, alpha: number): void {
    const full = Math.floor(n / r);
    kernel(dst * this.es, src * this.es, ld * this.es, full, kc, 0, alpha);
    if (full * r < n) {
      const valid = n - full * r;
      const d = dst + full * kc * r;
      const s = src + full * r;
      for (let p = 0; p < kc; p++) {
        for (let j = 0; j < r; j++) v[d + p * r + j] = j < valid ? alpha * v[s + p * ld + j] : 0;
      }
    }
  }
}

const engines: Partial<Record<KernelDType, OwnGemmEngine>> = {};

/** This thread's engine for `dtype`, compiled on first use. */
export function ownEngine(dtype: KernelDType): OwnGemmEngine {
  return (engines[dtype] ??= new OwnGemmEngine(dtype));
}
