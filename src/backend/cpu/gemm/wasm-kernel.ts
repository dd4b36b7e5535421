// The packed GEMM micro-kernel, emitted as WebAssembly SIMD bytes from TypeScript so that the
// register blocking (MR×NR) and the element type are parameters, not hand-copied text. One exported function, `macro`, runs the whole macro-kernel of one
// (MC×KC)·(KC×NC) block so that JS→WASM calls happen once per block, not once per tile.
//
// Packed layouts (all offsets in bytes inside the instance's memory):
//   A panel ir: kc steps of MR elements      Ap[ir][p][i]  = op(A)[ir·MR + i, p]
//   B panel jr: kc steps of NR elements      Bp[jr][p][j]  = op(B)[p, jr·NR + j]
//   C block: row-major with row stride ldcBytes; the kernel does C += Ap·Bp (no alpha/beta:
//   the caller scales when it writes the block back to the user's matrix).
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
  /** Rows of the register tile (broadcast A elements). */
  mr: number;
  /** Columns of the register tile; a multiple of the vector width (4 for f32, 2 for f64). */
  nr: number;
}

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

function utf8(s: string): number[] {
  return [...uleb(s.length), ...Array.from(s, (ch) => ch.charCodeAt(0))];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

const I32 = 0x7f;
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
  i32And: 0x71,
  simd: 0xfd,
} as const;

const simdOp = {
  v128Load: 0x00,
  load32Splat: 0x09,
  load64Splat: 0x0a,
  v128Store: 0x0b,
  f32x4Add: 0xe4,
  f32x4Mul: 0xe6,
  f64x2Add: 0xf0,
  f64x2Mul: 0xf2,
} as const;

class Code {
  readonly bytes: number[] = [];
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
  /** A memory access with alignment hint log2(align) and a constant byte offset. */
  mem(code: number, alignLog2: number, offset: number): this {
    return this.simd(code, ...uleb(alignLog2), ...uleb(offset));
  }
  /** local[dst] = local[src] + constant */
  addConst(dst: number, src: number, c: number): this {
    return this.get(src).i32(c).emit(op.i32Add).set(dst);
  }
}

/**
 * The module imports its memory as env.memory and exports
 * `macro(ap, bp, cp, mTiles, nTiles, kc, ldcBytes)`.
 */
export function buildKernelModule(shape: KernelShape): Uint8Array {
  const { dtype, mr, nr } = shape;
  const es = dtype === 'f32' ? 4 : 8;
  const lanes = 16 / es;
  if (nr % lanes !== 0) throw new Error(`nr=${nr} is not a multiple of ${lanes} lanes`);
  const nv = nr / lanes;
  const splat = dtype === 'f32' ? simdOp.load32Splat : simdOp.load64Splat;
  const add = dtype === 'f32' ? simdOp.f32x4Add : simdOp.f64x2Add;
  const mul = dtype === 'f32' ? simdOp.f32x4Mul : simdOp.f64x2Mul;
  const elemAlign = dtype === 'f32' ? 2 : 3;

  // Locals: parameters first, then i32 scratch, then v128 registers.
  const P_AP = 0, P_BP = 1, P_CP = 2, P_MT = 3, P_NT = 4, P_KC = 5, P_LDC = 6;
  let next = 7;
  const L_JR = next++, L_IR = next++, L_APTR = next++, L_BPTR = next++, L_AEND = next++;
  const L_CROW = next++, L_CCOL = next++, L_ABLK = next++, L_BBLK = next++, L_T = next++;
  const L_ASTEP = next++, L_BSTEP = next++, L_CSTEP = next++;
  const nI32Locals = next - 7;
  const accBase = next;
  const acc = (i: number, j: number) => accBase + i * nv + j;
  next += mr * nv;
  const bvBase = next;
  next += nv;
  const L_AV = next++;
  const nV128Locals = next - accBase;

  const c = new Code();
  // Byte strides that stay constant for the call.
  c.get(P_KC).i32(mr * es).emit(op.i32Mul).set(L_ASTEP); // one packed A panel
  c.get(P_KC).i32(nr * es).emit(op.i32Mul).set(L_BSTEP); // one packed B panel
  c.get(P_LDC).i32(mr).emit(op.i32Mul).set(L_CSTEP); // MR rows of C

  c.get(P_BP).set(L_BBLK);
  c.get(P_CP).set(L_CCOL);
  c.get(P_NT).set(L_JR);
  c.emit(op.loop, 0x40); // ---- over NR-wide column panels
  {
    c.get(P_AP).set(L_ABLK);
    c.get(L_CCOL).set(L_CROW);
    c.get(P_MT).set(L_IR);
    c.emit(op.loop, 0x40); // ---- over MR-high row panels
    {
      // Load the C tile into registers.
      c.get(L_CROW).set(L_T);
      for (let i = 0; i < mr; i++) {
        for (let j = 0; j < nv; j++) c.get(L_T).mem(simdOp.v128Load, 4, j * 16).set(acc(i, j));
        if (i + 1 < mr) c.get(L_T).get(P_LDC).emit(op.i32Add).set(L_T);
      }
      c.get(L_ABLK).set(L_APTR);
      c.get(L_BBLK).set(L_BPTR);

      // k loop (kc ≥ 1): one broadcast of A per row, NR/lanes vectors of B, MR·NR/lanes mul+add.
      c.get(L_ABLK).get(L_ASTEP).emit(op.i32Add).set(L_AEND);
      c.emit(op.loop, 0x40);
      for (let j = 0; j < nv; j++) c.get(L_BPTR).mem(simdOp.v128Load, 4, j * 16).set(bvBase + j);
      for (let i = 0; i < mr; i++) {
        c.get(L_APTR).mem(splat, elemAlign, i * es).set(L_AV);
        for (let j = 0; j < nv; j++) c.get(acc(i, j)).get(L_AV).get(bvBase + j).simd(mul).simd(add).set(acc(i, j));
      }
      c.addConst(L_APTR, L_APTR, mr * es);
      c.addConst(L_BPTR, L_BPTR, nr * es);
      c.get(L_APTR).get(L_AEND).emit(op.i32Ne, op.br_if, 0);
      c.emit(op.end);

      // Store the tile back.
      c.get(L_CROW).set(L_T);
      for (let i = 0; i < mr; i++) {
        for (let j = 0; j < nv; j++) c.get(L_T).get(acc(i, j)).mem(simdOp.v128Store, 4, j * 16);
        if (i + 1 < mr) c.get(L_T).get(P_LDC).emit(op.i32Add).set(L_T);
      }

      c.get(L_ABLK).get(L_ASTEP).emit(op.i32Add).set(L_ABLK);
      c.get(L_CROW).get(L_CSTEP).emit(op.i32Add).set(L_CROW);
      c.get(L_IR).i32(1).emit(op.i32Sub).tee(L_IR).emit(op.br_if, 0);
      c.emit(op.end);
    }
    c.get(L_BBLK).get(L_BSTEP).emit(op.i32Add).set(L_BBLK);
    c.addConst(L_CCOL, L_CCOL, nr * es);
    c.get(L_JR).i32(1).emit(op.i32Sub).tee(L_JR).emit(op.br_if, 0);
    c.emit(op.end);
  }
  c.emit(op.end);

  const locals = [...uleb(2), ...uleb(nI32Locals), I32, ...uleb(nV128Locals), V128];
  const body = [...locals, ...c.bytes];
  const funcBody = [...uleb(body.length), ...body];

  const typeSec = section(1, [...uleb(1), 0x60, ...uleb(7), I32, I32, I32, I32, I32, I32, I32, 0]);
  // Memory import: limits flag 0x00 = minimum only (one page); each thread owns its memory.
  const importSec = section(2, [...uleb(1), ...utf8('env'), ...utf8('memory'), 0x02, 0x00, ...uleb(1)]);
  const funcSec = section(3, [...uleb(1), 0]);
  const exportSec = section(7, [...uleb(1), ...utf8('macro'), 0x00, 0]);
  const codeSec = section(10, [...uleb(1), ...funcBody]);
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...typeSec, ...importSec, ...funcSec, ...exportSec, ...codeSec]);
}

export type MacroKernel = (ap: number, bp: number, cp: number, mTiles: number, nTiles: number, kc: number, ldcBytes: number) => void;
