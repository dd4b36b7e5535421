// Our own GEMM on one thread: Goto/BLIS blocking around the WebAssembly micro-kernel.
//
//   for each KC-deep slice of k:                  pack op(B)[pc:pc+kc, tile cols] → NR-wide panels
//     for each MC-high block of the tile's rows:  pack op(A)[rows, pc:pc+kc]      → MR-high panels
//       macro-kernel: every MR×NR register tile of the block, C_tile += A_panel · B_panel
//
// The packed A block (MC×KC) stays in L2 while one packed B panel (KC×NR) sits in L1 and is
// reused across the whole block. Packing pads to MR/NR multiples with zeros, so the kernel
// has no edge cases; the tile is accumulated in a scratch C inside the instance's memory and
// written back once, with alpha and beta, at the end (beta = 0 never reads the old C).
//
// One engine per dtype per thread (the main thread and every pool worker own theirs).

import { buildKernelModule, type KernelDType, type MacroKernel } from './wasm-kernel.js';
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

export class OwnGemmEngine {
  readonly blocking: Blocking;
  private readonly memory = new WebAssembly.Memory({ initial: 1 });
  private readonly macro: MacroKernel;
  private readonly es: number;
  private view: FloatArray;

  constructor(readonly dtype: KernelDType) {
    this.blocking = BLOCKING[dtype];
    const module = new WebAssembly.Module(buildKernelModule({ dtype, mr: this.blocking.mr, nr: this.blocking.nr }));
    const instance = new WebAssembly.Instance(module, { env: { memory: this.memory } });
    this.macro = instance.exports.macro as MacroKernel;
    this.es = dtype === 'f32' ? 4 : 8;
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
    const { k } = args;
    const tm = i1 - i0;
    const tn = j1 - j0;
    const tmPad = roundUp(tm, mr);
    const tnPad = roundUp(tn, nr);
    const kcMax = Math.min(KC, k);
    const cLen = tmPad * tnPad;
    const bBase = cLen;
    const aBase = bBase + kcMax * tnPad;
    this.ensure(aBase + Math.min(MC, tmPad) * kcMax);
    const v = this.view;
    const es = this.es;
    v.fill(0, 0, cLen);
    for (let pc = 0; pc < k; pc += KC) {
      const kc = Math.min(KC, k - pc);
      packB(args, v, bBase, pc, kc, j0, tn, tnPad, nr);
      for (let ic = 0; ic < tm; ic += MC) {
        const mcRows = Math.min(MC, tm - ic);
        const mcPad = roundUp(mcRows, mr);
        packA(args, v, aBase, i0 + ic, mcRows, mcPad, pc, kc, mr);
        this.macro(aBase * es, bBase * es, ic * tnPad * es, mcPad / mr, tnPad / nr, kc, tnPad * es);
      }
    }
    writeBack(args, v, i0, tm, j0, tn, tnPad);
  }
}

/** Rows [i0, i0+rows) of op(A), columns [p0, p0+kc), into MR-high panels; pad rows are zero. */
function packA(args: AnyGemmArgs, v: FloatArray, d: number, i0: number, rows: number, rowsPad: number, p0: number, kc: number, mr: number): void {
  const { a, aOffset, lda } = args;
  if (!args.transA) {
    // A(i, p) = a[aOffset + i·lda + p]: read each row contiguously, write with stride MR.
    for (let ir = 0; ir < rowsPad; ir += mr) {
      for (let ii = 0; ii < mr; ii++) {
        let dst = d + ir * kc + ii;
        if (ir + ii < rows) {
          const src = aOffset + (i0 + ir + ii) * lda + p0;
          for (let p = 0; p < kc; p++, dst += mr) v[dst] = a[src + p];
        } else {
          for (let p = 0; p < kc; p++, dst += mr) v[dst] = 0;
        }
      }
    }
  } else {
    // A(i, p) = a[aOffset + p·lda + i]: MR consecutive elements of a stored row per k step.
    for (let ir = 0; ir < rowsPad; ir += mr) {
      const valid = Math.min(mr, rows - ir);
      let dst = d + ir * kc;
      let src = aOffset + p0 * lda + i0 + ir;
      for (let p = 0; p < kc; p++, dst += mr, src += lda) {
        let ii = 0;
        for (; ii < valid; ii++) v[dst + ii] = a[src + ii];
        for (; ii < mr; ii++) v[dst + ii] = 0;
      }
    }
  }
}

/** Rows [p0, p0+kc) of op(B), columns [j0, j0+cols), into NR-wide panels; pad columns are zero. */
function packB(args: AnyGemmArgs, v: FloatArray, d: number, p0: number, kc: number, j0: number, cols: number, colsPad: number, nr: number): void {
  const { b, bOffset, ldb } = args;
  if (!args.transB) {
    // B(p, j) = b[bOffset + p·ldb + j]: NR consecutive elements of a stored row per k step.
    for (let jr = 0; jr < colsPad; jr += nr) {
      const valid = Math.min(nr, cols - jr);
      let dst = d + jr * kc;
      let src = bOffset + p0 * ldb + j0 + jr;
      for (let p = 0; p < kc; p++, dst += nr, src += ldb) {
        let jj = 0;
        for (; jj < valid; jj++) v[dst + jj] = b[src + jj];
        for (; jj < nr; jj++) v[dst + jj] = 0;
      }
    }
  } else {
    // B(p, j) = b[bOffset + j·ldb + p]: read each stored row (a column of op(B)) contiguously.
    for (let jr = 0; jr < colsPad; jr += nr) {
      for (let jj = 0; jj < nr; jj++) {
        let dst = d + jr * kc + jj;
        if (jr + jj < cols) {
          const src = bOffset + (j0 + jr + jj) * ldb + p0;
          for (let p = 0; p < kc; p++, dst += nr) v[dst] = b[src + p];
        } else {
          for (let p = 0; p < kc; p++, dst += nr) v[dst] = 0;
        }
      }
    }
  }
}

function writeBack(args: AnyGemmArgs, v: FloatArray, i0: number, rows: number, j0: number, cols: number, ldv: number): void {
  const { c, cOffset, ldc, alpha, beta } = args;
  for (let i = 0; i < rows; i++) {
    const ci = cOffset + (i0 + i) * ldc + j0;
    const vi = i * ldv;
    if (beta === 0) {
      for (let j = 0; j < cols; j++) c[ci + j] = alpha * v[vi + j];
    } else if (beta === 1) {
      for (let j = 0; j < cols; j++) c[ci + j] += alpha * v[vi + j];
    } else {
      for (let j = 0; j < cols; j++) c[ci + j] = alpha * v[vi + j] + beta * c[ci + j];
    }
  }
}

const engines: Partial<Record<KernelDType, OwnGemmEngine>> = {};

/** This thread's engine for `dtype`, compiled on first use. */
export function ownEngine(dtype: KernelDType): OwnGemmEngine {
  return (engines[dtype] ??= new OwnGemmEngine(dtype));
}
