// The CPU GEMM against the plain triple loop, on fresh random inputs (the seed is printed in
// every failure), for both implementations: the system BLAS (skipped when none loads) and our
// own WebAssembly kernel on the worker pool.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  allocShared, gemm, gemmImplementation, gemmReference, gemmThreadStats, setGemmImplementation, setGemmThreads,
  type AnyGemmArgs, type FloatArray,
} from '../../../src/backend/cpu/gemm/index.js';
import { seededRandom } from '../../helpers/random.js';

const SEED = (Date.now() ^ (process.pid << 16)) >>> 0;

const random = seededRandom(SEED).uniform;

type Ctor = Float32ArrayConstructor | Float64ArrayConstructor;

function makeArray(ctor: Ctor, length: number, shared: boolean): FloatArray {
  const x = shared ? allocShared(ctor, length) : new ctor(length);
  for (let i = 0; i < length; i++) x[i] = random() * 2 - 1;
  return x;
}

interface Case {
  ctor: Ctor;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  alpha: number;
  beta: number;
  shared: boolean;
  /** Extra elements at the end of each stored row (ld − width) and before the first. */
  pad: number;
  offset: number;
}

/** Build the arguments; C's untouched elements (offset, row gaps, tail) hold a sentinel. */
function build(cs: Case): { args: AnyGemmArgs; sentinel: number } {
  const { ctor, m, n, k, transA, transB, pad, offset, shared } = cs;
  const [aRows, aCols] = transA ? [k, m] : [m, k];
  const [bRows, bCols] = transB ? [n, k] : [k, n];
  const lda = aCols + pad;
  const ldb = bCols + pad + 1;
  const ldc = n + pad + 2;
  const a = makeArray(ctor, offset + aRows * lda + 3, shared);
  const b = makeArray(ctor, offset + 1 + bRows * ldb + 3, shared);
  const c = makeArray(ctor, offset + 2 + m * ldc + 3, shared);
  const sentinel = 12345.5;
  for (let i = 0; i < c.length; i++) {
    const r = Math.floor((i - offset - 2) / ldc);
    const col = (i - offset - 2) % ldc;
    const inside = i >= offset + 2 && r < m && col < n;
    if (!inside) c[i] = sentinel;
    else if (cs.beta === 0 && i % 3 === 0) c[i] = NaN; // beta = 0 must not read C
  }
  const args = {
    transA, transB, m, n, k, alpha: cs.alpha, beta: cs.beta,
    a, aOffset: offset, lda, b, bOffset: offset + 1, ldb, c, cOffset: offset + 2, ldc,
  } as AnyGemmArgs;
  return { args, sentinel };
}

const abs = (x: FloatArray): FloatArray => x.map(Math.abs) as FloatArray;

/**
 * Run `gemm` and the reference on copies of the same inputs. Each element's error is divided
 * by its own scale, |alpha|·Σ|a||b| + |beta·c|, and must stay below rtol·√k.
 */
function check(cs: Case, label: string): void {
  const { args, sentinel } = build(cs);
  const c0 = args.c.slice();
  const ref = args.c.slice();
  gemmReference({ ...args, c: ref } as AnyGemmArgs);
  const scale = args.c.slice().fill(0);
  gemmReference({ ...args, a: abs(args.a), b: abs(args.b), c: scale, alpha: Math.abs(args.alpha), beta: 0 } as AnyGemmArgs);
  gemm(args);

  const rtol = (cs.ctor === Float32Array ? 1e-5 : 1e-12) * Math.sqrt(Math.max(cs.k, 1));
  const where = `${label} ${cs.ctor.name} m=${cs.m} n=${cs.n} k=${cs.k} transA=${cs.transA} transB=${cs.transB} alpha=${cs.alpha} beta=${cs.beta} shared=${cs.shared} pad=${cs.pad} offset=${cs.offset} seed=${SEED}`;
  let worst = 0;
  for (let i = 0; i < args.c.length; i++) {
    const got = args.c[i];
    if (ref[i] === sentinel) {
      if (got !== sentinel) assert.fail(`${where}: element ${i} outside C was written (${got})`);
      continue;
    }
    if (!Number.isFinite(got)) assert.fail(`${where}: element ${i} is ${got}`);
    const tol = Math.abs(cs.alpha) * scale[i] + (cs.beta === 0 ? 0 : Math.abs(cs.beta * c0[i])) || 1;
    worst = Math.max(worst, Math.abs(got - ref[i]) / tol);
  }
  assert.ok(worst <= rtol, `${where}: scaled error ${worst.toExponential(2)} > ${rtol.toExponential(2)}`);
}

// Sizes around the blockings (MR = 4, NR = 8 or 4, KC = 256, MC = 128 or 64, 4/2 lanes).
const SIZES: [number, number, number][] = [
  [1, 1, 1], [7, 7, 7], [1, 33, 129], [33, 1, 7], [129, 7, 33], [33, 129, 1], [7, 129, 257], [130, 67, 300], [65, 9, 258], [5, 3, 2],
];
const SCALARS: [number, number][] = [[1, 0], [-0.75, 0], [1.25, 1], [0.5, -2]];

function sweep(label: string, ctor: Ctor): void {
  let i = 0;
  for (const [m, n, k] of SIZES) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const [alpha, beta] of SCALARS) {
          // Shared/non-shared, padding and offsets rotate so that each size meets each of them.
          const shared = i % 2 === 0;
          check({ ctor, m, n, k, transA, transB, alpha, beta, shared, pad: i % 3 === 0 ? 0 : 1 + (i % 5), offset: i % 4 }, label);
          i++;
        }
      }
    }
  }
}

function blasAvailable(): boolean {
  setGemmImplementation('openblas');
  try {
    return gemmImplementation().kind === 'openblas';
  } catch {
    return false;
  } finally {
    setGemmImplementation('auto');
  }
}
const HAVE_BLAS = blasAvailable();

test('own kernel: every transpose, odd sizes, offsets, leading dimensions, alpha/beta, FP32 and FP64', () => {
  setGemmImplementation('own');
  try {
    assert.equal(gemmImplementation().kind, 'own');
    sweep('own', Float32Array);
    sweep('own', Float64Array);
  } finally {
    setGemmImplementation('auto');
  }
});

test('BLAS path: every transpose, odd sizes, offsets, leading dimensions, alpha/beta, FP32 and FP64', { skip: HAVE_BLAS ? false : 'no libopenblas.so.0 / cblas library on this machine' }, () => {
  setGemmImplementation('openblas');
  try {
    const impl = gemmImplementation();
    assert.equal(impl.kind, 'openblas');
    assert.ok(impl.threads >= 1);
    sweep('openblas', Float32Array);
    sweep('openblas', Float64Array);
  } finally {
    setGemmImplementation('auto');
  }
});

test('own kernel on the worker pool: workers take tiles, shared and non-shared arrays', async () => {
  setGemmImplementation('own');
  setGemmThreads(undefined);
  try {
    const cases: Omit<Case, 'ctor' | 'shared'>[] = [
      { m: 300, n: 170, k: 200, transA: false, transB: true, alpha: 1, beta: 0, pad: 3, offset: 5 }, // tiles split rows
      { m: 90, n: 410, k: 150, transA: true, transB: false, alpha: -1.5, beta: 0.5, pad: 0, offset: 1 }, // tiles split columns
      { m: 2100, n: 2100, k: 2, transA: false, transB: false, alpha: 1, beta: 1, pad: 2, offset: 0 }, // halves above the tile cap
    ];
    const before = gemmThreadStats().tilesOnWorkers;
    // Workers start asynchronously; until they run, the calling thread does every tile.
    for (let attempt = 0; attempt < 50 && gemmThreadStats().tilesOnWorkers === before; attempt++) {
      for (const cs of cases) {
        for (const ctor of [Float32Array, Float64Array]) {
          for (const shared of [true, false]) check({ ...cs, ctor, shared }, 'pool');
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const stats = gemmThreadStats();
    if (stats.workers === 0) {
      assert.equal(gemmImplementation().threads, 1, 'a machine with one core has no workers');
    } else {
      assert.ok(stats.tilesOnWorkers > before, `workers never took a tile: ${JSON.stringify(stats)}`);
      assert.equal(stats.workerError, undefined);
    }
  } finally {
    setGemmImplementation('auto');
  }
});

test('one thread only when asked', () => {
  setGemmImplementation('own');
  setGemmThreads(1);
  try {
    const before = gemmThreadStats().jobs;
    check({ ctor: Float32Array, m: 200, n: 200, k: 200, transA: false, transB: false, alpha: 1, beta: 0, shared: true, pad: 0, offset: 0 }, 'one thread');
    // C above the tile cap: several tiles in turn on the calling thread.
    check({ ctor: Float64Array, m: 1500, n: 1500, k: 2, transA: true, transB: true, alpha: 2, beta: -1, shared: false, pad: 1, offset: 3 }, 'one thread');
    assert.equal(gemmThreadStats().jobs, before);
    assert.equal(gemmImplementation().threads, 1);
  } finally {
    setGemmThreads(undefined);
    setGemmImplementation('auto');
  }
});

test('degenerate shapes: m or n = 0 writes nothing, k = 0 or alpha = 0 gives beta·C', () => {
  for (const kind of HAVE_BLAS ? (['own', 'openblas'] as const) : (['own'] as const)) {
    setGemmImplementation(kind);
    try {
      const a = new Float64Array(16).fill(NaN);
      const b = new Float64Array(16).fill(NaN);
      const base = { transA: false, transB: false, a, aOffset: 0, lda: 4, b, bOffset: 0, ldb: 4, cOffset: 0, ldc: 4 };
      const c = new Float64Array(16).fill(2);
      gemm({ ...base, m: 0, n: 4, k: 4, alpha: 1, beta: 0, c });
      gemm({ ...base, m: 4, n: 0, k: 4, alpha: 1, beta: 0, c });
      assert.deepEqual([...c], new Array(16).fill(2));
      gemm({ ...base, m: 4, n: 4, k: 0, alpha: 1, beta: 3, c });
      assert.deepEqual([...c], new Array(16).fill(6));
      gemm({ ...base, m: 4, n: 4, k: 4, alpha: 0, beta: 0.5, c, lda: 4 });
      assert.deepEqual([...c], new Array(16).fill(3), 'alpha = 0 does not read A or B');
      c.fill(NaN);
      gemm({ ...base, m: 4, n: 4, k: 0, alpha: 1, beta: 0, c });
      assert.deepEqual([...c], new Array(16).fill(0));
    } finally {
      setGemmImplementation('auto');
    }
  }
});

test('bad arguments throw before any memory is touched', () => {
  const f32 = new Float32Array(64);
  const base = { transA: false, transB: false, m: 4, n: 4, k: 4, alpha: 1, beta: 0, a: f32, aOffset: 0, lda: 4, b: new Float32Array(64), bOffset: 0, ldb: 4, c: new Float32Array(64), cOffset: 0, ldc: 4 };
  assert.throws(() => gemm({ ...base, b: new Float64Array(64) } as unknown as AnyGemmArgs), TypeError);
  assert.throws(() => gemm({ ...base, lda: 3 }), /lda = 3/);
  assert.throws(() => gemm({ ...base, aOffset: 50 }), /needs 66 elements/);
  assert.throws(() => gemm({ ...base, transB: true, ldb: 21 }), /needs 67 elements/);
  assert.throws(() => gemm({ ...base, m: -1 }), RangeError);
  assert.throws(() => gemm({ ...base, c: f32, cOffset: 8 }), /C overlaps A/);
  assert.doesNotThrow(() => gemm({ ...base, c: f32, cOffset: 16, m: 4, aOffset: 0 } as AnyGemmArgs));
});

test('DSV3_BLAS=0 and DSV3_BLAS=own select the own kernel, read on every call', () => {
  const saved = process.env.DSV3_BLAS;
  try {
    for (const value of ['0', 'own']) {
      process.env.DSV3_BLAS = value;
      assert.equal(gemmImplementation().kind, 'own');
    }
    delete process.env.DSV3_BLAS;
    assert.equal(gemmImplementation().kind, HAVE_BLAS ? 'openblas' : 'own');
    const impl = gemmImplementation();
    assert.ok(impl.threads >= 1 && impl.detail.length > 0);
  } finally {
    if (saved === undefined) delete process.env.DSV3_BLAS;
    else process.env.DSV3_BLAS = saved;
  }
});

test('allocShared gives SharedArrayBuffer-backed arrays of the asked type', () => {
  const x = allocShared(Float32Array, 10);
  const y = allocShared(Float64Array, 3);
  assert.ok(x instanceof Float32Array && x.buffer instanceof SharedArrayBuffer && x.length === 10);
  assert.ok(y instanceof Float64Array && y.buffer instanceof SharedArrayBuffer && y.length === 3);
});
