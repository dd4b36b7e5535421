// The CPU backend (DESIGN §6): FP32 or FP64 everywhere, GEMMs on all cores through
// ./gemm (a system BLAS or our own kernel), the other ops as plain loops.

import { adamwManyCount, moeCapacity, type AdamWHyper, type AdamWScalars, type Backend, type CapturedGraph, type GemmSpec, type MoeFixedCapacity, type MoePadding, type MoePermutation, type RouterConfig, type RouterOutput, type TensorKind } from '../backend.js';
import { numel, shapeString, type Tensor } from '../../tensor/tensor.js';
import { causalAttention, latentAttentionAt } from './attention.js';
import { CpuTensor, allocFloat, floats, ints, type FloatArray } from './cpu-tensor.js';
import { gemm } from './gemm/index.js';
import { routeTokens } from './router.js';
import * as train from './training-ops.js';

function sameShape(a: Tensor, b: Tensor, op: string): void {
  if (a.shape.length !== b.shape.length || a.shape.some((s, i) => s !== b.shape[i])) {
    throw new Error(`${op}: shapes differ: ${shapeString(a.shape)} vs ${shapeString(b.shape)}`);
  }
}

function lastDim(t: Tensor): number {
  return t.shape[t.shape.length - 1];
}

/** The `n` floats of `t`, a tensor that an op reads or writes as numbers (AdamW's scalars, accumulated losses). */
function scalars(t: Tensor, n: number, what: string): FloatArray {
  const x = floats(t);
  if (x.length !== n) throw new Error(`${what}: expected ${n} number(s), got ${shapeString(t.shape)}`);
  return x;
}

/** The one i32 of `t` (AdamW's skip). */
function intScalar(t: Tensor, what: string): Int32Array {
  const x = ints(t);
  if (x.length !== 1) throw new Error(`${what}: expected one i32, got ${shapeString(t.shape)}`);
  return x;
}

/** The numbers of AdamW's scalars, or null when its skip is set (the step then changes nothing). */
function adamwStep(s: AdamWScalars): train.AdamWStep | null {
  if (s.skip && intScalar(s.skip, 'adamw skip')[0] !== 0) return null;
  const [lr, c1, c2] = scalars(s.hyper, 3, 'adamw hyper');
  return { lr, c1, c2, gradScale: s.gradScale ? scalars(s.gradScale, 1, 'adamw gradScale')[0] : 1 };
}

/** The largest of `positions` after checking that each lies in a cache of `S` positions. */
function cachePositionsCheck(op: string, positions: Int32Array, S: number): number {
  let last = -1;
  for (const p of positions) {
    if (!(p >= 0 && p < S)) throw new Error(`${op}: position ${p} outside a cache of ${S} positions`);
    last = Math.max(last, p);
  }
  return last;
}

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  /** Padding rows would only add work here: MoE layers run on packed rows unless told otherwise. */
  readonly moePadding = null;

  constructor(readonly floatDType: 'f32' | 'f64' = 'f32') {}

  private newFloat(shape: readonly number[]): CpuTensor {
    return new CpuTensor([...shape], this.floatDType, allocFloat(this.floatDType, numel(shape)));
  }

  // ---- memory -------------------------------------------------------------------------

  upload(data: Float32Array | Float64Array, shape: readonly number[]): Tensor {
    const t = this.newFloat(shape);
    if (data.length !== t.data.length) throw new Error(`upload: ${data.length} values for shape ${shapeString(shape)}`);
    t.data.set(data);
    return t;
  }

  uploadInt(data: Int32Array, shape: readonly number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`uploadInt: ${data.length} values for shape ${shapeString(shape)}`);
    return new CpuTensor([...shape], 'i32', Int32Array.from(data));
  }

  download(t: Tensor): Float32Array | Float64Array {
    return floats(t).slice();
  }

  downloadInt(t: Tensor): Int32Array {
    return ints(t).slice();
  }

  /** One dtype for every float tensor here, whatever the kind (or dtype) asked for. */
  zeros(shape: readonly number[], _kind: TensorKind | 'bf16' | 'f32' = 'state'): Tensor {
    return this.newFloat(shape);
  }

  rows(t: Tensor, start: number, count: number): Tensor {
    const cpu = t as CpuTensor;
    const rowSize = numel(t.shape.slice(1));
    if (start < 0 || count < 0 || start + count > t.shape[0]) throw new Error(`rows: [${start}, ${start + count}) outside ${shapeString(t.shape)}`);
    return new CpuTensor([count, ...t.shape.slice(1)], t.dtype, cpu.data.subarray(start * rowSize, (start + count) * rowSize));
  }

  reshape(t: Tensor, shape: readonly number[]): Tensor {
    if (numel(shape) !== numel(t.shape)) throw new Error(`reshape: ${shapeString(t.shape)} to ${shapeString(shape)}`);
    return new CpuTensor([...shape], t.dtype, (t as CpuTensor).data);
  }

  free(_t: Tensor): void {
    // The garbage collector owns host memory.
  }

  copyFromHost(dst: Tensor, data: Float32Array | Float64Array): void {
    const d = floats(dst);
    if (d.length !== data.length) throw new Error(`copyFromHost: ${data.length} values into ${shapeString(dst.shape)}`);
    d.set(data);
  }

  copyFromHostInt(dst: Tensor, data: Int32Array): void {
    const d = ints(dst);
    if (d.length !== data.length) throw new Error(`copyFromHostInt: ${data.length} values into ${shapeString(dst.shape)}`);
    d.set(data);
  }

  markAllocations(): number {
    return 0;
  }

  releaseAllocations(_mark: number): void {
    // host tensors are collected once unreachable
  }

  // ---- linear algebra -----------------------------------------------------------------

  gemm(spec: GemmSpec): void {
    const a = floats(spec.a.tensor);
    const b = floats(spec.b.tensor);
    const c = floats(spec.c.tensor);
    for (let i = 0; i < (spec.batch ?? 1); i++) {
      gemm({
        transA: spec.a.trans ?? false, transB: spec.b.trans ?? false,
        m: spec.m, n: spec.n, k: spec.k, alpha: spec.alpha ?? 1, beta: spec.beta ?? 0,
        a, aOffset: (spec.a.offset ?? 0) + i * (spec.a.batchStride ?? 0), lda: spec.a.ld,
        b, bOffset: (spec.b.offset ?? 0) + i * (spec.b.batchStride ?? 0), ldb: spec.b.ld,
        c, cOffset: (spec.c.offset ?? 0) + i * (spec.c.batchStride ?? 0), ldc: spec.c.ld,
      } as Parameters<typeof gemm>[0]);
    }
  }

  linear(x: Tensor, w: Tensor): Tensor {
    const K = lastDim(x);
    const [N, Kw] = w.shape;
    if (w.shape.length !== 2 || Kw !== K) throw new Error(`linear: input ${shapeString(x.shape)} does not match weight ${shapeString(w.shape)}`);
    const M = numel(x.shape) / K;
    const y = this.newFloat([...x.shape.slice(0, -1), N]);
    this.gemm({ m: M, n: N, k: K, a: { tensor: x, ld: K }, b: { tensor: w, ld: K, trans: true }, c: { tensor: y, ld: N } });
    return y;
  }

  // ---- elementwise and normalisation --------------------------------------------------

  add(a: Tensor, b: Tensor): Tensor {
    sameShape(a, b, 'add');
    const x = floats(a), y = floats(b);
    const out = this.newFloat(a.shape);
    const o = out.data as FloatArray;
    for (let i = 0; i < o.length; i++) o[i] = x[i] + y[i];
    return out;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    sameShape(a, b, 'addInPlace');
    const x = floats(a), y = floats(b);
    for (let i = 0; i < x.length; i++) x[i] += alpha * y[i];
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const d = lastDim(x);
    if (w.shape.length !== 1 || w.shape[0] !== d) throw new Error(`rmsNorm: weight ${shapeString(w.shape)} for input ${shapeString(x.shape)}`);
    const xs = floats(x), ws = floats(w);
    const out = this.newFloat(x.shape);
    const o = out.data as FloatArray;
    for (let r = 0; r < xs.length / d; r++) {
      const base = r * d;
      let sumSq = 0;
      for (let i = 0; i < d; i++) sumSq += xs[base + i] * xs[base + i];
      const inv = 1 / Math.sqrt(sumSq / d + eps);
      for (let i = 0; i < d; i++) o[base + i] = ws[i] * (xs[base + i] * inv);
    }
    return out;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    sameShape(gate, up, 'swiglu');
    const g = floats(gate), u = floats(up);
    const out = this.newFloat(gate.shape);
    const o = out.data as FloatArray;
    for (let i = 0; i < o.length; i++) o[i] = (g[i] / (1 + Math.exp(-g[i]))) * u[i];
    return out;
  }

  sliceCols(x: Tensor, start: number, end: number): Tensor {
    const C = lastDim(x);
    if (start < 0 || end > C || start > end) throw new Error(`sliceCols: [${start}, ${end}) outside ${shapeString(x.shape)}`);
    const M = numel(x.shape) / C, W = end - start;
    const xs = floats(x);
    const out = this.newFloat([...x.shape.slice(0, -1), W]);
    const o = out.data as FloatArray;
    for (let r = 0; r < M; r++) o.set(xs.subarray(r * C + start, r * C + end), r * W);
    return out;
  }

  concatHeads(a: Tensor, b: Tensor): Tensor {
    const [N, H, Ca] = a.shape;
    const [Nb, Hb, Cb] = b.shape;
    if (a.shape.length !== 3 || b.shape.length !== 3 || Nb !== N || (Hb !== H && Hb !== 1)) {
      throw new Error(`concatHeads: ${shapeString(a.shape)} and ${shapeString(b.shape)}`);
    }
    const xa = floats(a), xb = floats(b);
    const out = this.newFloat([N, H, Ca + Cb]);
    const o = out.data as FloatArray;
    for (let n = 0; n < N; n++) {
      for (let h = 0; h < H; h++) {
        const row = n * H + h;
        const brow = n * Hb + (Hb === 1 ? 0 : h);
        o.set(xa.subarray(row * Ca, (row + 1) * Ca), row * (Ca + Cb));
        o.set(xb.subarray(brow * Cb, (brow + 1) * Cb), row * (Ca + Cb) + Ca);
      }
    }
    return out;
  }

  // ---- embeddings and positions -------------------------------------------------------

  embedding(table: Tensor, ids: Tensor): Tensor {
    const [V, d] = table.shape;
    const t = floats(table), idx = ints(ids);
    const out = this.newFloat([...ids.shape, d]);
    const o = out.data as FloatArray;
    for (let n = 0; n < idx.length; n++) {
      const id = idx[n];
      if (id < 0 || id >= V) throw new Error(`embedding: token id ${id} outside the vocabulary of ${V}`);
      o.set(t.subarray(id * d, (id + 1) * d), n * d);
    }
    return out;
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, colOffset: number, rot: number, inverse = false): Tensor {
    const [N, H, W] = x.shape;
    const half = rot / 2;
    const xs = floats(x), c = floats(cos), s = floats(sin), pos = ints(positions);
    if (pos.length !== N) throw new Error(`rope: ${pos.length} positions for ${N} rows`);
    const out = this.newFloat(x.shape);
    const o = out.data as FloatArray;
    o.set(xs);
    for (let n = 0; n < N; n++) {
      const p = pos[n];
      if (p < 0 || p * half >= c.length) throw new Error(`rope: position ${p} beyond the table of ${c.length / half}`);
      for (let h = 0; h < H; h++) {
        const base = (n * H + h) * W + colOffset;
        for (let i = 0; i < half; i++) {
          const x0 = xs[base + 2 * i], x1 = xs[base + 2 * i + 1];
          const ci = c[p * half + i], si = inverse ? -s[p * half + i] : s[p * half + i];
          o[base + 2 * i] = x0 * ci - x1 * si;
          o[base + 2 * i + 1] = x1 * ci + x0 * si;
        }
      }
    }
    return out;
  }

  // ---- attention ----------------------------------------------------------------------

  attention(q: Tensor, k: Tensor, v: Tensor, scale: number, qStart: number): Tensor {
    const [B, Tq, H, Dk] = q.shape;
    const [, Tk, , Dv] = v.shape;
    if (k.shape[0] !== B || k.shape[1] !== Tk || k.shape[2] !== H || k.shape[3] !== Dk || v.shape[2] !== H) {
      throw new Error(`attention: q ${shapeString(q.shape)}, k ${shapeString(k.shape)}, v ${shapeString(v.shape)}`);
    }
    const out = this.newFloat([B, Tq, H, Dv]);
    const scratch = allocFloat(this.floatDType, Tq * Tk);
    causalAttention(floats(q), floats(k), floats(v), out.data as FloatArray, scratch, { B, Tq, Tk, H, Dk, Dv }, scale, qStart);
    return out;
  }

  mlaLatentAttention(qLat: Tensor, qPe: Tensor, ckv: Tensor, kpe: Tensor, scale: number, positions: Tensor): Tensor {
    const [B, Tq, H, C] = qLat.shape;
    const R = lastDim(qPe);
    const S = ckv.shape[1];
    const pos = ints(positions);
    if (kpe.shape[1] !== S || lastDim(ckv) !== C || lastDim(kpe) !== R || pos.length !== B * Tq) {
      throw new Error(`mlaLatentAttention: qLat ${shapeString(qLat.shape)}, qPe ${shapeString(qPe.shape)}, ckv ${shapeString(ckv.shape)}, kpe ${shapeString(kpe.shape)}, positions ${shapeString(positions.shape)}`);
    }
    const last = cachePositionsCheck('mlaLatentAttention', pos, S);
    const out = this.newFloat([B, Tq, H, C]);
    const scratch = allocFloat(this.floatDType, Tq * H * (last + 1));
    latentAttentionAt(floats(qLat), floats(qPe), floats(ckv), floats(kpe), out.data as FloatArray, scratch, { B, Tq, H, C, R, S }, scale, pos);
    return out;
  }

  writeCache(dst: Tensor, src: Tensor, positions: Tensor): void {
    const [B, S, C] = dst.shape;
    const T = src.shape[1];
    const pos = ints(positions);
    if (src.shape[0] !== B || lastDim(src) !== C || pos.length !== B * T) {
      throw new Error(`writeCache: src ${shapeString(src.shape)}, positions ${shapeString(positions.shape)} into ${shapeString(dst.shape)}`);
    }
    cachePositionsCheck('writeCache', pos, S);
    const d = floats(dst), s = floats(src);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) d.set(s.subarray((b * T + t) * C, (b * T + t + 1) * C), (b * S + pos[b * T + t]) * C);
    }
  }

  // ---- mixture of experts -------------------------------------------------------------

  routerTopK(logits: Tensor, bias: Tensor | null, cfg: RouterConfig): RouterOutput {
    const [N, E] = logits.shape;
    const scores = this.newFloat([N, E]);
    const indices = new CpuTensor([N, cfg.topK], 'i32', new Int32Array(N * cfg.topK));
    const weights = this.newFloat([N, cfg.topK]);
    routeTokens(floats(logits), bias ? floats(bias) : null, N, E, cfg, scores.data as FloatArray, indices.data as Int32Array, weights.data as FloatArray);
    return { scores, indices, weights };
  }

  /** An expert index outside [0, numExperts) throws, with a fixed capacity too. */
  moePermute(x: Tensor, indices: Tensor, numExperts: number, padding?: MoePadding, fixed?: MoeFixedCapacity): MoePermutation {
    const [N, d] = x.shape;
    const idx = ints(indices);
    const K = lastDim(indices);
    const counts = new Array<number>(numExperts).fill(0);
    for (const e of idx) {
      if (!(e >= 0 && e < numExperts)) throw new Error(`moePermute: expert index ${e} outside [0, ${numExperts})`);
      counts[e]++;
    }
    if (fixed && !(Number.isInteger(fixed.capacity) && fixed.capacity > 0)) throw new Error(`moePermute: fixed capacity ${fixed.capacity} (a positive integer)`);
    const capacity = fixed ? fixed.capacity : padding ? moeCapacity(counts, N * K, padding) : null;
    const R = capacity === null ? N * K : numExperts * capacity;
    const start = new Int32Array(numExperts);
    for (let e = 1; e < numExperts; e++) start[e] = capacity === null ? start[e - 1] + counts[e - 1] : e * capacity;
    const sourceSlot = new Int32Array(R).fill(-1);
    const rows = this.newFloat([R, d]);
    const xs = floats(x), r = rows.data as FloatArray;
    let dropped = 0;
    for (let slot = 0; slot < N * K; slot++) {
      const e = idx[slot];
      if (capacity !== null && start[e] === (e + 1) * capacity) {
        dropped++; // past a fixed capacity: the slot gets no row
        continue;
      }
      const dest = start[e]++;
      sourceSlot[dest] = slot;
      const n = Math.floor(slot / K);
      r.set(xs.subarray(n * d, (n + 1) * d), dest * d);
    }
    if (fixed) {
      const stats = ints(fixed.stats);
      if (stats.length !== 2) throw new Error(`moePermute: stats [${fixed.stats.shape.join(', ')}] (two i32)`);
      stats[0] += dropped;
      stats[1] = Math.max(stats[1], ...counts);
    }
    return { rows, sourceSlot: new CpuTensor([R], 'i32', sourceSlot), counts: fixed ? null : counts, capacity };
  }

  expertLoadInto(indices: Tensor, numExperts: number, load: Tensor): void {
    const l = floats(load);
    if (l.length !== numExperts) throw new Error(`expertLoadInto: load [${load.shape.join(', ')}] for ${numExperts} experts`);
    for (const e of ints(indices)) {
      if (!(e >= 0 && e < numExperts)) throw new Error(`expertLoadInto: expert index ${e} outside [0, ${numExperts})`);
      l[e]++;
    }
  }

  correctionBiasUpdate(bias: Tensor, load: Tensor, gamma: number): void {
    const b = floats(bias), l = floats(load);
    let sum = 0;
    for (const c of l) sum += c;
    const mean = sum / l.length;
    for (let i = 0; i < b.length; i++) b[i] += gamma * Math.sign(mean - l[i]);
  }

  moeUnpermute(expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): Tensor {
    const [N, K] = weights.shape;
    const d = lastDim(expertOut);
    const y = floats(expertOut), w = floats(weights), slots = ints(sourceSlot);
    const out = this.newFloat([N, d]);
    const o = out.data as FloatArray;
    for (let r = 0; r < slots.length; r++) {
      const slot = slots[r];
      if (slot < 0) continue;
      const n = Math.floor(slot / K);
      const g = w[slot];
      for (let i = 0; i < d; i++) o[n * d + i] += g * y[r * d + i];
    }
    return out;
  }

  moeExpertsDirect(x: Tensor, indices: Tensor, weights: Tensor, gate: readonly Tensor[], up: readonly Tensor[], down: readonly Tensor[]): Tensor {
    const [N, d] = x.shape;
    const [, K] = weights.shape;
    const E = gate.length;
    const I = gate[0]?.shape[0] ?? 0;
    const idx = ints(indices), w = floats(weights);
    if (x.shape.length !== 2 || idx.length !== N * K || weights.shape[0] !== N || up.length !== E || down.length !== E
      || [...gate, ...up].some((t) => t.shape[0] !== I || t.shape[1] !== d) || down.some((t) => t.shape[0] !== d || t.shape[1] !== I)) {
      throw new Error(`moeExpertsDirect: x ${shapeString(x.shape)}, indices ${shapeString(indices.shape)}, weights ${shapeString(weights.shape)}, `
        + `${E} gate ${shapeString(gate[0]?.shape ?? [])}, ${up.length} up ${shapeString(up[0]?.shape ?? [])}, ${down.length} down ${shapeString(down[0]?.shape ?? [])}`);
    }
    const out = this.newFloat([N, d]);
    const o = out.data as FloatArray;
    // slot by slot: the token's row through its expert as matrix-vector products, added in slot order
    const g = this.newFloat([1, I]), u = this.newFloat([1, I]), y = this.newFloat([1, d]);
    const ys = y.data as FloatArray;
    for (let slot = 0; slot < N * K; slot++) {
      const e = idx[slot];
      if (!(e >= 0 && e < E)) throw new Error(`moeExpertsDirect: expert index ${e} outside [0, ${E})`);
      const xn = this.rows(x, Math.floor(slot / K), 1);
      this.gemm({ m: 1, n: I, k: d, a: { tensor: xn, ld: d }, b: { tensor: gate[e], ld: d, trans: true }, c: { tensor: g, ld: I } });
      this.gemm({ m: 1, n: I, k: d, a: { tensor: xn, ld: d }, b: { tensor: up[e], ld: d, trans: true }, c: { tensor: u, ld: I } });
      this.gemm({ m: 1, n: d, k: I, a: { tensor: this.swiglu(g, u), ld: I }, b: { tensor: down[e], ld: I, trans: true }, c: { tensor: y, ld: d } });
      const n = Math.floor(slot / K);
      for (let i = 0; i < d; i++) o[n * d + i] += w[slot] * ys[i];
    }
    return out;
  }

  /** Expert after expert: the block of rows of `t` that expert e of `experts` owns. */
  private expertBlock(t: Tensor, e: number, experts: number): Tensor {
    const C = t.shape[0] / experts;
    if (!Number.isInteger(C)) throw new Error(`grouped linear: ${t.shape[0]} rows for ${experts} experts`);
    return this.rows(t, e * C, C);
  }

  groupedLinear(x: Tensor, weights: readonly Tensor[]): Tensor {
    const E = weights.length;
    const [out] = weights[0]?.shape ?? [0];
    const y = this.newFloat([x.shape[0], out]);
    for (let e = 0; e < E; e++) {
      const xe = this.expertBlock(x, e, E), ye = this.expertBlock(y, e, E), w = weights[e];
      const inp = lastDim(w);
      this.gemm({ m: xe.shape[0], n: out, k: inp, a: { tensor: xe, ld: inp }, b: { tensor: w, ld: inp, trans: true }, c: { tensor: ye, ld: out } });
    }
    return y;
  }

  groupedLinearBackwardInput(dy: Tensor, weights: readonly Tensor[], into?: Tensor, accumulate = false): Tensor {
    const E = weights.length;
    const [out, inp] = weights[0]?.shape ?? [0, 0];
    const dx = into ?? this.newFloat([dy.shape[0], inp]);
    for (let e = 0; e < E; e++) {
      const g = this.expertBlock(dy, e, E), dxe = this.expertBlock(dx, e, E);
      this.gemm({ m: g.shape[0], n: inp, k: out, beta: accumulate ? 1 : 0, a: { tensor: g, ld: out }, b: { tensor: weights[e], ld: inp }, c: { tensor: dxe, ld: inp } });
    }
    return dx;
  }

  groupedLinearBackwardWeight(x: Tensor, dy: Tensor, grads: readonly Tensor[]): void {
    const E = grads.length;
    for (let e = 0; e < E; e++) {
      const [out, inp] = grads[e].shape;
      const xe = this.expertBlock(x, e, E), g = this.expertBlock(dy, e, E);
      this.gemm({ m: out, n: inp, k: xe.shape[0], beta: 1, a: { tensor: g, ld: out, trans: true }, b: { tensor: xe, ld: inp }, c: { tensor: grads[e], ld: inp } });
    }
  }

  // ---- backward passes ----------------------------------------------------------------

  rmsNormBackwardInput(x: Tensor, w: Tensor, dy: Tensor, eps: number): Tensor {
    sameShape(x, dy, 'rmsNormBackwardInput');
    const d = lastDim(x);
    const xs = floats(x), ws = floats(w), g = floats(dy);
    const out = this.newFloat(x.shape);
    const o = out.data as FloatArray;
    // y = w ∘ x · r, r = (mean(x²) + eps)^-½  ⇒  dx = r · (w∘dy) − x · r³ · mean(x ∘ w∘dy)
    for (let row = 0; row < xs.length / d; row++) {
      const base = row * d;
      let sumSq = 0, dot = 0;
      for (let i = 0; i < d; i++) {
        sumSq += xs[base + i] * xs[base + i];
        dot += xs[base + i] * ws[i] * g[base + i];
      }
      const r = 1 / Math.sqrt(sumSq / d + eps);
      const c = (r * r * r * dot) / d;
      for (let i = 0; i < d; i++) o[base + i] = r * ws[i] * g[base + i] - c * xs[base + i];
    }
    return out;
  }

  rmsNormBackwardWeight(x: Tensor, dy: Tensor, eps: number, dw: Tensor): void {
    sameShape(x, dy, 'rmsNormBackwardWeight');
    const d = lastDim(x);
    const xs = floats(x), g = floats(dy), gw = floats(dw);
    for (let row = 0; row < xs.length / d; row++) {
      const base = row * d;
      let sumSq = 0;
      for (let i = 0; i < d; i++) sumSq += xs[base + i] * xs[base + i];
      const r = 1 / Math.sqrt(sumSq / d + eps);
      for (let i = 0; i < d; i++) gw[i] += g[base + i] * xs[base + i] * r;
    }
  }

  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor): { dGate: Tensor; dUp: Tensor } {
    sameShape(gate, up, 'swigluBackward');
    sameShape(gate, dy, 'swigluBackward');
    const g = floats(gate), u = floats(up), d = floats(dy);
    const dGate = this.newFloat(gate.shape), dUp = this.newFloat(gate.shape);
    const dg = dGate.data as FloatArray, du = dUp.data as FloatArray;
    for (let i = 0; i < g.length; i++) {
      const sig = 1 / (1 + Math.exp(-g[i]));
      du[i] = d[i] * g[i] * sig;
      dg[i] = d[i] * u[i] * sig * (1 + g[i] * (1 - sig));
    }
    return { dGate, dUp };
  }

  embeddingBackward(ids: Tensor, dy: Tensor, dTable: Tensor): void {
    const d = lastDim(dTable);
    const idx = ints(ids), g = floats(dy), t = floats(dTable);
    for (let n = 0; n < idx.length; n++) {
      const row = idx[n] * d;
      for (let i = 0; i < d; i++) t[row + i] += g[n * d + i];
    }
  }

  addToCols(dst: Tensor, src: Tensor, start: number): void {
    const C = lastDim(dst), W = lastDim(src);
    const M = numel(dst.shape) / C;
    if (numel(src.shape) / W !== M || start + W > C) throw new Error(`addToCols: ${shapeString(src.shape)} at ${start} into ${shapeString(dst.shape)}`);
    const d = floats(dst), s = floats(src);
    for (let r = 0; r < M; r++) for (let i = 0; i < W; i++) d[r * C + start + i] += s[r * W + i];
  }

  sumHeads(x: Tensor): Tensor {
    const [N, H, C] = x.shape;
    const xs = floats(x);
    const out = this.newFloat([N, 1, C]);
    const o = out.data as FloatArray;
    for (let n = 0; n < N; n++) for (let h = 0; h < H; h++) for (let c = 0; c < C; c++) o[n * C + c] += xs[(n * H + h) * C + c];
    return out;
  }

  attentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dOut: Tensor, scale: number, qStart: number): { dq: Tensor; dk: Tensor; dv: Tensor } {
    const [B, Tq, H, Dk] = q.shape;
    const [, Tk, , Dv] = v.shape;
    sameShape(out, dOut, 'attentionBackward');
    const dq = this.newFloat(q.shape), dk = this.newFloat(k.shape), dv = this.newFloat(v.shape);
    train.causalAttentionBackward(
      floats(q), floats(k), floats(v), floats(out), floats(dOut), dq.data as FloatArray, dk.data as FloatArray, dv.data as FloatArray,
      allocFloat(this.floatDType, Tq * Tk), allocFloat(this.floatDType, Tq * Tk), { B, Tq, Tk, H, Dk, Dv }, scale, qStart,
    );
    return { dq, dk, dv };
  }

  moeUnpermuteBackward(dy: Tensor, expertOut: Tensor, sourceSlot: Tensor, weights: Tensor): { dExpertOut: Tensor; dWeights: Tensor } {
    const [, K] = weights.shape;
    const d = lastDim(expertOut);
    const g = floats(dy), y = floats(expertOut), w = floats(weights), slots = ints(sourceSlot);
    const dExpertOut = this.newFloat(expertOut.shape), dWeights = this.newFloat(weights.shape);
    const de = dExpertOut.data as FloatArray, dw = dWeights.data as FloatArray;
    for (let r = 0; r < slots.length; r++) {
      const slot = slots[r];
      if (slot < 0) continue; // a padding row: its gradient stays zero
      const n = Math.floor(slot / K);
      let dot = 0;
      for (let i = 0; i < d; i++) {
        de[r * d + i] = w[slot] * g[n * d + i];
        dot += g[n * d + i] * y[r * d + i];
      }
      dw[slot] = dot;
    }
    return { dExpertOut, dWeights };
  }

  moePermuteBackward(dRows: Tensor, sourceSlot: Tensor, numTokens: number, slotCount?: number): Tensor {
    const d = lastDim(dRows);
    const slots = ints(sourceSlot), g = floats(dRows);
    const K = (slotCount ?? slots.length) / numTokens;
    const out = this.newFloat([numTokens, d]);
    const o = out.data as FloatArray;
    for (let r = 0; r < slots.length; r++) {
      if (slots[r] < 0) continue;
      const n = Math.floor(slots[r] / K);
      for (let i = 0; i < d; i++) o[n * d + i] += g[r * d + i];
    }
    return out;
  }

  routerBackward(logits: Tensor, route: RouterOutput, dWeights: Tensor, dScores: Tensor | null, cfg: RouterConfig): Tensor {
    const [N, E] = logits.shape;
    const dLogits = this.newFloat([N, E]);
    train.routerBackward(floats(route.scores), ints(route.indices), floats(dWeights), dScores ? floats(dScores) : null, N, E, cfg, dLogits.data as FloatArray);
    return dLogits;
  }

  sequenceBalanceLossInto(route: RouterOutput, batch: number, seq: number, alpha: number, sum: Tensor): Tensor {
    const acc = scalars(sum, 1, 'sequenceBalanceLossInto sum');
    const [N, E] = route.scores.shape;
    const K = lastDim(route.indices);
    if (N !== batch * seq) throw new Error(`sequenceBalanceLoss: ${N} tokens for ${batch}×${seq}`);
    const dScores = this.newFloat([N, E]);
    acc[0] += train.sequenceBalanceLoss(floats(route.scores), ints(route.indices), batch, seq, E, K, alpha, dScores.data as FloatArray);
    return dScores;
  }

  // ---- losses and optimisation --------------------------------------------------------

  crossEntropyInto(logits: Tensor, targets: Tensor, scale: number, sums: Tensor): Tensor {
    const acc = scalars(sums, 2, 'crossEntropyInto sums');
    const [M, V] = logits.shape;
    if (numel(targets.shape) !== M) throw new Error(`crossEntropy: ${numel(targets.shape)} targets for ${M} rows`);
    const dLogits = this.newFloat([M, V]);
    const r = train.crossEntropy(floats(logits), ints(targets), M, V, scale, dLogits.data as FloatArray);
    acc[0] += r.lossSum;
    acc[1] += r.count;
    return dLogits;
  }

  sumSquares(x: Tensor): number {
    const xs = floats(x);
    let s = 0;
    for (let i = 0; i < xs.length; i++) s += xs[i] * xs[i];
    return s;
  }

  sumSquaresMany(xs: readonly Tensor[]): number {
    let s = 0;
    for (const x of xs) s += this.sumSquares(x);
    return s;
  }

  gradNormClip(grads: readonly Tensor[], maxNorm: number, out: Tensor, skip: Tensor | null = null): void {
    const o = scalars(out, 2, 'gradNormClip out');
    if (!(maxNorm >= 0 && maxNorm < Infinity)) throw new Error(`gradNormClip: maximum norm ${maxNorm} (0: no clipping)`);
    const norm = Math.sqrt(this.sumSquaresMany(grads));
    o[0] = norm;
    o[1] = maxNorm > 0 && norm > maxNorm ? maxNorm / norm : 1;
    if (skip) intScalar(skip, 'gradNormClip skip')[0] = Number.isFinite(o[0]) ? 0 : 1;
  }

  scaleInPlace(x: Tensor, alpha: number): void {
    const xs = floats(x);
    if (alpha === 0) xs.fill(0); // zeroing clears NaN and Inf too, as the GPU kernels do
    else for (let i = 0; i < xs.length; i++) xs[i] *= alpha;
  }

  scaleInPlaceMany(xs: readonly Tensor[], alpha: number): void {
    for (const x of xs) this.scaleInPlace(x, alpha);
  }

  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, h: AdamWHyper, weightDecay: number, s: AdamWScalars): void {
    sameShape(param, grad, 'adamw');
    const step = adamwStep(s);
    if (step) train.adamw(floats(param), floats(grad), floats(m), floats(v), h, weightDecay, step);
  }

  adamwMany(params: readonly Tensor[], grads: readonly Tensor[], ms: readonly Tensor[], vs: readonly Tensor[], h: AdamWHyper,
    weightDecays: readonly number[], s: AdamWScalars): void {
    const n = adamwManyCount(params, grads, ms, vs, weightDecays);
    for (let i = 0; i < n; i++) this.adamw(params[i]!, grads[i]!, ms[i]!, vs[i]!, h, weightDecays[i]!, s);
  }

  // ---- graphs -------------------------------------------------------------------------

  /** Nothing to record here: a replay runs `body` again, so code written for the GPU's graphs runs the same way on the CPU. */
  captureGraph(body: () => void): CapturedGraph {
    let freed = false;
    return {
      replay: () => {
        if (freed) throw new Error('captureGraph: replay of a freed graph');
        body();
      },
      free: () => {
        freed = true;
      },
    };
  }
}
