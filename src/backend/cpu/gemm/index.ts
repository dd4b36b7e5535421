// The CPU backend's GEMM, FP32 and FP64, synchronous, on every core.
//
// Two implementations behind one call:
//  - 'openblas': the system BLAS (libopenblas.so.0 first) through koffi, when it loads;
//  - 'own': our WebAssembly SIMD kernel (own.ts), tiles of C spread over a worker_threads pool
//    (pool.ts) with the calling thread taking its share.
// DSV3_BLAS=0 or DSV3_BLAS=own (read on every call) or setGemmImplementation('own') forces ours.

import { availableParallelism } from 'node:os';
import { blasGemm, loadBlas, type BlasLibrary } from './openblas.js';
import { BLOCKING, dtypeOf, ownEngine, planTiles } from './own.js';
import { GemmPool } from './pool.js';
import type { AnyGemmArgs, FloatArray, GemmArgs } from './types.js';

export type { AnyGemmArgs, FloatArray, GemmArgs } from './types.js';
export { gemmReference } from './reference.js';

export type GemmKind = 'openblas' | 'own';

/**
 * Multiply-adds (m·n·k) each thread of the own kernel must get before one more is used: waking
 * a worker and handing it the job costs ~15 µs, a 128³ share takes ~70 µs on one core. So
 * 128³ runs on the calling thread, 192³ on two, 256³ on up to eight.
 */
export const WORK_PER_THREAD = 128 * 128 * 128;

/** A typed array over a SharedArrayBuffer: the pool's workers read and write it in place. */
export function allocShared(ctor: Float32ArrayConstructor, length: number): Float32Array;
export function allocShared(ctor: Float64ArrayConstructor, length: number): Float64Array;
export function allocShared(ctor: Float32ArrayConstructor | Float64ArrayConstructor, length: number): Float32Array | Float64Array;
export function allocShared(ctor: Float32ArrayConstructor | Float64ArrayConstructor, length: number): Float32Array | Float64Array {
  const sab = new SharedArrayBuffer(length * ctor.BYTES_PER_ELEMENT);
  return ctor === Float32Array ? new Float32Array(sab) : new Float64Array(sab);
}

/** Read once: the call is a system call, and gemm asks on every call. */
const CORES = availableParallelism();

let forced: GemmKind | undefined;
let threadLimit: number | undefined;
let pool: GemmPool | undefined;
let blasThreadsApplied: number | undefined;

/** Force one implementation ('openblas' throws on use if no BLAS loads) or go back to 'auto'. */
export function setGemmImplementation(kind: GemmKind | 'auto'): void {
  forced = kind === 'auto' ? undefined : kind;
}

/** Use at most `n` threads (both implementations); undefined means every core. */
export function setGemmThreads(n: number | undefined): void {
  if (n !== undefined && !(Number.isInteger(n) && n >= 1)) throw new RangeError(`setGemmThreads: ${n} is not a positive integer`);
  threadLimit = n;
}

function ownThreads(): number {
  return Math.min(threadLimit ?? CORES, CORES);
}

/** The system BLAS, if one loads, with its thread count brought in line with setGemmThreads. */
function blas(): BlasLibrary | null {
  const lib = loadBlas();
  const want = threadLimit ?? CORES;
  if (lib !== null && blasThreadsApplied !== want) {
    lib.setThreads?.(want);
    blasThreadsApplied = want;
  }
  return lib;
}

function selectedKind(): GemmKind {
  if (forced === 'own') return 'own';
  if (forced === 'openblas') {
    if (blas() === null) throw new Error('gemm: the openblas implementation was forced but no BLAS with cblas_sgemm/cblas_dgemm loads (install libopenblas0)');
    return 'openblas';
  }
  const env = process.env.DSV3_BLAS;
  if (env === '0' || env === 'own') return 'own';
  return blas() === null ? 'own' : 'openblas';
}

/** What `gemm` would run now. */
export function gemmImplementation(): { kind: GemmKind; threads: number; detail: string } {
  const kind = selectedKind();
  if (kind === 'openblas') {
    const lib = blas()!;
    return { kind, threads: lib.getThreads?.() ?? 1, detail: lib.config ? `${lib.name} (${lib.config})` : lib.name };
  }
  const f32 = BLOCKING.f32;
  const f64 = BLOCKING.f64;
  return {
    kind,
    threads: ownThreads(),
    detail:
      `WebAssembly SIMD packed kernel, f32 ${f32.mr}×${f32.nr} / f64 ${f64.mr}×${f64.nr} register tiles, ` +
      `KC ${f32.kc}, worker_threads pool (calling thread + ${ownThreads() - 1} workers)`,
  };
}

/** Counters of the own implementation's pool (tests check that workers really take tiles). */
export function gemmThreadStats(): { jobs: number; tilesOnCaller: number; tilesOnWorkers: number; workers: number; workerError?: string } {
  if (pool === undefined) return { jobs: 0, tilesOnCaller: 0, tilesOnWorkers: 0, workers: 0 };
  const stats = { jobs: pool.jobs, tilesOnCaller: pool.callerTiles, tilesOnWorkers: pool.workerTiles, workers: pool.workerCount };
  return pool.workerError === undefined ? stats : { ...stats, workerError: pool.workerError };
}

/** C = alpha·op(A)·op(B) + beta·C, synchronously. See GemmArgs for the layout. */
export function gemm(args: GemmArgs<Float32Array> | GemmArgs<Float64Array>): void {
  checkArgs(args);
  if (args.m === 0 || args.n === 0) return;
  if (args.k === 0 || args.alpha === 0) {
    scaleC(args);
    return;
  }
  if (selectedKind() === 'openblas') {
    blasGemm(blas()!, args);
    return;
  }
  ownGemm(args);
}

function ownGemm(args: AnyGemmArgs): void {
  const { m, n, k } = args;
  const dtype = dtypeOf(args.a);
  const threads = Math.max(1, Math.min(ownThreads(), Math.floor((m * n * k) / WORK_PER_THREAD)));
  const plan = planTiles(m, n, dtype, threads);
  if (threads === 1 || plan.count === 1) {
    const engine = ownEngine(dtype);
    for (let t = 0; t < plan.count; t++) engine.runTask(args, plan, t);
    return;
  }
  pool ??= new GemmPool(CORES - 1);
  const shared = sharedArgs(args);
  pool.run(shared.args, plan, threads - 1);
  shared.copyBack();
}

// ---- arguments ----------------------------------------------------------------------------

/** Elements from the first to one past the last of a rows×cols matrix with row stride ld. */
const span = (rows: number, cols: number, ld: number) => (rows === 0 || cols === 0 ? 0 : (rows - 1) * ld + cols);

function checkArgs(args: AnyGemmArgs): void {
  const { m, n, k, a, b, c } = args;
  for (const [name, v] of [['m', m], ['n', n], ['k', k], ['aOffset', args.aOffset], ['bOffset', args.bOffset], ['cOffset', args.cOffset]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new RangeError(`gemm: ${name} = ${v} is not a non-negative integer`);
  }
  const f32 = a instanceof Float32Array;
  if (!(f32 || a instanceof Float64Array) || (f32 ? !(b instanceof Float32Array && c instanceof Float32Array) : !(b instanceof Float64Array && c instanceof Float64Array))) {
    throw new TypeError('gemm: a, b and c must all be Float32Array or all be Float64Array');
  }
  const check = (name: string, arr: FloatArray, offset: number, ld: number, rows: number, cols: number) => {
    if (!Number.isInteger(ld) || ld < Math.max(1, cols)) throw new RangeError(`gemm: ld${name} = ${ld} is less than the ${cols} columns of stored ${name.toUpperCase()}`);
    const end = offset + span(rows, cols, ld);
    if (end > arr.length) throw new RangeError(`gemm: stored ${name.toUpperCase()} [${rows}, ${cols}] with ld ${ld} at offset ${offset} needs ${end} elements, the array has ${arr.length}`);
  };
  check('a', a, args.aOffset, args.lda, args.transA ? k : m, args.transA ? m : k);
  check('b', b, args.bOffset, args.ldb, args.transB ? n : k, args.transB ? k : n);
  check('c', c, args.cOffset, args.ldc, m, n);
  const overlaps = (x: FloatArray, xOff: number, xLen: number) => {
    if (x.buffer !== c.buffer || xLen === 0) return false;
    const es = c.BYTES_PER_ELEMENT;
    const x0 = x.byteOffset + xOff * es;
    const c0 = c.byteOffset + args.cOffset * es;
    return x0 < c0 + span(m, n, args.ldc) * es && c0 < x0 + xLen * es;
  };
  if (m > 0 && n > 0 && k > 0) {
    if (overlaps(a, args.aOffset, args.transA ? span(k, m, args.lda) : span(m, k, args.lda))) throw new RangeError('gemm: C overlaps A');
    if (overlaps(b, args.bOffset, args.transB ? span(n, k, args.ldb) : span(k, n, args.ldb))) throw new RangeError('gemm: C overlaps B');
  }
}

/** C = beta·C (k = 0 or alpha = 0); beta = 0 writes zeros. */
function scaleC(args: AnyGemmArgs): void {
  const { c, cOffset, ldc, m, n, beta } = args;
  if (beta === 1) return;
  for (let i = 0; i < m; i++) {
    const row = cOffset + i * ldc;
    if (beta === 0) c.fill(0, row, row + n);
    else for (let j = row; j < row + n; j++) c[j] *= beta;
  }
}

// ---- shared scratch for arrays that workers cannot see ------------------------------------

/** Scratch up to this size is kept between calls; larger copies are dropped after use. */
const KEEP_SCRATCH_BYTES = 64 << 20;
let scratch: SharedArrayBuffer | undefined;

/**
 * The arguments with every array that is not SharedArrayBuffer-backed replaced by a copy of
 * the part the GEMM touches in shared scratch; `copyBack` returns C's part to the caller's C.
 */
function sharedArgs(args: AnyGemmArgs): { args: AnyGemmArgs; copyBack: () => void } {
  const { m, n, k } = args;
  const isShared = (x: FloatArray) => x.buffer instanceof SharedArrayBuffer;
  const aLen = args.transA ? span(k, m, args.lda) : span(m, k, args.lda);
  const bLen = args.transB ? span(n, k, args.ldb) : span(k, n, args.ldb);
  const cLen = span(m, n, args.ldc);
  const aCopy = !isShared(args.a);
  const bCopy = !isShared(args.b);
  const cCopy = !isShared(args.c);
  const es = args.a.BYTES_PER_ELEMENT;
  const bytes = ((aCopy ? aLen : 0) + (bCopy ? bLen : 0) + (cCopy ? cLen : 0)) * es;
  // A plain object with only the fields, so the job message clones nothing else.
  const out = {
    transA: args.transA, transB: args.transB, m, n, k, alpha: args.alpha, beta: args.beta,
    a: args.a, aOffset: args.aOffset, lda: args.lda,
    b: args.b, bOffset: args.bOffset, ldb: args.ldb,
    c: args.c, cOffset: args.cOffset, ldc: args.ldc,
  } as AnyGemmArgs;
  if (bytes === 0) return { args: out, copyBack: () => {} };

  let buf = scratch;
  if (buf === undefined || buf.byteLength < bytes) {
    buf = new SharedArrayBuffer(bytes);
    if (bytes <= KEEP_SCRATCH_BYTES) scratch = buf;
  }
  const view = (start: number, len: number): FloatArray =>
    args.a instanceof Float32Array ? new Float32Array(buf, start * es, len) : new Float64Array(buf, start * es, len);
  let at = 0;
  const copyIn = (src: FloatArray, offset: number, len: number): FloatArray => {
    const dst = view(at, len);
    at += len;
    dst.set(src.subarray(offset, offset + len));
    return dst;
  };
  if (aCopy) {
    out.a = copyIn(args.a, args.aOffset, aLen) as Float32Array;
    out.aOffset = 0;
  }
  if (bCopy) {
    out.b = copyIn(args.b, args.bOffset, bLen) as Float32Array;
    out.bOffset = 0;
  }
  if (!cCopy) return { args: out, copyBack: () => {} };
  const cShared = copyIn(args.c, args.cOffset, cLen);
  out.c = cShared as Float32Array;
  out.cOffset = 0;
  return { args: out, copyBack: () => args.c.set(cShared, args.cOffset) };
}
