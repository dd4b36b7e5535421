// The CUDA backend (DESIGN §6): the Backend interface on one GPU. Float tensors are BF16 in
// device memory (FP32 where an op says so: router scores and weights, or tensors uploaded with
// `uploadF32`), index tensors i32. Every op enqueues on the context's one stream; memory comes
// from the stream-ordered pool and returns to it in `free` — never through the garbage collector.

import type { Backend, GemmSpec, MatrixRef, MoePermutation, RouterConfig, RouterOutput } from '../backend.js';
import { numel, shapeString, type ComputeDType, type Tensor } from '../../tensor/tensor.js';
import { CudaContext } from './context.js';
import { CublasLtMatmul, type GemmDType } from './matmul.js';
import * as ops from './ops.js';
import type { FloatKind } from './ops.js';

const DTYPE_BYTES: Record<ComputeDType, number> = { bf16: 2, f32: 4, f64: 8, i32: 4 };

/** A tensor in device memory. Views (`rows`, `reshape`) share their parent's storage and own nothing. */
export class CudaTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: ComputeDType,
    /** Device address of element 0. */
    readonly ptr: number,
    /** Whether `free` returns this allocation to the pool. */
    readonly owned: boolean,
  ) {}
  freed = false;
  get numel(): number {
    return numel(this.shape);
  }
  get bytes(): number {
    return numel(this.shape) * DTYPE_BYTES[this.dtype];
  }
}

function dev(t: Tensor, what: string): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new Error(`${what}: not a CUDA tensor`);
  if (t.freed) throw new Error(`${what}: tensor ${shapeString(t.shape)} was freed`);
  return t;
}

function floatKind(t: CudaTensor, what: string): FloatKind {
  if (t.dtype === 'bf16' || t.dtype === 'f32') return t.dtype;
  throw new Error(`${what}: expected a bf16 or f32 tensor, got ${t.dtype}`);
}

function lastDim(t: Tensor): number {
  return t.shape[t.shape.length - 1] ?? 1;
}

function sameShape(a: Tensor, b: Tensor): boolean {
  return a.shape.length === b.shape.length && a.shape.every((s, i) => s === b.shape[i]);
}

/**
 * The Backend ops this class covers: memory, GEMMs, the forward ops of every layer (norms,
 * SwiGLU, column slices, head concatenation, embedding, RoPE and its inverse, attention, latent attention,
 * the KV cache, routing and expert permutation). The training-only ops of Backend (backward
 * passes, losses, the optimizer step) are not part of this class.
 */
export type CudaForwardOps = Omit<Backend, 'rmsNormBackwardInput' | 'rmsNormBackwardWeight' | 'swigluBackward' | 'embeddingBackward' | 'addToCols'
  | 'sumHeads' | 'attentionBackward' | 'moeUnpermuteBackward' | 'moePermuteBackward' | 'routerBackward' | 'sequenceBalanceLoss' | 'crossEntropy'
  | 'sumSquares' | 'scaleInPlace' | 'adamw'>;

export class CudaBackend implements CudaForwardOps {
  readonly name = 'cuda' as const;
  readonly floatDType = 'bf16' as const;
  readonly ctx: CudaContext;
  private readonly matmul: CublasLtMatmul;

  constructor(ctx: CudaContext = CudaContext.create(0)) {
    this.ctx = ctx;
    this.matmul = new CublasLtMatmul(ctx);
  }

  /** A fresh, uninitialised tensor. */
  empty(shape: readonly number[], dtype: ComputeDType = 'bf16'): CudaTensor {
    const n = numel(shape);
    return new CudaTensor([...shape], dtype, this.ctx.alloc(n * DTYPE_BYTES[dtype]), true);
  }

  // ---- memory -------------------------------------------------------------------------

  upload(data: Float32Array | Float64Array, shape: readonly number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`upload: ${data.length} values for shape ${shapeString(shape)}`);
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    const staging = this.ctx.upload(f32);
    const out = this.empty(shape, 'bf16');
    ops.castF32ToBf16(this.ctx, staging, out.ptr, f32.length);
    this.ctx.free(staging);
    return out;
  }

  /** Upload keeping FP32 (master weights, router bias, statistics). */
  uploadF32(data: Float32Array | Float64Array, shape: readonly number[]): CudaTensor {
    if (data.length !== numel(shape)) throw new Error(`uploadF32: ${data.length} values for shape ${shapeString(shape)}`);
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    const out = this.empty(shape, 'f32');
    this.ctx.copyToDevice(out.ptr, f32);
    return out;
  }

  uploadInt(data: Int32Array, shape: readonly number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`uploadInt: ${data.length} values for shape ${shapeString(shape)}`);
    const out = this.empty(shape, 'i32');
    this.ctx.copyToDevice(out.ptr, data);
    return out;
  }

  download(t: Tensor): Float32Array {
    const x = dev(t, 'download');
    const n = x.numel;
    const out = new Float32Array(n);
    if (x.dtype === 'f32') {
      this.ctx.copyToHost(out, x.ptr);
    } else if (x.dtype === 'bf16') {
      const staging = this.ctx.alloc(4 * n);
      ops.castBf16ToF32(this.ctx, x.ptr, staging, n);
      this.ctx.copyToHost(out, staging);
      this.ctx.free(staging);
    } else {
      throw new Error(`download: ${x.dtype} tensor (use downloadInt)`);
    }
    return out;
  }

  downloadInt(t: Tensor): Int32Array {
    const x = dev(t, 'downloadInt');
    if (x.dtype !== 'i32') throw new Error(`downloadInt: ${x.dtype} tensor`);
    const out = new Int32Array(x.numel);
    this.ctx.copyToHost(out, x.ptr);
    return out;
  }

  zeros(shape: readonly number[]): Tensor {
    const out = this.empty(shape, 'bf16');
    this.ctx.memset8(out.ptr, 0, out.bytes);
    return out;
  }

  rows(t: Tensor, start: number, count: number): Tensor {
    const x = dev(t, 'rows');
    const first = x.shape[0] ?? 0;
    if (start < 0 || count < 0 || start + count > first) throw new Error(`rows: [${start}, ${start + count}) of ${shapeString(x.shape)}`);
    const rowElems = numel(x.shape.slice(1));
    return new CudaTensor([count, ...x.shape.slice(1)], x.dtype, x.ptr + start * rowElems * DTYPE_BYTES[x.dtype], false);
  }

  reshape(t: Tensor, shape: readonly number[]): Tensor {
    const x = dev(t, 'reshape');
    if (numel(shape) !== x.numel) throw new Error(`reshape: ${shapeString(x.shape)} to ${shapeString(shape)}`);
    return new CudaTensor([...shape], x.dtype, x.ptr, false);
  }

  free(t: Tensor): void {
    if (!(t instanceof CudaTensor) || !t.owned || t.freed) return;
    t.freed = true;
    this.ctx.free(t.ptr);
  }

  /** Wait for every queued op. */
  synchronize(): void {
    this.ctx.synchronize();
  }

  // ---- linear algebra -----------------------------------------------------------------

  gemm(spec: GemmSpec): void {
    const a = dev(spec.a.tensor, 'gemm A'), b = dev(spec.b.tensor, 'gemm B'), c = dev(spec.c.tensor, 'gemm C');
    const abType = floatKind(a, 'gemm A') as GemmDType;
    if (b.dtype !== abType) throw new Error(`gemm: A is ${a.dtype} but B is ${b.dtype}`);
    const cType = floatKind(c, 'gemm C') as GemmDType;
    const batch = spec.batch ?? 1;
    const { m, n, k } = spec;
    const alpha = spec.alpha ?? 1, beta = spec.beta ?? 0;
    const ptr = (r: MatrixRef, t: CudaTensor): number => t.ptr + (r.offset ?? 0) * DTYPE_BYTES[t.dtype];
    this.checkExtent('gemm A', spec.a, a, spec.a.trans ? k : m, spec.a.trans ? m : k, batch);
    this.checkExtent('gemm B', spec.b, b, spec.b.trans ? n : k, spec.b.trans ? k : n, batch);
    this.checkExtent('gemm C', spec.c, c, m, n, batch);
    if (m === 0 || n === 0) return;
    if (k === 0) {
      // C = beta·C: cuBLASLt rejects an empty inner dimension.
      if (beta !== 1) this.scaleMatrices(c, spec.c, m, n, batch, beta);
      return;
    }
    this.matmul.run(
      { m, n, k, abType, cType, transA: !!spec.a.trans, transB: !!spec.b.trans, lda: spec.a.ld, ldb: spec.b.ld, ldc: spec.c.ld, batch,
        strideA: spec.a.batchStride ?? 0, strideB: spec.b.batchStride ?? 0, strideC: spec.c.batchStride ?? 0 },
      ptr(spec.a, a), ptr(spec.b, b), ptr(spec.c, c), alpha, beta,
    );
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
      if (r.ld === n) this.ctx.memset8(base, 0, m * n * bytes);
      else for (let i = 0; i < m; i++) this.ctx.memset8(base + i * r.ld * bytes, 0, n * bytes);
    }
  }

  linear(x: Tensor, w: Tensor): Tensor {
    const xt = dev(x, 'linear x'), wt = dev(w, 'linear w');
    const K = lastDim(xt);
    if (wt.shape.length !== 2 || wt.shape[1] !== K) throw new Error(`linear: x ${shapeString(xt.shape)} with w ${shapeString(wt.shape)}`);
    const N = wt.shape[0]!;
    const M = xt.numel / K;
    const y = this.empty([...xt.shape.slice(0, -1), N], 'bf16');
    this.gemm({ m: M, n: N, k: K, a: { tensor: xt, ld: K }, b: { tensor: wt, ld: K, trans: true }, c: { tensor: y, ld: N } });
    return y;
  }

  /** y = x · wᵀ with an FP32 output (router logits). */
  linearF32(x: Tensor, w: Tensor): CudaTensor {
    const xt = dev(x, 'linearF32 x'), wt = dev(w, 'linearF32 w');
    const K = lastDim(xt);
    if (wt.shape.length !== 2 || wt.shape[1] !== K) throw new Error(`linearF32: x ${shapeString(xt.shape)} with w ${shapeString(wt.shape)}`);
    const N = wt.shape[0]!;
    const M = xt.numel / K;
    const y = this.empty([...xt.shape.slice(0, -1), N], 'f32');
    this.gemm({ m: M, n: N, k: K, a: { tensor: xt, ld: K }, b: { tensor: wt, ld: K, trans: true }, c: { tensor: y, ld: N } });
    return y;
  }

  // ---- elementwise and normalisation --------------------------------------------------

  add(a: Tensor, b: Tensor): Tensor {
    const x = dev(a, 'add a'), y = dev(b, 'add b');
    if (!sameShape(x, y) || x.dtype !== y.dtype) throw new Error(`add: ${x.dtype}${shapeString(x.shape)} + ${y.dtype}${shapeString(y.shape)}`);
    const out = this.empty(x.shape, x.dtype);
    ops.add(this.ctx, floatKind(x, 'add'), x.ptr, y.ptr, out.ptr, x.numel);
    return out;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const x = dev(a, 'addInPlace a'), y = dev(b, 'addInPlace b');
    if (x.numel !== y.numel || x.dtype !== y.dtype) throw new Error(`addInPlace: ${x.dtype}${shapeString(x.shape)} += ${y.dtype}${shapeString(y.shape)}`);
    ops.addInPlace(this.ctx, floatKind(x, 'addInPlace'), x.ptr, y.ptr, alpha, x.numel);
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const xt = dev(x, 'rmsNorm x'), wt = dev(w, 'rmsNorm w');
    const d = lastDim(xt);
    if (wt.numel !== d || wt.dtype !== xt.dtype) throw new Error(`rmsNorm: x ${xt.dtype}${shapeString(xt.shape)} with w ${wt.dtype}${shapeString(wt.shape)}`);
    const out = this.empty(xt.shape, xt.dtype);
    ops.rmsNorm(this.ctx, floatKind(xt, 'rmsNorm'), xt.ptr, wt.ptr, out.ptr, xt.numel / d, d, eps);
    return out;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const g = dev(gate, 'swiglu gate'), u = dev(up, 'swiglu up');
    if (!sameShape(g, u) || g.dtype !== u.dtype) throw new Error(`swiglu: gate ${shapeString(g.shape)}, up ${shapeString(u.shape)}`);
    const out = this.empty(g.shape, g.dtype);
    ops.swiglu(this.ctx, floatKind(g, 'swiglu'), g.ptr, u.ptr, out.ptr, g.numel);
    return out;
  }

  sliceCols(x: Tensor, start: number, end: number): Tensor {
    const t = dev(x, 'sliceCols');
    if (t.shape.length !== 2) throw new Error(`sliceCols: ${shapeString(t.shape)} is not 2-D`);
    const [M, C] = t.shape as [number, number];
    if (start < 0 || end > C || start > end) throw new Error(`sliceCols: [${start}, ${end}) of ${C} columns`);
    const out = this.empty([M, end - start], t.dtype);
    const e = DTYPE_BYTES[t.dtype];
    ops.copy2d(this.ctx, e, t.ptr + start * e, C, 0, out.ptr, end - start, 0, M, end - start);
    return out;
  }

  concatHeads(a: Tensor, b: Tensor): Tensor {
    const x = dev(a, 'concatHeads a'), y = dev(b, 'concatHeads b');
    const [N, H, Ca] = x.shape as [number, number, number];
    const Hb = y.shape[1]!, Cb = y.shape[2]!;
    if (x.shape.length !== 3 || y.shape.length !== 3 || y.shape[0] !== N || (Hb !== H && Hb !== 1) || x.dtype !== y.dtype) {
      throw new Error(`concatHeads: ${x.dtype}${shapeString(x.shape)} and ${y.dtype}${shapeString(y.shape)}`);
    }
    const W = Ca + Cb;
    const out = this.empty([N, H, W], x.dtype);
    const e = DTYPE_BYTES[x.dtype];
    ops.copy2d(this.ctx, e, x.ptr, Ca, 0, out.ptr, W, 0, N * H, Ca);
    if (Hb === H) {
      ops.copy2d(this.ctx, e, y.ptr, Cb, 0, out.ptr + Ca * e, W, 0, N * H, Cb);
    } else {
      // One row of b per token, repeated for every head: row stride 0 inside a token's batch.
      for (let n0 = 0; n0 < N; n0 += 65535) {
        const count = Math.min(65535, N - n0);
        ops.copy2d(this.ctx, e, y.ptr + n0 * Cb * e, 0, Cb, out.ptr + (n0 * H * W + Ca) * e, W, H * W, H, Cb, count);
      }
    }
    return out;
  }

  // ---- embeddings and positions -------------------------------------------------------

  embedding(table: Tensor, ids: Tensor): Tensor {
    const t = dev(table, 'embedding table'), i = dev(ids, 'embedding ids');
    if (t.shape.length !== 2 || i.dtype !== 'i32') throw new Error(`embedding: table ${shapeString(t.shape)}, ids ${i.dtype}${shapeString(i.shape)}`);
    const [V, d] = t.shape as [number, number];
    const out = this.empty([...i.shape, d], t.dtype);
    ops.embedding(this.ctx, floatKind(t, 'embedding'), t.ptr, i.ptr, out.ptr, i.numel, d, V);
    return out;
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, colOffset: number, rot: number, inverse = false): Tensor {
    const xt = dev(x, 'rope x'), c = dev(cos, 'rope cos'), s = dev(sin, 'rope sin'), p = dev(positions, 'rope positions');
    if (xt.shape.length !== 3) throw new Error(`rope: x ${shapeString(xt.shape)} is not [N, H, W]`);
    const [N, H, W] = xt.shape as [number, number, number];
    const half = rot / 2;
    if (p.dtype !== 'i32' || p.numel !== N) throw new Error(`rope: ${p.numel} ${p.dtype} positions for ${N} rows`);
    if (c.dtype !== s.dtype || c.numel !== s.numel || lastDim(c) !== half) throw new Error(`rope: tables cos ${shapeString(c.shape)}, sin ${shapeString(s.shape)} for rot ${rot}`);
    const out = this.empty(xt.shape, xt.dtype);
    ops.rope(this.ctx, floatKind(xt, 'rope'), floatKind(c, 'rope tables'), xt.ptr, c.ptr, s.ptr, p.ptr, out.ptr, N, H, W, colOffset, rot, c.numel / half, inverse);
    return out;
  }

  // ---- attention ----------------------------------------------------------------------

  attention(q: Tensor, k: Tensor, v: Tensor, scale: number, qStart: number): Tensor {
    const qt = dev(q, 'attention q'), kt = dev(k, 'attention k'), vt = dev(v, 'attention v');
    const [B, Tq, H, Dk] = qt.shape as [number, number, number, number];
    const [, Tk, , Dv] = vt.shape as [number, number, number, number];
    if (qt.shape.length !== 4 || kt.shape.length !== 4 || vt.shape.length !== 4 || kt.shape[0] !== B || kt.shape[1] !== Tk || kt.shape[2] !== H
      || kt.shape[3] !== Dk || vt.shape[0] !== B || vt.shape[2] !== H || qt.dtype !== kt.dtype || qt.dtype !== vt.dtype) {
      throw new Error(`attention: q ${shapeString(qt.shape)}, k ${shapeString(kt.shape)}, v ${shapeString(vt.shape)}`);
    }
    const out = this.empty([B, Tq, H, Dv], qt.dtype);
    ops.attention(this.ctx, floatKind(qt, 'attention'), qt.ptr, 0, kt.ptr, 0, vt.ptr, out.ptr, { B, Tq, Tk, S: Tk, H, Hk: H, D1: Dk, D2: 0, Dv }, scale, qStart);
    return out;
  }

  mlaLatentAttention(qLat: Tensor, qPe: Tensor, ckv: Tensor, kpe: Tensor, scale: number, qStart: number, kvLen: number): Tensor {
    const ql = dev(qLat, 'mla qLat'), qp = dev(qPe, 'mla qPe'), c = dev(ckv, 'mla ckv'), kp = dev(kpe, 'mla kpe');
    const [B, Tq, H, C] = ql.shape as [number, number, number, number];
    const R = lastDim(qp);
    const S = c.shape[1]!;
    if (ql.shape.length !== 4 || qp.shape.length !== 4 || c.shape.length !== 3 || kp.shape.length !== 3 || qp.shape[0] !== B || qp.shape[1] !== Tq
      || qp.shape[2] !== H || c.shape[0] !== B || lastDim(c) !== C || kp.shape[0] !== B || kp.shape[1] !== S || lastDim(kp) !== R || kvLen > S
      || ql.dtype !== qp.dtype || ql.dtype !== c.dtype || ql.dtype !== kp.dtype) {
      throw new Error(`mlaLatentAttention: qLat ${shapeString(ql.shape)}, qPe ${shapeString(qp.shape)}, ckv ${shapeString(c.shape)}, kpe ${shapeString(kp.shape)}, kvLen ${kvLen}`);
    }
    const out = this.empty([B, Tq, H, C], ql.dtype);
    ops.attention(this.ctx, floatKind(ql, 'mlaLatentAttention'), ql.ptr, qp.ptr, c.ptr, kp.ptr, c.ptr, out.ptr,
      { B, Tq, Tk: kvLen, S, H, Hk: 1, D1: C, D2: R, Dv: C }, scale, qStart);
    return out;
  }

  writeCache(dst: Tensor, src: Tensor, start: number): void {
    const d = dev(dst, 'writeCache dst'), s = dev(src, 'writeCache src');
    const [B, S, C] = d.shape as [number, number, number];
    const T = s.shape[1]!;
    if (d.shape.length !== 3 || s.shape.length !== 3 || s.shape[0] !== B || lastDim(s) !== C || start < 0 || start + T > S || s.dtype !== d.dtype) {
      throw new Error(`writeCache: ${shapeString(s.shape)} at ${start} into ${shapeString(d.shape)}`);
    }
    const e = DTYPE_BYTES[d.dtype];
    ops.copy2d(this.ctx, e, s.ptr, C, T * C, d.ptr + start * C * e, C, S * C, T, C, B);
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
    ops.routerTopK(this.ctx, floatKind(l, 'routerTopK logits'), b ? floatKind(b, 'routerTopK bias') : 'f32', l.ptr, b ? b.ptr : 0,
      scores.ptr, indices.ptr, weights.ptr, N, E, cfg);
    return { scores, indices, weights };
  }

  moePermute(x: Tensor, indices: Tensor, numExperts: number): MoePermutation {
    const xt = dev(x, 'moePermute x'), it = dev(indices, 'moePermute indices');
    const [N, d] = xt.shape as [number, number];
    const K = lastDim(it);
    if (xt.shape.length !== 2 || it.dtype !== 'i32' || it.numel !== N * K) throw new Error(`moePermute: x ${shapeString(xt.shape)}, indices ${it.dtype}${shapeString(it.shape)}`);
    const p = ops.moePermute(this.ctx, floatKind(xt, 'moePermute'), xt.ptr, it.ptr, N, K, d, numExperts);
    return { rows: new CudaTensor([N * K, d], xt.dtype, p.rows, true), sourceSlot: new CudaTensor([N * K], 'i32', p.sourceSlot, true), counts: p.counts };
  }

  moeUnpermute(expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): Tensor {
    const y = dev(expertOut, 'moeUnpermute expertOut'), s = dev(sourceSlot, 'moeUnpermute sourceSlot'), w = dev(weights, 'moeUnpermute weights');
    const [N, K] = w.shape as [number, number];
    const d = lastDim(y);
    if (w.shape.length !== 2 || y.numel !== N * K * d || s.numel !== N * K || s.dtype !== 'i32') {
      throw new Error(`moeUnpermute: expertOut ${shapeString(y.shape)}, sourceSlot ${shapeString(s.shape)}, weights ${shapeString(w.shape)}`);
    }
    const out = this.empty([N, d], y.dtype);
    ops.moeUnpermute(this.ctx, floatKind(y, 'moeUnpermute'), floatKind(w, 'moeUnpermute weights'), y.ptr, s.ptr, w.ptr, out.ptr, N, K, d);
    return out;
  }

  /** Release the cuBLASLt plans and the context. */
  dispose(): void {
    this.ctx.synchronize();
    this.matmul.dispose();
    this.ctx.dispose();
  }
}
