// The GEMM's inner loops as WebAssembly SIMD, emitted as bytes from TypeScript so that the
// register blocking (MR×NR) and the element type are parameters, not hand-copied text.
//
// Exports (all pointers and strides in bytes inside the instance's memory; `alpha` has the
// element type):
//   macro(ap, bp, cp, mTiles, nTiles, kc, ldc)   C[mTiles·MR, nTiles·NR] += Ap·Bp, the whole
//       macro-kernel of one packed block, so JS→WASM calls happen once per block
//   packRows{R}(dst, src, ld, panels, kc, kcVec, alpha)   R source rows of kc elements each
//       (row stride ld) → one packed panel [kc][R], times alpha; `panels` panels of R rows,
//       columns [0, kcVec) only (kcVec a multiple of the vector width; JS packs the rest)
//   packCols{R}(dst, src, ld, panels, kc, kcVec, alpha)   kc source rows, R consecutive
//       elements of each → one packed panel [kc][R], times alpha (kcVec unused)
//   scale(ptr, count, alpha)   ptr[0:count] *= alpha, count a multiple of the vector width
// with R = MR and R = NR. Packed layouts:
//   A panel i: Ap[i][p][r] = alpha·op(A)[i·MR + r, p]       B panel j: Bp[j][p][r] = op(B)[p, j·NR + r]
//
// Why WASM SIMD: it is the only portable vector ISA that Node runs without a native build
// step. It is 128 bits wide, so a core peaks at a quarter of what AVX-512 OpenBLAS can do.
//
// Measured on Node 20 (V8 11.3, TurboFan, x64 with AVX): the k loop is NOT unrolled on
// purpose. Unrolled, TurboFan hoists every broadcast load and keeps one base register per
// constant offset, runs out of the 16 xmm/GPR registers and spills: 4×8 fell from 65 to
// 36 GFLOP/s. Relaxed-SIMD fused multiply-add (behind a V8 flag in Node 20) gained nothing
// over mul + add. Of the tile shapes tried, 4×8 (f32) and 4×4 (f64) are the fastest: eight
// accumulators cover the add latency and leave room for the B vectors and one broadcast.

export type KernelDType = 'f32' | 'f64';

export interface KernelShape {
  dtype: KernelDType;
  /** Rows of the register tile (broadcast A elements); a multiple of the vector width. */
  mr: number;
  /** Columns of the register tile; a multiple of the vector width (4 for f32, 2 for f64). */
  nr: number;
}

export type MacroKernel = (ap: number, bp: number, cp: number, mTiles: number, nTiles: number, kc: number, ldcBytes: number) => void;
export type PackKernel = (dst: number, src: number, ldBytes: number, panels: number, kc: number, kcVec: number, alpha: number) => void;
export type ScaleKernel = (ptr: number, count: number, alpha: number) => void;

// ---- minimal binary encoder -------------------------------------------------------------

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

function name(s: string): number[] {
  return [...uleb(s.length), ...Array.from(s, (ch) => ch.charCodeAt(0))];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

const I32 = 0x7f;
const F32 = 0x7d;
const F64 = 0x7c;
const V128 = 0x7b;

const op = {
  loop: 0x03,
  end: 0x0b,
  br_if: 0x0d,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  i32Const: 0x41,
  i32Ne: 0x47,
  i32Add: 0x6a,
  i32Sub: 0x6b,
  i32Mul: 0x6c,
  simd: 0xfd,
} as const;

const simdOp = {
  v128Load: 0x00,
  load32Splat: 0x09,
  load64Splat: 0x0a,
  v128Store: 0x0b,
  shuffle: 0x0d,
  f32x4Splat: 0x13,
  f64x2Splat: 0x14,
  f32x4Add: 0xe4,
  f32x4Mul: 0xe6,
  f64x2Add: 0xf0,
  f64x2Mul: 0xf2,
} as const;

/** One function body: typed locals after the parameters, and its instructions. */
class Func {
  readonly bytes: number[] = [];
  private readonly localTypes: number[] = [];
  constructor(readonly params: number[]) {}

  local(type: number): number {
    this.localTypes.push(type);
    return this.params.length + this.localTypes.length - 1;
  }
  emit(...b: number[]): this {
    for (const x of b) this.bytes.push(x);
    return this;
  }
  get(l: number): this {
    return this.emit(op.localGet, ...uleb(l));
  }
  set(l: number): this {
    return this.emit(op.localSet, ...uleb(l));
  }
  tee(l: number): this {
    return this.emit(op.localTee, ...uleb(l));
  }
  i32(v: number): this {
    return this.emit(op.i32Const, ...sleb(v));
  }
  simd(code: number, ...imm: number[]): this {
    return this.emit(op.simd, ...uleb(code), ...imm);
  }
  /** A SIMD memory access with alignment hint log2(align) and a constant byte offset. */
  mem(code: number, alignLog2: number, offset: number): this {
    return this.simd(code, ...uleb(alignLog2), ...uleb(offset));
  }
  /** local[dst] = local[a] + local[b] */
  add(dst: number, a: number, b: number): this {
    return this.get(a).get(b).emit(op.i32Add).set(dst);
  }
  /** local[dst] = local[src] + constant */
  addConst(dst: number, src: number, c: number): this {
    return this.get(src).i32(c).emit(op.i32Add).set(dst);
  }
  /** local[dst] = local[a] · constant */
  mulConst(dst: number, a: number, c: number): this {
    return this.get(a).i32(c).emit(op.i32Mul).set(dst);
  }
  /** do { body } while (--local[counter] != 0); the caller guarantees counter ≥ 1. */
  countDown(counter: number, body: () => void): this {
    this.emit(op.loop, 0x40);
    body();
    this.get(counter).i32(1).emit(op.i32Sub).tee(counter).emit(op.br_if, 0, op.end);
    return this;
  }
  /** do { body } while (local[ptr] != local[end]); the caller guarantees one trip at least. */
  untilEqual(ptr: number, end: number, body: () => void): this {
    this.emit(op.loop, 0x40);
    body();
    this.get(ptr).get(end).emit(op.i32Ne, op.br_if, 0, op.end);
    return this;
  }
  /** if (local[n] != 0) { body } — wasm `if` with an empty block type. */
  ifNonZero(n: number, body: () => void): this {
    this.get(n).emit(0x04, 0x40);
    body();
    return this.emit(op.end);
  }

  encode(): number[] {
    const groups: number[] = [];
    let count = 0;
    for (let i = 0; i < this.localTypes.length; ) {
      let j = i;
      while (j < this.localTypes.length && this.localTypes[j] === this.localTypes[i]) j++;
      groups.push(...uleb(j - i), this.localTypes[i]);
      count++;
      i = j;
    }
    const body = [...uleb(count), ...groups, ...this.bytes, op.end];
    return [...uleb(body.length), ...body];
  }
}

interface Element {
  es: number;
  lanes: number;
  scalar: number;
  alignLog2: number;
  splatLoad: number;
  splat: number;
  add: number;
  mul: number;
  /** Lane indices (of the 2·lanes in a, b) → i8x16.shuffle immediates. */
  shuffle: (lanes: number[]) => number[];
}

function element(dtype: KernelDType): Element {
  const es = dtype === 'f32' ? 4 : 8;
  return {
    es,
    lanes: 16 / es,
    scalar: dtype === 'f32' ? F32 : F64,
    alignLog2: dtype === 'f32' ? 2 : 3,
    splatLoad: dtype === 'f32' ? simdOp.load32Splat : simdOp.load64Splat,
    splat: dtype === 'f32' ? simdOp.f32x4Splat : simdOp.f64x2Splat,
    add: dtype === 'f32' ? simdOp.f32x4Add : simdOp.f64x2Add,
    mul: dtype === 'f32' ? simdOp.f32x4Mul : simdOp.f64x2Mul,
    shuffle: (idx) => idx.flatMap((l) => Array.from({ length: es }, (_, b) => l * es + b)),
  };
}

// ---- the functions ----------------------------------------------------------------------

function macroKernel(el: Element, mr: number, nr: number): Func {
  const { es, lanes } = el;
  const nv = nr / lanes;
  const f = new Func([I32, I32, I32, I32, I32, I32, I32]);
  const [AP, BP, CP, MT, NT, KC, LDC] = [0, 1, 2, 3, 4, 5, 6];
  const jr = f.local(I32), ir = f.local(I32), aPtr = f.local(I32), bPtr = f.local(I32), aEnd = f.local(I32);
  const cRow = f.local(I32), cCol = f.local(I32), aBlk = f.local(I32), bBlk = f.local(I32), t = f.local(I32);
  const aStep = f.local(I32), bStep = f.local(I32), cStep = f.local(I32);
  const acc: number[][] = [];
  for (let i = 0; i < mr; i++) acc.push(Array.from({ length: nv }, () => f.local(V128)));
  const bv = Array.from({ length: nv }, () => f.local(V128));
  const av = f.local(V128);

  f.mulConst(aStep, KC, mr * es); // one packed A panel
  f.mulConst(bStep, KC, nr * es); // one packed B panel
  f.mulConst(cStep, LDC, mr); // MR rows of C
  f.get(BP).set(bBlk).get(CP).set(cCol).get(NT).set(jr);
  f.countDown(jr, () => {
    f.get(AP).set(aBlk).get(cCol).set(cRow).get(MT).set(ir);
    f.countDown(ir, () => {
      // C tile → registers
      f.get(cRow).set(t);
      for (let i = 0; i < mr; i++) {
        for (let j = 0; j < nv; j++) f.get(t).mem(simdOp.v128Load, 4, j * 16).set(acc[i][j]);
        if (i + 1 < mr) f.add(t, t, LDC);
      }
      f.get(aBlk).set(aPtr).get(bBlk).set(bPtr);
      f.add(aEnd, aBlk, aStep);
      // k loop (kc ≥ 1): NR/lanes vectors of B, one broadcast of A per row, MR·NR/lanes mul+add
      f.untilEqual(aPtr, aEnd, () => {
        for (let j = 0; j < nv; j++) f.get(bPtr).mem(simdOp.v128Load, 4, j * 16).set(bv[j]);
        for (let i = 0; i < mr; i++) {
          f.get(aPtr).mem(el.splatLoad, el.alignLog2, i * es).set(av);
          for (let j = 0; j < nv; j++) f.get(acc[i][j]).get(av).get(bv[j]).simd(el.mul).simd(el.add).set(acc[i][j]);
        }
        f.addConst(aPtr, aPtr, mr * es);
        f.addConst(bPtr, bPtr, nr * es);
      });
      // registers → C tile
      f.get(cRow).set(t);
      for (let i = 0; i < mr; i++) {
        for (let j = 0; j < nv; j++) f.get(t).get(acc[i][j]).mem(simdOp.v128Store, 4, j * 16);
        if (i + 1 < mr) f.add(t, t, LDC);
      }
      f.add(aBlk, aBlk, aStep);
      f.add(cRow, cRow, cStep);
    });
    f.add(bBlk, bBlk, bStep);
    f.addConst(cCol, cCol, nr * es);
  });
  return f;
}

const PACK_PARAMS = (el: Element) => [I32, I32, I32, I32, I32, I32, el.scalar];
const [P_DST, P_SRC, P_LD, P_PANELS, P_KC, P_KCVEC, P_ALPHA] = [0, 1, 2, 3, 4, 5, 6];

/** R rows of the source → panel [kc][R]: lanes×lanes transposes, lanes rows at a time. */
function packRows(el: Element, r: number): Func {
  const { es, lanes } = el;
  const f = new Func(PACK_PARAMS(el));
  const alpha = f.local(V128), q = f.local(I32), row0 = f.local(I32), dstQ = f.local(I32), panelBytes = f.local(I32);
  const s = f.local(I32), sEnd = f.local(I32), d = f.local(I32), ldR = f.local(I32);
  const rowOff = Array.from({ length: r }, () => f.local(I32));
  const v = Array.from({ length: lanes }, () => f.local(V128));
  const tmp = Array.from({ length: lanes }, () => f.local(V128));

  f.get(P_ALPHA).simd(el.splat).set(alpha);
  f.mulConst(panelBytes, P_KC, r * es);
  f.mulConst(ldR, P_LD, r);
  for (let i = 0; i < r; i++) f.mulConst(rowOff[i], P_LD, i);
  f.ifNonZero(P_PANELS, () => {
    f.ifNonZero(P_KCVEC, () => {
      f.get(P_SRC).set(row0).get(P_DST).set(dstQ).get(P_PANELS).set(q);
      f.countDown(q, () => {
        f.get(row0).set(s).get(dstQ).set(d);
        f.get(P_KCVEC).i32(es).emit(op.i32Mul).get(row0).emit(op.i32Add).set(sEnd);
        f.untilEqual(s, sEnd, () => {
          for (let g = 0; g < r / lanes; g++) {
            for (let l = 0; l < lanes; l++) {
              f.get(s).get(rowOff[g * lanes + l]).emit(op.i32Add).mem(simdOp.v128Load, 0, 0).get(alpha).simd(el.mul).set(v[l]);
            }
            // Transpose: out[x][l] = v[l][x], stored at step x of the panel, rows g·lanes…
            const out = transpose(f, el, v, tmp);
            for (let x = 0; x < lanes; x++) f.get(d).get(out[x]).mem(simdOp.v128Store, 0, (x * r + g * lanes) * es);
          }
          f.addConst(s, s, lanes * es);
          f.addConst(d, d, lanes * r * es);
        });
        f.add(row0, row0, ldR);
        f.add(dstQ, dstQ, panelBytes);
      });
    });
  });
  return f;
}

/** lanes×lanes transpose of the vectors in `v` (clobbers `tmp`); returns the locals holding columns. */
function transpose(f: Func, el: Element, v: number[], tmp: number[]): number[] {
  const shuf = (a: number, b: number, lanesIdx: number[], dst: number) => f.get(a).get(b).simd(simdOp.shuffle, ...el.shuffle(lanesIdx)).set(dst);
  if (el.lanes === 2) {
    shuf(v[0], v[1], [0, 2], tmp[0]);
    shuf(v[0], v[1], [1, 3], tmp[1]);
    return tmp;
  }
  // 4×4: interleave pairs of rows, then pairs of pairs.
  shuf(v[0], v[1], [0, 4, 1, 5], tmp[0]); // a0 b0 a1 b1
  shuf(v[0], v[1], [2, 6, 3, 7], tmp[1]); // a2 b2 a3 b3
  shuf(v[2], v[3], [0, 4, 1, 5], tmp[2]); // c0 d0 c1 d1
  shuf(v[2], v[3], [2, 6, 3, 7], tmp[3]); // c2 d2 c3 d3
  shuf(tmp[0], tmp[2], [0, 1, 4, 5], v[0]); // a0 b0 c0 d0
  shuf(tmp[0], tmp[2], [2, 3, 6, 7], v[1]);
  shuf(tmp[1], tmp[3], [0, 1, 4, 5], v[2]);
  shuf(tmp[1], tmp[3], [2, 3, 6, 7], v[3]);
  return v;
}

/** R consecutive source elements of each of kc rows → panel [kc][R]. */
function packCols(el: Element, r: number): Func {
  const { es, lanes } = el;
  const f = new Func(PACK_PARAMS(el));
  const alpha = f.local(V128), q = f.local(I32), col0 = f.local(I32), dstQ = f.local(I32), panelBytes = f.local(I32);
  const s = f.local(I32), d = f.local(I32), dEnd = f.local(I32);
  f.get(P_ALPHA).simd(el.splat).set(alpha);
  f.mulConst(panelBytes, P_KC, r * es);
  f.ifNonZero(P_PANELS, () => {
    f.ifNonZero(P_KC, () => {
      f.get(P_SRC).set(col0).get(P_DST).set(dstQ).get(P_PANELS).set(q);
      f.countDown(q, () => {
        f.get(col0).set(s).get(dstQ).set(d);
        f.add(dEnd, dstQ, panelBytes);
        f.untilEqual(d, dEnd, () => {
          for (let x = 0; x < r / lanes; x++) {
            f.get(d).get(s).mem(simdOp.v128Load, 0, x * 16).get(alpha).simd(el.mul).mem(simdOp.v128Store, 0, x * 16);
          }
          f.add(s, s, P_LD);
          f.addConst(d, d, r * es);
        });
        f.addConst(col0, col0, r * es);
        f.add(dstQ, dstQ, panelBytes);
      });
    });
  });
  return f;
}

function scaleKernel(el: Element): Func {
  const f = new Func([I32, I32, el.scalar]);
  const [PTR, COUNT, ALPHA] = [0, 1, 2];
  const alpha = f.local(V128), end = f.local(I32);
  f.get(ALPHA).simd(el.splat).set(alpha);
  f.ifNonZero(COUNT, () => {
    f.get(COUNT).i32(el.es).emit(op.i32Mul).get(PTR).emit(op.i32Add).set(end);
    f.untilEqual(PTR, end, () => {
      f.get(PTR).get(PTR).mem(simdOp.v128Load, 0, 0).get(alpha).simd(el.mul).mem(simdOp.v128Store, 0, 0);
      f.addConst(PTR, PTR, 16);
    });
  });
  return f;
}

// ---- the module ---------------------------------------------------------------------------

/** The module imports its memory as env.memory; see the header for its exports. */
export function buildKernelModule(shape: KernelShape): Uint8Array {
  const { dtype, mr, nr } = shape;
  const el = element(dtype);
  if (mr % el.lanes !== 0 || nr % el.lanes !== 0) throw new Error(`MR=${mr}, NR=${nr} must be multiples of ${el.lanes} lanes`);
  const funcs: { name: string; f: Func }[] = [{ name: 'macro', f: macroKernel(el, mr, nr) }];
  for (const r of new Set([mr, nr])) {
    funcs.push({ name: `packRows${r}`, f: packRows(el, r) });
    funcs.push({ name: `packCols${r}`, f: packCols(el, r) });
  }
  funcs.push({ name: 'scale', f: scaleKernel(el) });

  const types: string[] = [];
  const typeOf = funcs.map(({ f }) => {
    const key = f.params.join(',');
    if (!types.includes(key)) types.push(key);
    return types.indexOf(key);
  });
  const typeSec = section(1, [
    ...uleb(types.length),
    ...types.flatMap((key) => {
      const params = key.split(',').map(Number);
      return [0x60, ...uleb(params.length), ...params, 0];
    }),
  ]);
  // Memory import: limits flag 0x00 = minimum only (one page); each thread owns its memory.
  const importSec = section(2, [...uleb(1), ...name('env'), ...name('memory'), 0x02, 0x00, ...uleb(1)]);
  const funcSec = section(3, [...uleb(funcs.length), ...typeOf.flatMap((t) => uleb(t))]);
  const exportSec = section(7, [...uleb(funcs.length), ...funcs.flatMap(({ name: n }, i) => [...name(n), 0x00, ...uleb(i)])]);
  const codeSec = section(10, [...uleb(funcs.length), ...funcs.flatMap(({ f }) => f.encode())]);
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...typeSec, ...importSec, ...funcSec, ...exportSec, ...codeSec]);
}
