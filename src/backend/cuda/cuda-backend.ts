// The CUDA backend (DESIGN §6): the Backend interface on one GPU. Every op enqueues on the
// context's one stream; memory comes from the stream-ordered pool and returns to it in `free`
// or `releaseAllocations` — never through the garbage collector.
//
// Dtypes. `floatDType` is the activation dtype, chosen at construction:
//   'f32'  every float tensor is FP32 and GEMMs run in FP32 (cuBLASLt COMPUTE_32F, no TF32): the
//          reference mode, checked against the CPU backend to ~1e-5.
//   'bf16' (default) op results — activations and activation gradients — are BF16, math inside
//          every kernel FP32. Tensors the caller creates and keeps — `upload` (parameters, which
//          are the FP32 master weights, and RoPE tables) and `zeros` (gradients, optimizer
//          moments, accumulation buffers) — are FP32, so gradients accumulate and AdamW updates in
//          FP32. (`storageDType: 'bf16'` makes them BF16 instead: inference, which keeps no
//          gradients or moments, at half the memory.)
// Exceptions to "results are in floatDType": routerTopK's scores and weights, the gating-weight
// gradient of moeUnpermuteBackward and the balance loss's dScores are FP32 in both modes.
// Every op accepts each float input in either dtype. Inputs that the kernels read in FP32
// directly — RMSNorm weights, embedding tables, RoPE tables, router logits, bias and gating
// weights — are passed as they are; any other input of the other dtype is converted first (a
// cast into a temporary freed after the op). `zeros(shape, 'activation')` makes a tensor in
// floatDType, for activation gradients that the model assembles in place, so that they need no
// conversion. GEMM operands are converted to floatDType; an FP32 upload used as a BF16 operand
// keeps a BF16 copy, which an op writing the tensor (copyFromHost, scaleInPlace, …) marks out of
// date and the next use refreshes — every out-of-date copy at once, in one launch — so a weight is
// cast once per write, not per GEMM, and its copy is allocated once. AdamW writes an up-to-date
// copy's new values itself, beside the weight's (optimizer.cu): an optimizer step needs no cast.
//
// Allocations. Every tensor the backend allocates gets an increasing serial number and stays in
// the live set until freed; `markAllocations` returns the last serial and `releaseAllocations(mark)`
// frees every live tensor with a larger one. Views (`rows`, `reshape`) are not allocations: they
// own nothing, and using one after its tensor was freed is an error. `free` of a view, or of a
// tensor already freed (by `free` or by `releaseAllocations`), does nothing, so code that frees
// its handles stays correct inside an allocation scope.

import { adamwManyCount, type AdamWHyper, type AdamWScalars, type Backend, type CapturedGraph, type GemmSpec, type MatrixRef, type MoeFixedCapacity, type MoePadding, type MoePermutation, type RouterConfig, type RouterOutput, type TensorKind } from '../backend.js';
import { numel, shapeString, type ComputeDType, type Tensor } from '../../tensor/tensor.js';
import { CudaContext } from './context.js';
import { BlockCache, cachingContext } from './block-cache.js';
import { CublasLtMatmul, type GemmDType, type RowMajorGemm } from './matmul.js';
import * as ops from './ops.js';
import { flashAttentionBackward, flashAttentionForward, mlaDecode } from './flash-attention.js';
import type { FloatKind } from './ops.js';

const DTYPE_BYTES: Record<ComputeDType, number> = { bf16: 2, f32: 4, f64: 8, i32: 4 };

/** One allocation holding the BF16 copies of several tensors back to back (groupedLinear's weights). */
interface CopySlab {
  ptr: number;
  /** Tensors whose copy lies in it: the slab is freed with the last one's copy. */
  refs: number;
}

/** A tensor in device memory. Views (`rows`, `reshape`) share their base tensor's storage and own nothing. */
export class CudaTensor implements Tensor {
  /** Serial number of the allocation (0 for views and untracked tensors). */
  serial = 0;
  freed = false;
  /** Keep a BF16 copy while used as a BF16 operand (FP32 uploads in BF16 mode). */
  cachesBf16 = false;
  /** Device address of that BF16 copy, or 0. */
  bf16Copy = 0;
  /** The tensor was written since its BF16 copy was made: the copy must be refreshed before use. */
  bf16Stale = false;
  /** The stacked copy that holds the BF16 copy (groupedLinear's weights), or null when it is its own allocation. */
  copySlab: CopySlab | null = null;

  constructor(
    readonly shape: readonly number[],
    readonly dtype: ComputeDType,
    /** Device address of element 0. */
    readonly ptr: number,
    /** Whether `free` returns this allocation to the pool. */
    readonly owned: boolean,
    /** For a view: the tensor whose storage it shares. */
    readonly base: CudaTensor | null = null,
  ) {}
  get numel(): number {
    return numel(this.shape);
  }
  get bytes(): number {
    return numel(this.shape) * DTYPE_BYTES[this.dtype];
  }
  /** The allocation this tensor's storage belongs to. */
  get root(): CudaTensor {
    return this.base ?? this;
  }
  /** Whether the storage was returned to the pool. */
  get released(): boolean {
    return this.freed || (this.base?.freed ?? false);
  }
}

/** What runs the GEMMs: cuBLASLt on the context by default. */
export interface GemmRunner {
  run(g: RowMajorGemm, a: number, b: number, c: number, alpha?: number, beta?: number): void;
  dispose(): void;
}

export interface CudaBackendOptions {
  /** Activation dtype (default 'bf16'); 'f32' runs everything in FP32. */
  dtype?: 'bf16' | 'f32';
  /** Dtype of tensors made by `upload` and `zeros` (default 'f32'); 'bf16' only with dtype 'bf16'. */
  storageDType?: 'bf16' | 'f32';
  /** GEMM runner (default: cuBLASLt on the context). */
  matmul?: GemmRunner;
  /**
   * Tensor-core flash attention and MLA decode kernels in BF16 mode (default true). The CPU
   * emulator of the kernels, which cannot run their PTX, turns them off and tests the plain ones.
   */
  flashAttention?: boolean;
  /** The padding MoE layers ask for (default DEFAULT_MOE_PADDING; null: packed rows, a GEMM per expert). */
  moePadding?: MoePadding | null;
}

/**
 * MoE layers on the GPU run their routed experts on padded blocks — the largest count rounded up
 * to 64 rows, for every expert — when that at most quadruples the rows: each GEMM launch costs the
 * host tens of microseconds while an expert's GEMM is a few microseconds of GPU work, so one
 * batched GEMM for all experts pays for the padding rows well before that. (At a ratio of 2, the
 * `small` preset's freshly initialised routers, whose busiest expert gets 2–2.5× the mean, sent
 * about 5 of 11 layers to a GEMM per expert: 1,400 more GEMM calls per training step, H200.)
 */
export const DEFAULT_MOE_PADDING: MoePadding = { blockRows: 64, maxRatio: 4 };

function dev(t: Tensor, what: string): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new Error(`${what}: not a CUDA tensor`);
  if (t.released) throw new Error(`${what}: tensor ${shapeString(t.shape)} was freed`);
  return t;
}

function floatKind(t: CudaTensor, what: string): FloatKind {
  if (t.dtype === 'bf16' || t.dtype === 'f32') return t.dtype;
  throw new Error(`${what}: expected a bf16 or f32 tensor, got ${t.dtype}`);
}

function int32(t: CudaTensor, what: string): CudaTensor {
  if (t.dtype !== 'i32') throw new Error(`${what}: expected an i32 tensor, got ${t.dtype}${shapeString(t.shape)}`);
  return t;
}

function lastDim(t: Tensor): number {
  return t.shape[t.shape.length - 1] ?? 1;
}

/** `t` as `n` FP32 numbers that an op reads or writes on the device (AdamW's scalars, accumulated losses). */
function f32Scalars(t: Tensor, n: number, what: string): CudaTensor {
  const x = dev(t, what);
  if (x.dtype !== 'f32' || x.numel !== n) throw new Error(`${what}: expected ${n} FP32 number(s), got ${x.dtype}${shapeString(x.shape)}`);
  return x;
}

/** `t` as one i32 on the device (AdamW's skip). */
function int32Scalar(t: Tensor, what: string): CudaTensor {
  const x = int32(dev(t, what), what);
  if (x.numel !== 1) throw new Error(`${what}: expected one i32, got ${shapeString(x.shape)}`);
  return x;
}

/** Indices of two tensors whose storage overlaps, or null. */
function overlapping(ts: readonly CudaTensor[]): [number, number] | null {
  const ranges = ts.map((t, i) => ({ start: t.ptr, end: t.ptr + t.bytes, i })).filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  for (let j = 1; j < ranges.length; j++) if (ranges[j]!.start < ranges[j - 1]!.end) return [ranges[j - 1]!.i, ranges[j]!.i];
  return null;
}

/**
 * Two of the tensors whose storage overlaps where at least one of the two is written (the other may
 * be read, like a gradient beside the params and moments), as their indices, or null. One sweep
 * in address order: a range overlaps an earlier-starting one exactly when it starts before the
 * furthest end seen so far.
 */
function writeOverlap(ts: readonly { t: CudaTensor; written: boolean }[]): [number, number] | null {
  const ranges = ts.map((e, i) => ({ start: e.t.ptr, end: e.t.ptr + e.t.bytes, written: e.written, i })).filter((r) => r.end > r.start)
    .sort((a, b) => a.start - b.start);
  let written: (typeof ranges)[number] | null = null, read: (typeof ranges)[number] | null = null;
  for (const r of ranges) {
    if (written && r.start < written.end) return [written.i, r.i];
    if (r.written && read && r.start < read.end) return [read.i, r.i];
    if (r.written) {
      if (!written || r.end > written.end) written = r;
    } else if (!read || r.end > read.end) {
      read = r;
    }
  }
  return null;
}

function sameShape(a: Tensor, b: Tensor): boolean {
  return a.shape.length === b.shape.length && a.shape.every((s, i) => s === b.shape[i]);
}

export class CudaBackend implements Backend {
  readonly name = 'cuda' as const;
  readonly floatDType: 'bf16' | 'f32';
  /** Dtype of `upload` and `zeros` results. */
  readonly storageDType: 'bf16' | 'f32';
  readonly moePadding: MoePadding | null;
  private readonly useFlash: boolean;
  readonly ctx: CudaContext;
  /** Freed device memory kept for reuse (block-cache.ts). */
  private readonly blocks: BlockCache;
  /** `ctx` allocating through `blocks`: what every op, launcher and temporary here uses. */
  private readonly gpu: CudaContext;
  private readonly matmul: GemmRunner;
  private lastSerial = 0;
  /** Live allocations by serial number, in allocation order. */
  private readonly live = new Map<number, CudaTensor>();
  /** Log-sum-exp rows [B, H, Tq] of each flash attention output, for its backward pass. */
  private readonly attentionLse = new WeakMap<CudaTensor, CudaTensor>();
  /** Tensors whose BF16 copy is out of date (bf16Stale), refreshed together at the next use of any. */
  private readonly staleCopies = new Set<CudaTensor>();
  /** The tensors (roots) that the ops of the capture in progress write: each replay writes them again. */
  private captureWrites: Set<CudaTensor> | null = null;
  /** While capturing: the tensors whose BF16 copy the captured work reads. */
  private captureCopies: Set<CudaTensor> | null = null;
  /**
   * Tensors whose BF16 copy a live graph reads, with those graphs: dropping such a copy (the
   * tensor freed, or its copy moved into a slab) leaves the graphs unable to replay.
   */
  private readonly copyReaders = new Map<CudaTensor, Set<{ valid: boolean }>>();
  /**
   * moeExpertsDirect's device tables of expert weight addresses, by the first gate weight: built
   * on first use (an upload, so never during graph capture), freed with that weight.
   */
  private readonly expertTables = new Map<CudaTensor, { weights: CudaTensor[]; ptr: number }>();
  /** [slotOrderLength] i32 holding 0, 1, 2, …: moeExpertsDirect's rows are already in slot order. */
  private slotOrder = 0;
  private slotOrderLength = 0;

  constructor(ctx: CudaContext = CudaContext.create(0), options: CudaBackendOptions = {}) {
    this.ctx = ctx;
    this.blocks = new BlockCache(ctx);
    this.gpu = cachingContext(ctx, this.blocks);
    this.floatDType = options.dtype ?? 'bf16';
    this.storageDType = options.storageDType ?? 'f32';
    this.useFlash = options.flashAttention ?? true;
    this.moePadding = options.moePadding === undefined ? DEFAULT_MOE_PADDING : options.moePadding;
    if (this.floatDType === 'f32' && this.storageDType !== 'f32') throw new Error('CudaBackend: BF16 storage needs the BF16 activation dtype');
    this.matmul = options.matmul ?? new CublasLtMatmul(ctx);
  }

  // ---- allocation bookkeeping -----------------------------------------------------------

  private track(t: CudaTensor): CudaTensor {
    t.serial = ++this.lastSerial;
    this.live.set(t.serial, t);
    return t;
  }

  /** A fresh, uninitialised tensor (tracked; the caller owns it). */
  empty(shape: readonly number[], dtype: ComputeDType = this.floatDType): CudaTensor {
    const n = numel(shape);
    return this.track(new CudaTensor([...shape], dtype, this.gpu.alloc(n * DTYPE_BYTES[dtype]), true));
  }

  /** A tracked tensor around device memory allocated elsewhere (ops.* results). */
  private adopt(shape: readonly number[], dtype: ComputeDType, ptr: number): CudaTensor {
    return this.track(new CudaTensor([...shape], dtype, ptr, true));
  }

  /** Live allocations: how many and their bytes (BF16 copies of uploads not counted). */
  liveAllocations(): { count: number; bytes: number } {
    let bytes = 0;
    for (const t of this.live.values()) bytes += t.bytes;
    return { count: this.live.size, bytes };
  }

  /** An op wrote into `t`: a BF16 copy of its storage is out of date. */
  private written(t: CudaTensor): void {
    const root = t.root;
    this.captureWrites?.add(root);
    if (root.bf16Copy !== 0 && !root.bf16Stale) {
      root.bf16Stale = true;
      this.staleCopies.add(root);
    }
  }

  /** Release the BF16 copy of `t` (freed or about to be). */
  private dropCopy(t: CudaTensor): void {
    if (t.bf16Copy === 0) return;
    for (const graph of this.copyReaders.get(t) ?? []) graph.valid = false;
    this.copyReaders.delete(t);
    const slab = t.copySlab;
    if (slab) {
      t.copySlab = null;
      if (--slab.refs === 0) this.gpu.free(slab.ptr);
    } else {
      this.gpu.free(t.bf16Copy);
    }
    t.bf16Copy = 0;
    if (t.bf16Stale) {
      t.bf16Stale = false;
      this.staleCopies.delete(t);
    }
  }

  /** Cast every out-of-date BF16 copy from its tensor again: one launch for all of them. */
  private refreshCopies(): void {
    const stale = [...this.staleCopies];
    this.staleCopies.clear();
    for (const t of stale) t.bf16Stale = false;
    if (stale.length === 1) ops.castF32ToBf16(this.gpu, stale[0]!.ptr, stale[0]!.bf16Copy, stale[0]!.numel);
    else ops.castF32ToBf16Many(this.gpu, stale.map((t) => ({ ptr: t.ptr, n: t.numel, extra: t.bf16Copy })));
  }

  /** Run `body` with a list of temporaries (device pointers) freed afterwards, stream-ordered. */
  private withTemps<R>(body: (temps: number[]) => R): R {
    const temps: number[] = [];
    try {
      return body(temps);
    } finally {
      for (const p of temps) this.gpu.free(p);
    }
  }

  /**
   * `t` in dtype `kind`: `t` itself, the BF16 copy of an FP32 upload (made now if missing,
   * refreshed now with every other out-of-date copy if stale; during graph capture only a copy
   * that exists and is fresh, which the graph then reads at every replay — see captureGraph), or a
   * converted temporary pushed on `temps`. The result is an untracked tensor of the same shape.
   */
  private as(t: CudaTensor, kind: FloatKind, temps: number[]): CudaTensor {
    if (floatKind(t, 'convert') === kind) return t;
    const n = t.numel;
    // under capture, only a copy that exists and is fresh: the graph then reads it at every replay
    const copyUsable = this.gpu.isCapturing ? t.bf16Copy !== 0 && !t.bf16Stale : true;
    if (kind === 'bf16' && t.cachesBf16 && t.owned && copyUsable) {
      this.captureCopies?.add(t);
      if (t.bf16Copy === 0) {
        t.bf16Copy = this.gpu.alloc(2 * n);
        ops.castF32ToBf16(this.gpu, t.ptr, t.bf16Copy, n);
      } else if (t.bf16Stale) {
        this.refreshCopies();
      }
      return new CudaTensor(t.shape, 'bf16', t.bf16Copy, false, t);
    }
    const ptr = this.gpu.alloc(ops.FLOAT_BYTES[kind] * n);
    temps.push(ptr);
    if (kind === 'bf16') ops.castF32ToBf16(this.gpu, t.ptr, ptr, n);
    else ops.castBf16ToF32(this.gpu, t.ptr, ptr, n);
    return new CudaTensor(t.shape, kind, ptr, false, t);
  }

  /**
   * The address of the BF16 copies of `ws` (FP32 uploads of one shape) stacked back to back in
   * one allocation — made on first use, refreshed when stale — so that one strided batched GEMM
   * reads every expert's weight; null where there are no such copies (FP32 mode, BF16 storage,
   * or under graph capture a slab not made or not fresh yet).
   */
  private stackedCopies(ws: CudaTensor[]): number | null {
    if (this.floatDType !== 'bf16' || ws.length === 0) return null;
    const n = ws[0]!.numel;
    if (!ws.every((w) => w.dtype === 'f32' && w.cachesBf16 && w.owned && w.numel === n) || new Set(ws).size !== ws.length) return null;
    const bytes = 2 * n;
    const slab = ws[0]!.copySlab;
    const stacked = slab !== null && ws.every((w, e) => w.copySlab === slab && w.bf16Copy === slab.ptr + e * bytes);
    if (this.gpu.isCapturing) {
      // a capture reads a slab that exists and is fresh (made by the eager runs before it), or none
      if (!stacked || ws.some((w) => w.bf16Stale)) return null;
      for (const w of ws) this.captureCopies?.add(w);
      return slab.ptr;
    }
    if (!stacked) {
      const fresh: CopySlab = { ptr: this.gpu.alloc(bytes * ws.length), refs: 0 };
      ws.forEach((w, e) => {
        this.dropCopy(w);
        w.bf16Copy = fresh.ptr + e * bytes;
        w.copySlab = fresh;
        fresh.refs++;
        w.bf16Stale = true;
        this.staleCopies.add(w);
      });
    }
    if (ws.some((w) => w.bf16Stale)) this.refreshCopies();
    return ws[0]!.bf16Copy;
  }

  /** `t` in the activation dtype. */
  private act(t: CudaTensor, temps: number[]): CudaTensor {
    return this.as(t, this.floatDType, temps);
  }

  // ---- memory -------------------------------------------------------------------------

  /** Copy host floats in, stored as `dtype` (default storageDType: FP32 master weights). */
  upload(data: Float32Array | Float64Array, shape: readonly number[], dtype: FloatKind = this.storageDType): CudaTensor {
    if (data.length !== numel(shape)) throw new Error(`upload: ${data.length} values for shape ${shapeString(shape)}`);
    const out = this.empty(shape, dtype);
    this.fill(out, data);
    out.cachesBf16 = dtype === 'f32' && this.floatDType === 'bf16';
    return out;
  }

  /** Upload keeping FP32 (statistics, router inputs in tests). */
  uploadF32(data: Float32Array | Float64Array, shape: readonly number[]): CudaTensor {
    return this.upload(data, shape, 'f32');
  }

  /** Write host values into a float tensor of the same element count. */
  private fill(t: CudaTensor, data: Float32Array | Float64Array): void {
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    if (t.dtype === 'f32') {
      this.gpu.copyToDevice(t.ptr, f32);
    } else {
      const staging = this.gpu.upload(f32);
      ops.castF32ToBf16(this.gpu, staging, t.ptr, f32.length);
      this.gpu.free(staging);
    }
  }

  uploadInt(data: Int32Array, shape: readonly number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`uploadInt: ${data.length} values for shape ${shapeString(shape)}`);
    const out = this.empty(shape, 'i32');
    this.gpu.copyToDevice(out.ptr, data);
    return out;
  }

  download(t: Tensor): Float32Array {
    const x = dev(t, 'download');
    const n = x.numel;
    const out = new Float32Array(n);
    if (x.dtype === 'f32') {
      this.gpu.copyToHost(out, x.ptr);
    } else if (x.dtype === 'bf16') {
      const staging = this.gpu.alloc(4 * n);
      ops.castBf16ToF32(this.gpu, x.ptr, staging, n);
      try {
        this.gpu.copyToHost(out, staging);
      } finally {
        this.gpu.free(staging);
      }
    } else {
      throw new Error(`download: ${x.dtype} tensor (use downloadInt)`);
    }
    return out;
  }

  downloadInt(t: Tensor): Int32Array {
    const x = int32(dev(t, 'downloadInt'), 'downloadInt');
    const out = new Int32Array(x.numel);
    this.gpu.copyToHost(out, x.ptr);
    return out;
  }

  /**
   * Zero-filled: 'state' (default) in storageDType (FP32 gradients, moments, accumulators),
   * 'activation' in floatDType (activation gradients assembled in place), or an explicit dtype.
   */
  zeros(shape: readonly number[], kind: TensorKind | FloatKind = 'state'): CudaTensor {
    const dtype = kind === 'state' ? this.storageDType : kind === 'activation' ? this.floatDType : kind;
    const out = this.empty(shape, dtype);
    this.gpu.memset8(out.ptr, 0, out.bytes);
    return out;
  }

  rows(t: Tensor, start: number, count: number): Tensor {
    const x = dev(t, 'rows');
    const first = x.shape[0] ?? 0;
    if (start < 0 || count < 0 || start + count > first) throw new Error(`rows: [${start}, ${start + count}) of ${shapeString(x.shape)}`);
    const rowElems = numel(x.shape.slice(1));
    return new CudaTensor([count, ...x.shape.slice(1)], x.dtype, x.ptr + start * rowElems * DTYPE_BYTES[x.dtype], false, x.root);
  }

  reshape(t: Tensor, shape: readonly number[]): Tensor {
    const x = dev(t, 'reshape');
    if (numel(shape) !== x.numel) throw new Error(`reshape: ${shapeString(x.shape)} to ${shapeString(shape)}`);
    return new CudaTensor([...shape], x.dtype, x.ptr, false, x.root);
  }

  free(t: Tensor): void {
    if (!(t instanceof CudaTensor) || !t.owned || t.freed) return;
    t.freed = true;
    this.live.delete(t.serial);
    this.dropCopy(t);
    const table = this.expertTables.get(t);
    if (table) {
      this.expertTables.delete(t);
      this.gpu.free(table.ptr);
    }
    this.gpu.free(t.ptr);
  }

  copyFromHostInt(dst: Tensor, data: Int32Array): void {
    const d = int32(dev(dst, 'copyFromHostInt'), 'copyFromHostInt');
    if (data.length !== d.numel) throw new Error(`copyFromHostInt: ${data.length} values into ${shapeString(d.shape)}`);
    this.gpu.copyToDevice(d.ptr, data);
  }

  copyFromHost(dst: Tensor, data: Float32Array | Float64Array): void {
    const d = dev(dst, 'copyFromHost');
    floatKind(d, 'copyFromHost');
    if (data.length !== d.numel) throw new Error(`copyFromHost: ${data.length} values into ${shapeString(d.shape)}`);
    this.fill(d, data);
    this.written(d);
  }

  markAllocations(): number {
    return this.lastSerial;
  }

  releaseAllocations(mark: number): void {
    // Deleting the current entry while iterating a Map is safe: iteration goes on with the next.
    for (const [serial, t] of this.live) if (serial > mark) this.free(t);
    // the end of a step: freed memory unused for a whole step goes back to the pool
    this.blocks.advance();
  }

  /** Freed device memory held for reuse, and how allocations were served (diagnostics). */
  cachedMemory(): { bytes: number; hits: number; misses: number; released: number } {
    return { bytes: this.blocks.cachedBytes, ...this.blocks.stats };
  }

  /** Return the freed memory held for reuse to the pool (stream-ordered), e.g. before measuring the pool. */
  releaseCachedMemory(): void {
    this.blocks.flush();
  }

  /** Wait for every queued op. */
  synchronize(): void {
    this.ctx.synchronize();
  }

  // ---- linear algebra -----------------------------------------------------------------

  /** A and B run in floatDType (converted when stored otherwise); C is written in its own dtype. */
  gemm(spec: GemmSpec): void {
    const a0 = dev(spec.a.tensor, 'gemm A'), b0 = dev(spec.b.tensor, 'gemm B'), c = dev(spec.c.tensor, 'gemm C');
    floatKind(a0, 'gemm A');
    floatKind(b0, 'gemm B');
    const cType = floatKind(c, 'gemm C') as GemmDType;
    const abType = this.floatDType as GemmDType;
    if (abType === 'f32' && cType === 'bf16') throw new Error('gemm: FP32 operands with a BF16 result are not supported (the FP32 backend makes FP32 tensors)');
    const batch = spec.batch ?? 1;
    const { m, n, k } = spec;
    const alpha = spec.alpha ?? 1, beta = spec.beta ?? 0;
    const ptr = (r: MatrixRef, t: CudaTensor): number => t.ptr + (r.offset ?? 0) * DTYPE_BYTES[t.dtype];
    this.checkExtent('gemm A', spec.a, a0, spec.a.trans ? k : m, spec.a.trans ? m : k, batch);
    this.checkExtent('gemm B', spec.b, b0, spec.b.trans ? n : k, spec.b.trans ? k : n, batch);
    this.checkExtent('gemm C', spec.c, c, m, n, batch);
    if (m === 0 || n === 0) return;
    this.written(c);
    if (k === 0) {
      // C = beta·C: cuBLASLt rejects an empty inner dimension.
      if (beta !== 1) this.scaleMatrices(c, spec.c, m, n, batch, beta);
      return;
    }
    this.withTemps((temps) => {
      const a = this.as(a0, abType, temps), b = this.as(b0, abType, temps);
      this.matmul.run(
        { m, n, k, abType, cType, transA: !!spec.a.trans, transB: !!spec.b.trans, lda: spec.a.ld, ldb: spec.b.ld, ldc: spec.c.ld, batch,
          strideA: spec.a.batchStride ?? 0, strideB: spec.b.batchStride ?? 0, strideC: spec.c.batchStride ?? 0 },
        ptr(spec.a, a), ptr(spec.b, b), ptr(spec.c, c), alpha, beta,
      );
    });
  }

  private checkExtent(what: string, r: MatrixRef, t: CudaTensor, rows: number, cols: number, batch: number): void {
    if (rows === 0 || cols === 0) return;
    if (r.ld < cols) throw new Error(`${what}: leading dimension ${r.ld} < ${cols} columns`);
    const last = (r.offset ?? 0) + (batch - 1) * (r.batchStride ?? 0) + (rows - 1) * r.ld + cols;
    if (last > t.numel) throw new Error(`${what}: a ${rows}×${cols} matrix (ld ${r.ld}, batch ${batch}) runs past a tensor of ${t.numel} elements`);
  }

  /** C[b] *= beta, through a zero-width GEMM's definition (beta = 0 clears). */
  private scaleMatrices(c: CudaTensor, r: MatrixRef, m: number, n: number, batch: number, beta: number): void {
    if (beta !== 0) throw new Error('gemm: k = 0 with beta other than 0 or 1 is not supported');
    const bytes = DTYPE_BYTES[c.dtype];
    for (let b = 0; b < batch; b++) {
      const base = c.ptr + ((r.offset ?? 0) + b * (r.batchStride ?? 0)) * bytes;
      if (r.ld === n) this.gpu.memset8(base, 0, m * n * bytes);
      else for (let i = 0; i < m; i++) this.gpu.memset8(base + i * r.ld * bytes, 0, n * bytes);
    }
  }

  linear(x: Tensor, w: Tensor): Tensor {
    return this.linearInto(x, w, this.floatDType, 'linear');
  }

  /** y = x · wᵀ with an FP32 output (router logits). */
  linearF32(x: Tensor, w: Tensor): CudaTensor {
    return this.linearInto(x, w, 'f32', 'linearF32');
  }

  private linearInto(x: Tensor, w: Tensor, outType: FloatKind, what: string): CudaTensor {
    const xt = dev(x, `${what} x`), wt = dev(w, `${what} w`);
    const K = lastDim(xt);
    if (wt.shape.length !== 2 || wt.shape[1] !== K) throw new Error(`${what}: x ${shapeString(xt.shape)} with w ${shapeString(wt.shape)}`);
    const N = wt.shape[0]!;
    const M = xt.numel / K;
    const y = this.empty([...xt.shape.slice(0, -1), N], outType);
    this.gemm({ m: M, n: N, k: K, a: { tensor: xt, ld: K }, b: { tensor: wt, ld: K, trans: true }, c: { tensor: y, ld: N } });
    return y;
  }

  // ---- elementwise and normalisation --------------------------------------------------

  add(a: Tensor, b: Tensor): Tensor {
    const x0 = dev(a, 'add a'), y0 = dev(b, 'add b');
    if (!sameShape(x0, y0)) throw new Error(`add: ${shapeString(x0.shape)} + ${shapeString(y0.shape)}`);
    const out = this.empty(x0.shape);
    this.withTemps((temps) => ops.add(this.gpu, this.floatDType, this.act(x0, temps).ptr, this.act(y0, temps).ptr, out.ptr, out.numel));
    return out;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const x = dev(a, 'addInPlace a'), y0 = dev(b, 'addInPlace b');
    if (x.numel !== y0.numel) throw new Error(`addInPlace: ${shapeString(x.shape)} += ${shapeString(y0.shape)}`);
    const kind = floatKind(x, 'addInPlace');
    this.written(x);
    this.withTemps((temps) => ops.addInPlace(this.gpu, kind, x.ptr, this.as(y0, kind, temps).ptr, alpha, x.numel));
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const x0 = dev(x, 'rmsNorm x'), w0 = dev(w, 'rmsNorm w');
    const d = lastDim(x0);
    if (w0.numel !== d) throw new Error(`rmsNorm: x ${shapeString(x0.shape)} with w ${shapeString(w0.shape)}`);
    const out = this.empty(x0.shape);
    const rows = out.numel / d;
    this.withTemps((temps) => {
      const xt = this.act(x0, temps);
      if (this.floatDType === 'bf16' && floatKind(w0, 'rmsNorm w') === 'f32') ops.rmsNormF32Weight(this.gpu, xt.ptr, w0.ptr, out.ptr, rows, d, eps);
      else ops.rmsNorm(this.gpu, this.floatDType, xt.ptr, this.act(w0, temps).ptr, out.ptr, rows, d, eps);
    });
    return out;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const g0 = dev(gate, 'swiglu gate'), u0 = dev(up, 'swiglu up');
    if (!sameShape(g0, u0)) throw new Error(`swiglu: gate ${shapeString(g0.shape)}, up ${shapeString(u0.shape)}`);
    const out = this.empty(g0.shape);
    this.withTemps((temps) => ops.swiglu(this.gpu, this.floatDType, this.act(g0, temps).ptr, this.act(u0, temps).ptr, out.ptr, out.numel));
    return out;
  }

  sliceCols(x: Tensor, start: number, end: number): Tensor {
    const t0 = dev(x, 'sliceCols');
    if (t0.shape.length !== 2) throw new Error(`sliceCols: ${shapeString(t0.shape)} is not 2-D`);
    const [M, C] = t0.shape as [number, number];
    if (start < 0 || end > C || start > end) throw new Error(`sliceCols: [${start}, ${end}) of ${C} columns`);
    const out = this.empty([M, end - start]);
    const e = DTYPE_BYTES[out.dtype];
    this.withTemps((temps) => ops.copy2d(this.gpu, e, this.act(t0, temps).ptr + start * e, C, 0, out.ptr, end - start, 0, M, end - start));
    return out;
  }

  concatHeads(a: Tensor, b: Tensor): Tensor {
    const x0 = dev(a, 'concatHeads a'), y0 = dev(b, 'concatHeads b');
    const [N, H, Ca] = x0.shape as [number, number, number];
    const Hb = y0.shape[1]!, Cb = y0.shape[2]!;
    if (x0.shape.length !== 3 || y0.shape.length !== 3 || y0.shape[0] !== N || (Hb !== H && Hb !== 1)) {
      throw new Error(`concatHeads: ${shapeString(x0.shape)} and ${shapeString(y0.shape)}`);
    }
    const W = Ca + Cb;
    const out = this.empty([N, H, W]);
    const e = DTYPE_BYTES[out.dtype];
    this.withTemps((temps) => {
      const x = this.act(x0, temps), y = this.act(y0, temps);
      ops.copy2d(this.gpu, e, x.ptr, Ca, 0, out.ptr, W, 0, N * H, Ca);
      if (Hb === H) {
        ops.copy2d(this.gpu, e, y.ptr, Cb, 0, out.ptr + Ca * e, W, 0, N * H, Cb);
      } else {
        // One row of b per token, repeated for every head: row stride 0 inside a token's batch.
        for (let n0 = 0; n0 < N; n0 += 65535) {
          const count = Math.min(65535, N - n0);
          ops.copy2d(this.gpu, e, y.ptr + n0 * Cb * e, 0, Cb, out.ptr + (n0 * H * W + Ca) * e, W, H * W, H, Cb, count);
        }
      }
    });
    return out;
  }

  // ---- embeddings and positions -------------------------------------------------------

  embedding(table: Tensor, ids: Tensor): Tensor {
    const t0 = dev(table, 'embedding table'), i = dev(ids, 'embedding ids');
    if (t0.shape.length !== 2 || i.dtype !== 'i32') throw new Error(`embedding: table ${shapeString(t0.shape)}, ids ${i.dtype}${shapeString(i.shape)}`);
    const [V, d] = t0.shape as [number, number];
    const out = this.empty([...i.shape, d]);
    if (this.floatDType === 'bf16' && floatKind(t0, 'embedding table') === 'f32') {
      ops.embeddingF32ToBf16(this.gpu, t0.ptr, i.ptr, out.ptr, i.numel, d, V);
    } else {
      this.withTemps((temps) => ops.embedding(this.gpu, this.floatDType, this.act(t0, temps).ptr, i.ptr, out.ptr, i.numel, d, V));
    }
    return out;
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, colOffset: number, rot: number, inverse = false): Tensor {
    const x0 = dev(x, 'rope x'), c0 = dev(cos, 'rope cos'), s0 = dev(sin, 'rope sin'), p = int32(dev(positions, 'rope positions'), 'rope positions');
    if (x0.shape.length !== 3) throw new Error(`rope: x ${shapeString(x0.shape)} is not [N, H, W]`);
    const [N, H, W] = x0.shape as [number, number, number];
    const half = rot / 2;
    if (p.numel !== N) throw new Error(`rope: ${p.numel} positions for ${N} rows`);
    if (c0.dtype !== s0.dtype || c0.numel !== s0.numel || lastDim(c0) !== half) throw new Error(`rope: tables cos ${shapeString(c0.shape)}, sin ${shapeString(s0.shape)} for rot ${rot}`);
    const out = this.empty(x0.shape);
    this.withTemps((temps) => {
      // BF16 activations read FP32 or BF16 tables; FP32 activations need FP32 tables.
      const tables: FloatKind = this.floatDType === 'f32' ? 'f32' : floatKind(c0, 'rope tables');
      const c = this.as(c0, tables, temps), s = this.as(s0, tables, temps);
      ops.rope(this.gpu, this.floatDType, tables, this.act(x0, temps).ptr, c.ptr, s.ptr, p.ptr, out.ptr, N, H, W, colOffset, rot, c.numel / half, inverse);
    });
    return out;
  }

  // ---- attention ----------------------------------------------------------------------

  attention(q: Tensor, k: Tensor, v: Tensor, scale: number, qStart: number): Tensor {
    const q0 = dev(q, 'attention q'), k0 = dev(k, 'attention k'), v0 = dev(v, 'attention v');
    const [B, Tq, H, Dk] = q0.shape as [number, number, number, number];
    const [, Tk, , Dv] = v0.shape as [number, number, number, number];
    if (q0.shape.length !== 4 || k0.shape.length !== 4 || v0.shape.length !== 4 || k0.shape[0] !== B || k0.shape[1] !== Tk || k0.shape[2] !== H
      || k0.shape[3] !== Dk || v0.shape[0] !== B || v0.shape[2] !== H) {
      throw new Error(`attention: q ${shapeString(q0.shape)}, k ${shapeString(k0.shape)}, v ${shapeString(v0.shape)}`);
    }
    const out = this.empty([B, Tq, H, Dv]);
    this.withTemps((temps) => {
      const qt = this.act(q0, temps), kt = this.act(k0, temps), vt = this.act(v0, temps);
      if (this.flashEligible(Dk, Dv, [qt, kt, vt, out])) {
        // the log-sum-exp rows let the backward pass skip recomputing the softmax statistics
        const lse = this.empty([B, H, Tq], 'f32');
        flashAttentionForward(this.gpu, { q: qt.ptr, k: kt.ptr, v: vt.ptr, out: out.ptr, lse: lse.ptr, B, Tq, Tk, H, Dk, Dv, scale, qStart });
        this.attentionLse.set(out, lse);
      } else {
        ops.attention(this.gpu, this.floatDType, qt.ptr, 0, kt.ptr, 0, vt.ptr, out.ptr, { B, Tq, Tk, S: Tk, H, Hk: H, D1: Dk, D2: 0, Dv }, scale, qStart);
      }
    });
    return out;
  }

  /**
   * The tensor-core flash kernels run in BF16 mode (operands are converted to BF16 first), for head
   * sizes that are multiples of 8 up to 256 and 16-byte aligned tensors.
   */
  private flashEligible(Dk: number, Dv: number, tensors: CudaTensor[]): boolean {
    return this.useFlash && this.floatDType === 'bf16' && Dk % 8 === 0 && Dv % 8 === 0 && Dk <= 256 && Dv <= 256 && tensors.every((t) => t.ptr % 16 === 0);
  }

  /**
   * Runs in the dtype of the cache (ckv), the other inputs converted to it; the result is converted
   * to floatDType. The kernels are sized for the cache's capacity S, not for the positions (which
   * only the device knows): blocks past a row's position find nothing to do.
   */
  mlaLatentAttention(qLat: Tensor, qPe: Tensor, ckv: Tensor, kpe: Tensor, scale: number, positions: Tensor): Tensor {
    const ql0 = dev(qLat, 'mla qLat'), qp0 = dev(qPe, 'mla qPe'), c = dev(ckv, 'mla ckv'), kp0 = dev(kpe, 'mla kpe');
    const p = int32(dev(positions, 'mla positions'), 'mla positions');
    const [B, Tq, H, C] = ql0.shape as [number, number, number, number];
    const R = lastDim(qp0);
    const S = c.shape[1]!;
    if (ql0.shape.length !== 4 || qp0.shape.length !== 4 || c.shape.length !== 3 || kp0.shape.length !== 3 || qp0.shape[0] !== B || qp0.shape[1] !== Tq
      || qp0.shape[2] !== H || c.shape[0] !== B || lastDim(c) !== C || kp0.shape[0] !== B || kp0.shape[1] !== S || lastDim(kp0) !== R || p.numel !== B * Tq) {
      throw new Error(`mlaLatentAttention: qLat ${shapeString(ql0.shape)}, qPe ${shapeString(qp0.shape)}, ckv ${shapeString(c.shape)}, kpe ${shapeString(kp0.shape)}, positions ${shapeString(p.shape)}`);
    }
    const kind = floatKind(c, 'mla ckv');
    const out = this.empty([B, Tq, H, C]);
    this.withTemps((temps) => {
      const ql = this.as(ql0, kind, temps), qp = this.as(qp0, kind, temps), kp = this.as(kp0, kind, temps);
      let res = out.ptr;
      if (kind !== out.dtype) {
        res = this.gpu.alloc(ops.FLOAT_BYTES[kind] * out.numel);
        temps.push(res);
      }
      if (this.useFlash && kind === 'bf16' && C % 16 === 0 && R % 8 === 0 && [ql, qp, c, kp].every((t) => t.ptr % 16 === 0) && res % 16 === 0) {
        mlaDecode(this.gpu, { qLat: ql.ptr, qPe: qp.ptr, ckv: c.ptr, kpe: kp.ptr, out: res, B, Tq, H, C, R, S, kvLen: S, positions: p.ptr, qStart: 0, scale });
      } else {
        ops.attention(this.gpu, kind, ql.ptr, qp.ptr, c.ptr, kp.ptr, c.ptr, res, { B, Tq, Tk: S, S, H, Hk: 1, D1: C, D2: R, Dv: C }, scale, 0, p.ptr);
      }
      if (res !== out.ptr) {
        if (kind === 'f32') ops.castF32ToBf16(this.gpu, res, out.ptr, out.numel);
        else ops.castBf16ToF32(this.gpu, res, out.ptr, out.numel);
      }
    });
    return out;
  }

  /** A position outside [0, S) leaves its row out (only the device knows the positions). */
  writeCache(dst: Tensor, src: Tensor, positions: Tensor): void {
    const d = dev(dst, 'writeCache dst'), s0 = dev(src, 'writeCache src'), p = int32(dev(positions, 'writeCache positions'), 'writeCache positions');
    const [B, S, C] = d.shape as [number, number, number];
    const T = s0.shape[1]!;
    if (d.shape.length !== 3 || s0.shape.length !== 3 || s0.shape[0] !== B || lastDim(s0) !== C || p.numel !== B * T) {
      throw new Error(`writeCache: src ${shapeString(s0.shape)}, positions ${shapeString(p.shape)} into ${shapeString(d.shape)}`);
    }
    const kind = floatKind(d, 'writeCache dst');
    this.written(d);
    this.withTemps((temps) => ops.cacheWrite(this.gpu, DTYPE_BYTES[d.dtype], this.as(s0, kind, temps).ptr, p.ptr, d.ptr, B, T, S, C));
  }

  // ---- mixture of experts -------------------------------------------------------------

  routerTopK(logits: Tensor, bias: Tensor | null, cfg: RouterConfig): RouterOutput {
    const l = dev(logits, 'routerTopK logits');
    const b = bias ? dev(bias, 'routerTopK bias') : null;
    const [N, E] = l.shape as [number, number];
    if (l.shape.length !== 2 || (b && b.numel !== E)) throw new Error(`routerTopK: logits ${shapeString(l.shape)}, bias ${b ? shapeString(b.shape) : 'none'}`);
    const scores = this.empty([N, E], 'f32');
    const indices = this.empty([N, cfg.topK], 'i32');
    const weights = this.empty([N, cfg.topK], 'f32');
    ops.routerTopK(this.gpu, floatKind(l, 'routerTopK logits'), b ? floatKind(b, 'routerTopK bias') : 'f32', l.ptr, b ? b.ptr : 0,
      scores.ptr, indices.ptr, weights.ptr, N, E, cfg);
    return { scores, indices, weights };
  }

  moePermute(x: Tensor, indices: Tensor, numExperts: number, padding?: MoePadding, fixed?: MoeFixedCapacity): MoePermutation {
    const x0 = dev(x, 'moePermute x'), it = int32(dev(indices, 'moePermute indices'), 'moePermute indices');
    const [N, d] = x0.shape as [number, number];
    const K = lastDim(it);
    if (x0.shape.length !== 2 || it.numel !== N * K) throw new Error(`moePermute: x ${shapeString(x0.shape)}, indices ${shapeString(it.shape)}`);
    let device: { capacity: number; stats: number } | undefined;
    if (fixed) {
      const s = int32(dev(fixed.stats, 'moePermute stats'), 'moePermute stats');
      if (s.numel !== 2) throw new Error(`moePermute: stats ${shapeString(s.shape)} (two i32)`);
      this.written(s);
      device = { capacity: fixed.capacity, stats: s.ptr };
    }
    const p = this.withTemps((temps) => ops.moePermute(this.gpu, this.floatDType, this.act(x0, temps).ptr, it.ptr, N, K, d, numExperts, padding, device));
    return { rows: this.adopt([p.nRows, d], this.floatDType, p.rows), sourceSlot: this.adopt([p.nRows], 'i32', p.sourceSlot), counts: p.counts, capacity: p.capacity };
  }

  expertLoadInto(indices: Tensor, numExperts: number, load: Tensor): void {
    const it = int32(dev(indices, 'expertLoadInto indices'), 'expertLoadInto indices'), l = dev(load, 'expertLoadInto load');
    if (l.dtype !== 'f32' || l.numel !== numExperts) throw new Error(`expertLoadInto: load ${l.dtype}${shapeString(l.shape)} for ${numExperts} experts (FP32)`);
    this.written(l);
    ops.expertLoadInto(this.gpu, it.ptr, it.numel, l.ptr, numExperts);
  }

  correctionBiasUpdate(bias: Tensor, load: Tensor, gamma: number): void {
    const b0 = dev(bias, 'correctionBiasUpdate bias'), l = dev(load, 'correctionBiasUpdate load');
    if (b0.dtype !== 'f32' || l.dtype !== 'f32' || b0.numel !== l.numel) {
      throw new Error(`correctionBiasUpdate: bias ${b0.dtype}${shapeString(b0.shape)}, load ${l.dtype}${shapeString(l.shape)} (FP32, one per expert)`);
    }
    this.written(b0);
    ops.correctionBiasUpdate(this.gpu, b0.ptr, l.ptr, b0.numel, gamma);
  }

  moeUnpermute(expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): Tensor {
    const y0 = dev(expertOut, 'moeUnpermute expertOut'), s = int32(dev(sourceSlot, 'moeUnpermute sourceSlot'), 'moeUnpermute sourceSlot');
    const w0 = dev(weights, 'moeUnpermute weights');
    const [N, K] = w0.shape as [number, number];
    const d = lastDim(y0);
    if (w0.shape.length !== 2 || y0.numel !== s.numel * d) {
      throw new Error(`moeUnpermute: expertOut ${shapeString(y0.shape)}, sourceSlot ${shapeString(s.shape)}, weights ${shapeString(w0.shape)}`);
    }
    const out = this.empty([N, d]);
    this.withTemps((temps) => {
      // BF16 rows take FP32 or BF16 weights; FP32 rows take FP32 weights.
      const w = this.floatDType === 'f32' ? this.as(w0, 'f32', temps) : w0;
      ops.moeUnpermute(this.gpu, this.floatDType, floatKind(w, 'moeUnpermute weights'), this.act(y0, temps).ptr, s.ptr, w.ptr, out.ptr, N, K, d, s.numel);
    });
    return out;
  }

  /**
   * Reads the expert weights as they are stored (BF16, or FP32 master weights, which BF16 mode
   * rounds to BF16 as it reads them: no copies to keep up to date); x in floatDType, the gating
   * weights FP32 or floatDType.
   */
  moeExpertsDirect(x: Tensor, indices: Tensor, weights: Tensor, gate: readonly Tensor[], up: readonly Tensor[], down: readonly Tensor[]): Tensor {
    const x0 = dev(x, 'moeExpertsDirect x'), it = int32(dev(indices, 'moeExpertsDirect indices'), 'moeExpertsDirect indices');
    const w0 = dev(weights, 'moeExpertsDirect weights');
    const g = this.groupWeights(gate, 'moeExpertsDirect gate'), u = this.groupWeights(up, 'moeExpertsDirect up'), dn = this.groupWeights(down, 'moeExpertsDirect down');
    const [N, d] = x0.shape as [number, number];
    const [, K] = w0.shape as [number, number];
    const E = g.ws.length, I = g.out;
    const wType = floatKind(g.ws[0]!, 'moeExpertsDirect weights');
    if (x0.shape.length !== 2 || w0.shape.length !== 2 || w0.shape[0] !== N || it.numel !== N * K || g.inp !== d || u.ws.length !== E || u.out !== I
      || u.inp !== d || dn.ws.length !== E || dn.out !== d || dn.inp !== I || ![g, u, dn].every((p) => p.ws.every((w) => w.dtype === wType))) {
      throw new Error(`moeExpertsDirect: x ${shapeString(x0.shape)}, indices ${shapeString(it.shape)}, weights ${shapeString(w0.shape)}, `
        + `${E} gate ${shapeString(g.ws[0]!.shape)}, ${u.ws.length} up ${shapeString(u.ws[0]!.shape)}, ${dn.ws.length} down ${shapeString(dn.ws[0]!.shape)} (one dtype)`);
    }
    if (this.floatDType === 'f32' && wType !== 'f32') throw new Error(`moeExpertsDirect: ${wType} expert weights in FP32 mode`);
    const table = this.expertTable([...g.ws, ...u.ws, ...dn.ws]);
    const slotOrder = this.slotOrderFor(N * K);
    const out = this.empty([N, d]);
    this.withTemps((temps) => {
      // BF16 rows take FP32 or BF16 gating weights; FP32 rows take FP32 ones.
      const wg = this.floatDType === 'f32' ? this.as(w0, 'f32', temps) : w0;
      ops.moeExpertsDirect(this.gpu, this.floatDType, wType, floatKind(wg, 'moeExpertsDirect weights'), this.act(x0, temps).ptr, it.ptr, wg.ptr,
        { gate: table, up: table + 8 * E, down: table + 16 * E }, slotOrder, out.ptr, N, K, E, d, I);
    });
    return out;
  }

  /** The device table of the addresses of `ws` (u64 each), made on first use and kept while its first tensor lives. */
  private expertTable(ws: CudaTensor[]): number {
    const cached = this.expertTables.get(ws[0]!);
    if (cached && cached.weights.length === ws.length && cached.weights.every((w, i) => w === ws[i])) return cached.ptr;
    if (this.gpu.isCapturing) throw new Error('moeExpertsDirect: the table of the experts\' weight addresses is uploaded on first use, which graph capture cannot record: run the captured work once before');
    if (cached) this.gpu.free(cached.ptr);
    const ptr = this.gpu.alloc(8 * ws.length);
    this.gpu.copyToDevice(ptr, BigUint64Array.from(ws, (w) => BigInt(w.ptr)));
    this.expertTables.set(ws[0]!, { weights: ws, ptr });
    return ptr;
  }

  /** The device array 0, 1, 2, … of at least `n` slots (grown outside graph capture only). */
  private slotOrderFor(n: number): number {
    if (n <= this.slotOrderLength) return this.slotOrder;
    if (this.gpu.isCapturing) throw new Error(`moeExpertsDirect: ${n} slots, more than any call before graph capture (${this.slotOrderLength}): run the captured work once before`);
    this.gpu.free(this.slotOrder);
    this.slotOrderLength = Math.max(n, 256);
    this.slotOrder = this.gpu.upload(Int32Array.from({ length: this.slotOrderLength }, (_, i) => i));
    return this.slotOrder;
  }

  /** The weights of a grouped Linear: E distinct tensors of one shape [out, in]. */
  private groupWeights(weights: readonly Tensor[], what: string): { ws: CudaTensor[]; out: number; inp: number } {
    const ws = weights.map((w) => dev(w, what));
    const shape = ws[0]?.shape ?? [];
    if (ws.length === 0 || shape.length !== 2 || !ws.every((w) => sameShape(w, ws[0]!))) {
      throw new Error(`${what}: ${ws.length} weights of shapes ${ws.map((w) => shapeString(w.shape)).join(', ')}`);
    }
    return { ws, out: shape[0]!, inp: shape[1]! };
  }

  /** Rows per expert of a tensor of `rows` rows split over E experts. */
  private static blockRows(what: string, rows: number, E: number): number {
    const C = rows / E;
    if (!Number.isInteger(C)) throw new Error(`${what}: ${rows} rows do not split into blocks for ${E} experts`);
    return C;
  }

  /** One strided batched GEMM over the experts' stacked BF16 weights; a GEMM per expert where there are none. */
  groupedLinear(x: Tensor, weights: readonly Tensor[]): Tensor {
    const x0 = dev(x, 'groupedLinear x');
    const { ws, out, inp } = this.groupWeights(weights, 'groupedLinear');
    const E = ws.length;
    if (x0.shape.length !== 2 || x0.shape[1] !== inp) throw new Error(`groupedLinear: x ${shapeString(x0.shape)} with weights ${shapeString(ws[0]!.shape)}`);
    const C = CudaBackend.blockRows('groupedLinear', x0.shape[0]!, E);
    const y = this.empty([E * C, out]);
    if (C === 0) return y;
    const stacked = this.stackedCopies(ws);
    if (stacked === null) {
      for (let e = 0; e < E; e++) {
        this.gemm({ m: C, n: out, k: inp, a: { tensor: x0, offset: e * C * inp, ld: inp }, b: { tensor: ws[e]!, ld: inp, trans: true }, c: { tensor: y, offset: e * C * out, ld: out } });
      }
      return y;
    }
    const t = this.floatDType as GemmDType;
    this.withTemps((temps) => {
      this.matmul.run({ m: C, n: out, k: inp, abType: t, cType: t, transA: false, transB: true, lda: inp, ldb: inp, ldc: out, batch: E,
        strideA: C * inp, strideB: out * inp, strideC: C * out }, this.act(x0, temps).ptr, stacked, y.ptr);
    });
    return y;
  }

  groupedLinearBackwardInput(dy: Tensor, weights: readonly Tensor[], into?: Tensor, accumulate = false): Tensor {
    const g0 = dev(dy, 'groupedLinearBackwardInput dy');
    const { ws, out, inp } = this.groupWeights(weights, 'groupedLinearBackwardInput');
    const E = ws.length;
    if (g0.shape.length !== 2 || g0.shape[1] !== out) throw new Error(`groupedLinearBackwardInput: dy ${shapeString(g0.shape)} with weights ${shapeString(ws[0]!.shape)}`);
    const C = CudaBackend.blockRows('groupedLinearBackwardInput', g0.shape[0]!, E);
    const dx = into ? dev(into, 'groupedLinearBackwardInput into') : this.empty([E * C, inp]);
    if (dx.numel !== E * C * inp || lastDim(dx) !== inp) throw new Error(`groupedLinearBackwardInput: into ${shapeString(dx.shape)} for ${E * C} rows of ${inp}`);
    if (C === 0) return dx;
    const beta = accumulate ? 1 : 0;
    const stacked = this.stackedCopies(ws);
    if (stacked === null) {
      for (let e = 0; e < E; e++) {
        this.gemm({ m: C, n: inp, k: out, beta, a: { tensor: g0, offset: e * C * out, ld: out }, b: { tensor: ws[e]!, ld: inp }, c: { tensor: dx, offset: e * C * inp, ld: inp } });
      }
      return dx;
    }
    const cType = floatKind(dx, 'groupedLinearBackwardInput into') as GemmDType;
    this.written(dx);
    this.withTemps((temps) => {
      this.matmul.run({ m: C, n: inp, k: out, abType: this.floatDType as GemmDType, cType, transA: false, transB: false, lda: out, ldb: inp, ldc: inp, batch: E,
        strideA: C * out, strideB: out * inp, strideC: C * inp }, this.act(g0, temps).ptr, stacked, dx.ptr, 1, beta);
    });
    return dx;
  }

  /**
   * One strided batched GEMM: straight into the gradients when they lie at a constant distance
   * from one another (as consecutive allocations from the pool often do), else into an FP32
   * scratch [E, out, in] followed by one multi-tensor add into the gradients; a GEMM per expert for
   * gradients that are not FP32.
   */
  groupedLinearBackwardWeight(x: Tensor, dy: Tensor, grads: readonly Tensor[]): void {
    const x0 = dev(x, 'groupedLinearBackwardWeight x'), g0 = dev(dy, 'groupedLinearBackwardWeight dy');
    const { ws: gs, out, inp } = this.groupWeights(grads, 'groupedLinearBackwardWeight');
    const E = gs.length;
    if (x0.shape.length !== 2 || g0.shape.length !== 2 || x0.shape[1] !== inp || g0.shape[1] !== out || x0.shape[0] !== g0.shape[0]) {
      throw new Error(`groupedLinearBackwardWeight: x ${shapeString(x0.shape)}, dy ${shapeString(g0.shape)}, gradients ${shapeString(gs[0]!.shape)}`);
    }
    const C = CudaBackend.blockRows('groupedLinearBackwardWeight', x0.shape[0]!, E);
    if (C === 0) return;
    for (const g of gs) this.written(g);
    if (!gs.every((g) => g.dtype === 'f32') || overlapping(gs)) {
      for (let e = 0; e < E; e++) {
        this.gemm({ m: out, n: inp, k: C, beta: 1, a: { tensor: g0, offset: e * C * out, ld: out, trans: true }, b: { tensor: x0, offset: e * C * inp, ld: inp }, c: { tensor: gs[e]!, ld: inp } });
      }
      return;
    }
    const gemm = (c: number, strideC: number, beta: number, temps: number[]) => this.matmul.run(
      { m: out, n: inp, k: C, abType: this.floatDType as GemmDType, cType: 'f32', transA: true, transB: false, lda: out, ldb: inp, ldc: inp, batch: E,
        strideA: C * out, strideB: C * inp, strideC }, this.act(g0, temps).ptr, this.act(x0, temps).ptr, c, 1, beta);
    const stride = E > 1 ? (gs[1]!.ptr - gs[0]!.ptr) / 4 : out * inp;
    // one batched GEMM straight into the gradients when they are evenly spaced views of one allocation
    // (MoE.allocateGradients); separate allocations that happen to be evenly spaced do not count
    const uniform = Number.isInteger(stride) && stride >= out * inp && gs.every((g, e) => g.root === gs[0]!.root && g.ptr === gs[0]!.ptr + 4 * e * stride);
    this.withTemps((temps) => {
      if (uniform) {
        gemm(gs[0]!.ptr, stride, 1, temps);
        return;
      }
      const scratch = this.gpu.alloc(4 * E * out * inp);
      temps.push(scratch);
      gemm(scratch, out * inp, 0, temps);
      ops.addMany(this.gpu, gs.map((g, e) => ({ ptr: g.ptr, n: out * inp, extra: scratch + 4 * e * out * inp })));
    });
  }

  // ---- backward passes ----------------------------------------------------------------

  rmsNormBackwardInput(x: Tensor, w: Tensor, dy: Tensor, eps: number): Tensor {
    const x0 = dev(x, 'rmsNormBackwardInput x'), w0 = dev(w, 'rmsNormBackwardInput w'), g0 = dev(dy, 'rmsNormBackwardInput dy');
    const d = lastDim(x0);
    if (!sameShape(x0, g0) || w0.numel !== d) throw new Error(`rmsNormBackwardInput: x ${shapeString(x0.shape)}, w ${shapeString(w0.shape)}, dy ${shapeString(g0.shape)}`);
    const out = this.empty(x0.shape);
    this.withTemps((temps) => {
      ops.rmsNormBackwardInput(this.gpu, this.floatDType, this.act(x0, temps).ptr, this.as(w0, 'f32', temps).ptr, this.act(g0, temps).ptr, out.ptr, out.numel / d, d, eps);
    });
    return out;
  }

  rmsNormBackwardWeight(x: Tensor, dy: Tensor, eps: number, dw: Tensor): void {
    const x0 = dev(x, 'rmsNormBackwardWeight x'), g0 = dev(dy, 'rmsNormBackwardWeight dy'), gw = dev(dw, 'rmsNormBackwardWeight dw');
    const d = lastDim(x0);
    if (!sameShape(x0, g0) || gw.numel !== d) throw new Error(`rmsNormBackwardWeight: x ${shapeString(x0.shape)}, dy ${shapeString(g0.shape)}, dw ${shapeString(gw.shape)}`);
    const dwType = floatKind(gw, 'rmsNormBackwardWeight dw');
    this.written(gw);
    this.withTemps((temps) => {
      ops.rmsNormBackwardWeight(this.gpu, this.floatDType, dwType, this.act(x0, temps).ptr, this.act(g0, temps).ptr, gw.ptr, x0.numel / d, d, eps);
    });
  }

  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor): { dGate: Tensor; dUp: Tensor } {
    const g0 = dev(gate, 'swigluBackward gate'), u0 = dev(up, 'swigluBackward up'), d0 = dev(dy, 'swigluBackward dy');
    if (!sameShape(g0, u0) || !sameShape(g0, d0)) throw new Error(`swigluBackward: gate ${shapeString(g0.shape)}, up ${shapeString(u0.shape)}, dy ${shapeString(d0.shape)}`);
    const dGate = this.empty(g0.shape), dUp = this.empty(g0.shape);
    this.withTemps((temps) => {
      ops.swigluBackward(this.gpu, this.floatDType, this.act(g0, temps).ptr, this.act(u0, temps).ptr, this.act(d0, temps).ptr, dGate.ptr, dUp.ptr, dGate.numel);
    });
    return { dGate, dUp };
  }

  /** dTable must be FP32 (gradients are; the kernel adds with FP32 atomics); dy may be either dtype. */
  embeddingBackward(ids: Tensor, dy: Tensor, dTable: Tensor): void {
    const i = int32(dev(ids, 'embeddingBackward ids'), 'embeddingBackward ids'), g = dev(dy, 'embeddingBackward dy'), t = dev(dTable, 'embeddingBackward dTable');
    const [V, d] = t.shape as [number, number];
    if (t.shape.length !== 2 || g.numel !== i.numel * d) throw new Error(`embeddingBackward: ids ${shapeString(i.shape)}, dy ${shapeString(g.shape)}, dTable ${shapeString(t.shape)}`);
    if (t.dtype !== 'f32') throw new Error(`embeddingBackward: the table gradient must be FP32, got ${t.dtype}`);
    this.written(t);
    ops.embeddingBackward(this.gpu, floatKind(g, 'embeddingBackward dy'), i.ptr, g.ptr, t.ptr, i.numel, d, V);
  }

  addToCols(dst: Tensor, src: Tensor, start: number): void {
    const d = dev(dst, 'addToCols dst'), s0 = dev(src, 'addToCols src');
    const C = lastDim(d), W = lastDim(s0);
    const M = d.numel / C;
    if (s0.numel / W !== M || start < 0 || start + W > C) throw new Error(`addToCols: ${shapeString(s0.shape)} at ${start} into ${shapeString(d.shape)}`);
    const kind = floatKind(d, 'addToCols dst');
    this.written(d);
    this.withTemps((temps) => ops.addToCols(this.gpu, kind, d.ptr, this.as(s0, kind, temps).ptr, M, C, W, start));
  }

  sumHeads(x: Tensor): Tensor {
    const x0 = dev(x, 'sumHeads');
    if (x0.shape.length !== 3) throw new Error(`sumHeads: ${shapeString(x0.shape)} is not [N, H, C]`);
    const [N, H, C] = x0.shape as [number, number, number];
    const out = this.empty([N, 1, C]);
    this.withTemps((temps) => ops.sumHeads(this.gpu, this.floatDType, this.act(x0, temps).ptr, out.ptr, N, H, C));
    return out;
  }

  attentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dOut: Tensor, scale: number, qStart: number): { dq: Tensor; dk: Tensor; dv: Tensor } {
    const q0 = dev(q, 'attentionBackward q'), k0 = dev(k, 'attentionBackward k'), v0 = dev(v, 'attentionBackward v');
    const o0 = dev(out, 'attentionBackward out'), g0 = dev(dOut, 'attentionBackward dOut');
    const [B, Tq, H, Dk] = q0.shape as [number, number, number, number];
    const [, Tk, , Dv] = v0.shape as [number, number, number, number];
    if (q0.shape.length !== 4 || k0.shape.length !== 4 || v0.shape.length !== 4 || k0.shape[0] !== B || k0.shape[1] !== Tk || k0.shape[2] !== H
      || k0.shape[3] !== Dk || v0.shape[0] !== B || v0.shape[2] !== H || !sameShape(o0, g0) || o0.numel !== B * Tq * H * Dv) {
      throw new Error(`attentionBackward: q ${shapeString(q0.shape)}, k ${shapeString(k0.shape)}, v ${shapeString(v0.shape)}, out ${shapeString(o0.shape)}, dOut ${shapeString(g0.shape)}`);
    }
    if (this.flashEligible(Dk, Dv, [q0, k0, v0, o0, g0])) {
      return this.attentionBackwardFlash(q0, k0, v0, o0, g0, { B, Tq, Tk, H, Dk, Dv }, scale, qStart);
    }
    return this.attentionBackwardSimple(q0, k0, v0, o0, g0, { B, Tq, Tk, H, Dk, Dv }, scale, qStart);
  }

  /** FlashAttention-2 backward with the forward's log-sum-exp (recomputed when it is gone). */
  private attentionBackwardFlash(q0: CudaTensor, k0: CudaTensor, v0: CudaTensor, o0: CudaTensor, g0: CudaTensor, s: ops.AttentionBackwardShape,
    scale: number, qStart: number): { dq: Tensor; dk: Tensor; dv: Tensor } {
    const { B, Tq, Tk, H, Dk, Dv } = s;
    const dq = this.empty(q0.shape), dk = this.empty(k0.shape), dv = this.empty(v0.shape);
    this.withTemps((temps) => {
      const qt = this.act(q0, temps), kt = this.act(k0, temps), vt = this.act(v0, temps), ot = this.act(o0, temps), gt = this.act(g0, temps);
      let lse = this.attentionLse.get(o0.root);
      if (!lse || lse.released) {
        lse = this.empty([B, H, Tq], 'f32');
        const scratch = this.empty(o0.shape, 'bf16');
        flashAttentionForward(this.gpu, { q: qt.ptr, k: kt.ptr, v: vt.ptr, out: scratch.ptr, lse: lse.ptr, B, Tq, Tk, H, Dk, Dv, scale, qStart });
        this.free(scratch);
      }
      flashAttentionBackward(this.gpu, { q: qt.ptr, k: kt.ptr, v: vt.ptr, out: ot.ptr, dOut: gt.ptr, lse: lse.ptr, dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, gradType: 'bf16', B, Tq, Tk, H, Dk, Dv, scale, qStart });
    });
    return { dq, dk, dv };
  }

  /** The plain kernel of attention-backward.cu: dq directly, dk and dv through FP32 atomics. */
  private attentionBackwardSimple(q0: CudaTensor, k0: CudaTensor, v0: CudaTensor, o0: CudaTensor, g0: CudaTensor, s: ops.AttentionBackwardShape,
    scale: number, qStart: number): { dq: Tensor; dk: Tensor; dv: Tensor } {
    const dq = this.empty(q0.shape);
    const dk32 = this.empty(k0.shape, 'f32'), dv32 = this.empty(v0.shape, 'f32');
    this.withTemps((temps) => {
      const qt = this.act(q0, temps), kt = this.act(k0, temps), vt = this.act(v0, temps), ot = this.act(o0, temps), gt = this.act(g0, temps);
      ops.attentionBackward(this.gpu, this.floatDType, qt.ptr, kt.ptr, vt.ptr, ot.ptr, gt.ptr, dq.ptr, dk32.ptr, dv32.ptr, s, scale, qStart);
    });
    if (this.floatDType === 'f32') return { dq, dk: dk32, dv: dv32 };
    const dk = this.empty(k0.shape), dv = this.empty(v0.shape);
    ops.castF32ToBf16(this.gpu, dk32.ptr, dk.ptr, dk.numel);
    ops.castF32ToBf16(this.gpu, dv32.ptr, dv.ptr, dv.numel);
    this.free(dk32);
    this.free(dv32);
    return { dq, dk, dv };
  }

  /** dExpertOut in floatDType; dWeights FP32 like the gating weights. */
  moeUnpermuteBackward(dy: Tensor, expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): { dExpertOut: Tensor; dWeights: Tensor } {
    const g0 = dev(dy, 'moeUnpermuteBackward dy'), y0 = dev(expertOut, 'moeUnpermuteBackward expertOut');
    const s = int32(dev(sourceSlot, 'moeUnpermuteBackward sourceSlot'), 'moeUnpermuteBackward sourceSlot'), w0 = dev(weights, 'moeUnpermuteBackward weights');
    const [N, K] = w0.shape as [number, number];
    const d = lastDim(y0);
    if (w0.shape.length !== 2 || y0.numel !== s.numel * d || g0.numel !== N * d) {
      throw new Error(`moeUnpermuteBackward: dy ${shapeString(g0.shape)}, expertOut ${shapeString(y0.shape)}, sourceSlot ${shapeString(s.shape)}, weights ${shapeString(w0.shape)}`);
    }
    const dExpertOut = this.empty(y0.shape), dWeights = this.empty([N, K], 'f32');
    this.withTemps((temps) => {
      ops.moeUnpermuteBackward(this.gpu, this.floatDType, this.act(g0, temps).ptr, this.act(y0, temps).ptr, s.ptr, this.as(w0, 'f32', temps).ptr,
        dExpertOut.ptr, dWeights.ptr, N, K, d, s.numel);
    });
    return { dExpertOut, dWeights };
  }

  moePermuteBackward(dRows: Tensor, sourceSlot: Tensor, numTokens: number, slots?: number): Tensor {
    const r0 = dev(dRows, 'moePermuteBackward dRows'), s = int32(dev(sourceSlot, 'moePermuteBackward sourceSlot'), 'moePermuteBackward sourceSlot');
    const d = lastDim(r0);
    const nk = slots ?? s.numel;
    const K = numTokens > 0 ? nk / numTokens : 0;
    if (!Number.isInteger(K) || r0.numel !== s.numel * d || (numTokens === 0 && nk !== 0)) {
      throw new Error(`moePermuteBackward: dRows ${shapeString(r0.shape)}, sourceSlot ${shapeString(s.shape)} for ${numTokens} tokens and ${nk} slots`);
    }
    const out = this.empty([numTokens, d]);
    this.withTemps((temps) => ops.moePermuteBackward(this.gpu, this.floatDType, this.act(r0, temps).ptr, s.ptr, out.ptr, numTokens, K, d, s.numel));
    return out;
  }

  routerBackward(logits: Tensor, route: RouterOutput, dWeights: Tensor, dScores: Tensor | null, cfg: RouterConfig): Tensor {
    const l = dev(logits, 'routerBackward logits'), sc0 = dev(route.scores, 'routerBackward scores');
    const idx = int32(dev(route.indices, 'routerBackward indices'), 'routerBackward indices'), dw0 = dev(dWeights, 'routerBackward dWeights');
    const ds0 = dScores ? dev(dScores, 'routerBackward dScores') : null;
    const [N, E] = l.shape as [number, number];
    const K = cfg.topK;
    if (l.shape.length !== 2 || sc0.numel !== N * E || idx.numel !== N * K || dw0.numel !== N * K || (ds0 && ds0.numel !== N * E)) {
      throw new Error(`routerBackward: logits ${shapeString(l.shape)}, scores ${shapeString(sc0.shape)}, indices ${shapeString(idx.shape)}, dWeights ${shapeString(dw0.shape)}`);
    }
    const out = this.empty([N, E]);
    this.withTemps((temps) => {
      const ds = ds0 ? this.as(ds0, 'f32', temps).ptr : 0;
      ops.routerBackward(this.gpu, this.floatDType, this.as(sc0, 'f32', temps).ptr, idx.ptr, this.as(dw0, 'f32', temps).ptr, ds, out.ptr, N, E, cfg);
    });
    return out;
  }

  /** dScores is FP32 like the scores; sum must be FP32. */
  sequenceBalanceLossInto(route: RouterOutput, batch: number, seq: number, alpha: number, sum: Tensor): Tensor {
    const sc0 = dev(route.scores, 'sequenceBalanceLoss scores'), idx = int32(dev(route.indices, 'sequenceBalanceLoss indices'), 'sequenceBalanceLoss indices');
    const [N, E] = sc0.shape as [number, number];
    const K = lastDim(idx);
    if (sc0.shape.length !== 2 || N !== batch * seq || idx.numel !== N * K) throw new Error(`sequenceBalanceLoss: ${N} tokens for ${batch}×${seq}`);
    const acc = f32Scalars(sum, 1, 'sequenceBalanceLossInto sum');
    const dScores = this.empty([N, E], 'f32');
    this.written(acc);
    this.withTemps((temps) => ops.sequenceBalanceLoss(this.gpu, this.as(sc0, 'f32', temps).ptr, idx.ptr, dScores.ptr, batch, seq, E, K, alpha, acc.ptr));
    return dScores;
  }

  // ---- losses and optimisation --------------------------------------------------------

  /** sums FP32 [2]. */
  crossEntropyInto(logits: Tensor, targets: Tensor, scale: number, sums: Tensor): Tensor {
    const l0 = dev(logits, 'crossEntropy logits'), t = int32(dev(targets, 'crossEntropy targets'), 'crossEntropy targets');
    if (l0.shape.length !== 2) throw new Error(`crossEntropy: logits ${shapeString(l0.shape)} are not [M, V]`);
    const [M, V] = l0.shape as [number, number];
    if (t.numel !== M) throw new Error(`crossEntropy: ${t.numel} targets for ${M} rows`);
    const acc = f32Scalars(sums, 2, 'crossEntropyInto sums');
    const dLogits = this.empty([M, V]);
    this.written(acc);
    this.withTemps((temps) => ops.crossEntropy(this.gpu, this.floatDType, this.act(l0, temps).ptr, t.ptr, dLogits.ptr, M, V, scale, acc.ptr));
    return dLogits;
  }

  sumSquares(x: Tensor): number {
    const t = dev(x, 'sumSquares');
    return ops.sumSquares(this.gpu, floatKind(t, 'sumSquares'), t.ptr, t.numel);
  }

  /** One multi-tensor reduction and one download for all of `xs` (either dtype each). */
  sumSquaresMany(xs: readonly Tensor[]): number {
    return ops.sumSquaresMany(this.gpu, this.multiTensorEntries(xs, 'sumSquaresMany'));
  }

  /** The reduction of sumSquaresMany, then one single-block kernel; out FP32 [2], skip i32 [1]. */
  gradNormClip(grads: readonly Tensor[], maxNorm: number, out: Tensor, skip: Tensor | null = null): void {
    const o = f32Scalars(out, 2, 'gradNormClip out'), sk = skip ? int32Scalar(skip, 'gradNormClip skip') : null;
    this.written(o);
    ops.gradNormClip(this.gpu, this.multiTensorEntries(grads, 'gradNormClip'), maxNorm, o.ptr, sk?.ptr ?? 0);
  }

  /** The tensors of a multi-tensor launch; extra marks BF16 storage. */
  private multiTensorEntries(xs: readonly Tensor[], what: string): ops.MultiTensorEntry[] {
    return xs.map((x) => {
      const t = dev(x, what);
      return { ptr: t.ptr, n: t.numel, extra: floatKind(t, what) === 'bf16' ? 1 : 0 };
    });
  }

  scaleInPlace(x: Tensor, alpha: number): void {
    const t = dev(x, 'scaleInPlace');
    const kind = floatKind(t, 'scaleInPlace');
    this.written(t);
    ops.scale(this.gpu, kind, t.ptr, alpha, t.numel);
  }

  /** One launch for all of `xs`, which must not overlap (each is scaled once). */
  scaleInPlaceMany(xs: readonly Tensor[], alpha: number): void {
    const entries = this.multiTensorEntries(xs, 'scaleInPlaceMany');
    const overlap = overlapping(xs as CudaTensor[]);
    if (overlap) throw new Error(`scaleInPlaceMany: tensors ${overlap[0]} and ${overlap[1]} overlap`);
    for (const x of xs) this.written(x as CudaTensor);
    ops.scaleMany(this.gpu, entries, alpha);
  }

  /** The dtype of AdamW's moments m and v (one for both): FP32, or BF16 where the step rounds them to BF16 anyway. */
  private adamwMoments(m: CudaTensor, v: CudaTensor, momentsBf16: boolean, what: string): FloatKind {
    const kind = floatKind(m, `${what} m`);
    if (v.dtype !== kind) throw new Error(`${what}: m is ${m.dtype} but v ${v.dtype}`);
    if (kind === 'bf16' && !momentsBf16) throw new Error(`${what}: BF16 moments need momentsBf16 (rounding to BF16)`);
    return kind;
  }

  /**
   * Where an AdamW kernel writes bf16(p) beside FP32 `p`: the address of p's elements in its root's
   * BF16 copy (0: none). An up-to-date copy stays so (no cast at its next use); otherwise p is
   * marked written as by any op (the next use refreshes a stale copy whole). During graph capture
   * p is marked written too, and the kernel must write no copy (a replay could write into a copy
   * freed since; replays mark p written again): adamwMany's table still names the copy, so that it
   * is the table of the eager call made before the capture.
   */
  private updatedCopy(p: CudaTensor): number {
    const root = p.root;
    if (root.bf16Copy === 0 || root.bf16Stale || this.gpu.isCapturing) this.written(p);
    return root.bf16Copy === 0 ? 0 : root.bf16Copy + (p.ptr - root.ptr) / 2; // BF16 elements take half the bytes of FP32 ones
  }

  /** The device addresses of an AdamW step's scalars: hyper [3] and gradScale [1] FP32, skip [1] i32. */
  private adamwScalars(s: AdamWScalars, what: string): ops.AdamWScalarPtrs {
    return {
      hyper: f32Scalars(s.hyper, 3, `${what} hyper`).ptr,
      gradScale: s.gradScale ? f32Scalars(s.gradScale, 1, `${what} gradScale`).ptr : 0,
      skip: s.skip ? int32Scalar(s.skip, `${what} skip`).ptr : 0,
    };
  }

  /** param must be FP32 (master weights), m and v FP32 or BF16 (see adamwMoments); a BF16 grad is converted. */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, h: AdamWHyper, weightDecay: number, scalars: AdamWScalars): void {
    const p = dev(param, 'adamw param'), g0 = dev(grad, 'adamw grad'), mt = dev(m, 'adamw m'), vt = dev(v, 'adamw v');
    if (!sameShape(p, g0) || !sameShape(p, mt) || !sameShape(p, vt)) {
      throw new Error(`adamw: param ${shapeString(p.shape)}, grad ${shapeString(g0.shape)}, m ${shapeString(mt.shape)}, v ${shapeString(vt.shape)}`);
    }
    if (p.dtype !== 'f32') throw new Error(`adamw: param must be FP32 (master weights), got ${p.dtype}`);
    const moments = this.adamwMoments(mt, vt, h.momentsBf16, 'adamw');
    if (!Number.isFinite(weightDecay)) throw new Error(`adamw: weight decay ${weightDecay}`);
    const s = this.adamwScalars(scalars, 'adamw');
    const copy = this.updatedCopy(p), writeCopy = !this.gpu.isCapturing;
    this.withTemps((temps) => ops.adamw(this.gpu, p.ptr, this.as(g0, 'f32', temps).ptr, mt.ptr, vt.ptr, moments, writeCopy ? copy : 0, p.numel, h, weightDecay, s));
  }

  /**
   * `adamw` on every tensor in one launch (adamw_many): param FP32 and moments FP32 or BF16 as
   * there; a BF16 gradient is read as it is (no conversion). The params and moments must not
   * overlap one another (each is written once) nor any gradient.
   */
  adamwMany(params: readonly Tensor[], grads: readonly Tensor[], ms: readonly Tensor[], vs: readonly Tensor[], h: AdamWHyper,
    weightDecays: readonly number[], scalars: AdamWScalars): void {
    const n = adamwManyCount(params, grads, ms, vs, weightDecays);
    const s = this.adamwScalars(scalars, 'adamwMany');
    const tensors: ops.AdamWTensor[] = [];
    const storage: { t: CudaTensor; written: boolean }[] = [];
    const ps: CudaTensor[] = [], moments: CudaTensor[] = [];
    const roles = ['param', 'm', 'v', 'grad'] as const;
    for (let i = 0; i < n; i++) {
      const p = dev(params[i]!, `adamwMany param ${i}`), g0 = dev(grads[i]!, `adamwMany grad ${i}`);
      const mt = dev(ms[i]!, `adamwMany m ${i}`), vt = dev(vs[i]!, `adamwMany v ${i}`);
      if (!sameShape(p, g0) || !sameShape(p, mt) || !sameShape(p, vt)) {
        throw new Error(`adamwMany: tensor ${i}: param ${shapeString(p.shape)}, grad ${shapeString(g0.shape)}, m ${shapeString(mt.shape)}, v ${shapeString(vt.shape)}`);
      }
      if (p.dtype !== 'f32') throw new Error(`adamwMany: tensor ${i}: param must be FP32 (master weights), got ${p.dtype}`);
      const momentType = this.adamwMoments(mt, vt, h.momentsBf16, `adamwMany: tensor ${i}`);
      const weightDecay = weightDecays[i]!;
      if (!Number.isFinite(weightDecay)) throw new Error(`adamwMany: tensor ${i}: weight decay ${weightDecay}`);
      tensors.push({ p: p.ptr, g: g0.ptr, gradType: floatKind(g0, `adamwMany grad ${i}`), m: mt.ptr, v: vt.ptr, momentType, copy: 0, n: p.numel, weightDecay });
      storage.push({ t: p, written: true }, { t: mt, written: true }, { t: vt, written: true }, { t: g0, written: false });
      ps.push(p);
      moments.push(mt, vt);
    }
    const overlap = writeOverlap(storage);
    if (overlap) {
      const [a, b] = overlap.map((k) => `${roles[k % 4]} ${Math.floor(k / 4)}`);
      throw new Error(`adamwMany: ${a} and ${b} overlap`);
    }
    for (const t of moments) this.written(t);
    ps.forEach((p, i) => (tensors[i]!.copy = this.updatedCopy(p)));
    ops.adamwMany(this.gpu, tensors, h, s, !this.gpu.isCapturing);
  }

  // ---- graphs -------------------------------------------------------------------------

  /**
   * A CUDA graph of the stream work `body` enqueues (CudaContext.capture). Memory it allocates comes
   * from the stream-ordered pool as graph allocations (the block cache stands aside); every tensor
   * it allocates must be freed inside it, or a second replay would find that memory taken. Inside,
   * BF16 copies of FP32 weights are made in temporaries rather than kept (as()), and an op that
   * would upload a table it has not made yet, or wait for the device, throws.
   */
  captureGraph(body: () => void): CapturedGraph {
    const mark = this.lastSerial;
    const checkedBody = () => {
      body();
      const left: CudaTensor[] = [];
      for (const [serial, t] of this.live) if (serial > mark) left.push(t);
      if (left.length > 0) {
        // the capture is abandoned: its allocations never come to exist
        for (const t of left) {
          t.freed = true;
          this.live.delete(t.serial);
        }
        throw new Error(`captureGraph: the captured work left ${left.length} tensor(s) allocated (${left.slice(0, 4).map((t) => shapeString(t.shape)).join(', ')}); it must free what it allocates`);
      }
    };
    const writes = new Set<CudaTensor>();
    const copies = new Set<CudaTensor>();
    this.captureWrites = writes;
    this.captureCopies = copies;
    let captured;
    try {
      // the multi-tensor tables that the body's launches read stay on the device while the graph lives
      captured = ops.keepTablesDuring(this.gpu, () => this.ctx.capture(checkedBody));
    } finally {
      this.captureWrites = null;
      this.captureCopies = null;
    }
    const { result: graph, release } = captured;
    const state = { valid: true };
    for (const t of copies) {
      const readers = this.copyReaders.get(t) ?? new Set();
      readers.add(state);
      this.copyReaders.set(t, readers);
    }
    let freed = false;
    return {
      replay: () => {
        if (freed) throw new Error('captureGraph: replay of a freed graph');
        if (!state.valid) throw new Error('captureGraph: a BF16 weight copy this graph reads was freed since the capture (capture again)');
        // copies written since (an optimizer step that did not refresh them) are cast again first
        for (const t of copies) {
          if (t.bf16Stale) {
            this.refreshCopies();
            break;
          }
        }
        graph.launch();
        for (const t of writes) this.written(t); // written again: their BF16 copies are stale again
      },
      free: () => {
        if (!freed) {
          graph.destroy();
          release();
          for (const t of copies) {
            const readers = this.copyReaders.get(t);
            readers?.delete(state);
            if (readers?.size === 0) this.copyReaders.delete(t);
          }
        }
        freed = true;
      },
    };
  }

  /** Free every live tensor and the cached memory, release the GEMM plans and the context. */
  dispose(): void {
    for (const t of [...this.live.values()]) this.free(t);
    for (const table of this.expertTables.values()) this.gpu.free(table.ptr);
    this.expertTables.clear();
    this.gpu.free(this.slotOrder);
    this.slotOrder = 0;
    this.slotOrderLength = 0;
    ops.releaseTables(this.gpu);
    this.blocks.flush();
    this.ctx.synchronize();
    this.matmul.dispose();
    this.ctx.dispose();
  }
}
