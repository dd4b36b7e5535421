// Autotuned cuBLASLt algorithms (autotune.ts, used by matmul.ts and fp8-matmul.ts).
// Without a GPU (a simulated clock and context): the heuristic results are parsed by the struct's
// layout; the fastest median wins, over noise, failing candidates and a margin for the
// heuristic's first answer; the timed runs write only the scratch output, which is freed; no
// timing for small problems, under capture, or with DSV3_GEMM_AUTOTUNE=0.
// On the GPU: an autotuned BF16 GEMM and the FP8 block-scaled GEMM (which keeps the heuristic's first
// answer: timing made it slower) give the result of the heuristic's
// choice; beta = 1 (accumulate) adds the product once, whatever the timed runs did; the choice
// is made once per class (BF16) or shape (FP8) and then reused; and no timing happens under graph
// capture, with DSV3_GEMM_AUTOTUNE=0, or for a small problem.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  autotunedProblems, candidateCount, fastestAlgo, heuristicResults, usableAlgos, DEFAULT_CANDIDATES, MIN_AUTOTUNE_WORK,
} from '../../../src/backend/cuda/autotune.js';
import { HEURISTIC_RESULT_BYTES, HEURISTIC_ALGO_BYTES, HEURISTIC_WORKSPACE_OFFSET, HEURISTIC_STATE_OFFSET } from '../../../src/backend/cuda/ffi/cublaslt.js';
import type { CudaContext, CudaEvent } from '../../../src/backend/cuda/context.js';
import { CublasLtMatmul, type RowMajorGemm } from '../../../src/backend/cuda/matmul.js';
import { Fp8BlockScaledGemm, fp8GemmUnsupported, activationScalesToDevice, weightScalesToDevice } from '../../../src/backend/cuda/fp8-matmul.js';
import { quantizeTiles1x128, quantizeWeightBlocks128, dequantizeTiles1x128, dequantizeWeightBlocks128 } from '../../../src/fp8/quantize.js';
import { openGpu, seededRandom, randomNormal, roundBf16, uploadAs, downloadAs, assertClose, type Rng } from './gpu-helpers.js';

const { ctx, skip } = openGpu();
let fp8Skip: string | false = skip;
if (!fp8Skip && ctx) {
  const reason = fp8GemmUnsupported(ctx);
  if (reason) {
    console.log(`# skipping the FP8 autotuning test: ${reason}`);
    fp8Skip = reason;
  }
}
after(() => ctx?.dispose());

/** Run `body` with DSV3_GEMM_AUTOTUNE set to `value` (restored afterwards). */
function withAutotune<T>(value: string, body: () => T): T {
  const old = process.env.DSV3_GEMM_AUTOTUNE;
  process.env.DSV3_GEMM_AUTOTUNE = value;
  try {
    return body();
  } finally {
    if (old === undefined) delete process.env.DSV3_GEMM_AUTOTUNE;
    else process.env.DSV3_GEMM_AUTOTUNE = old;
  }
}

// ---- the selection logic, on a simulated clock (no GPU needed) ----------------------------------

/** A context whose events read a clock that the simulated launches advance. */
function simulatedContext() {
  const state = { clock: 0, allocs: [] as number[], frees: [] as number[], created: 0, destroyed: 0 };
  class SimEvent {
    at = NaN;
    record(): void {
      this.at = state.clock;
    }
    synchronize(): void {}
    elapsedSince(start: CudaEvent): number {
      return this.at - (start as unknown as SimEvent).at;
    }
    destroy(): void {
      state.destroyed++;
    }
  }
  let next = 0x10000;
  const sim = {
    alloc(bytes: number): number {
      const p = next;
      next += Math.ceil(bytes / 256) * 256 + 256;
      state.allocs.push(p);
      return p;
    },
    free(ptr: number): void {
      state.frees.push(ptr);
    },
    createEvent(): CudaEvent {
      state.created++;
      return new SimEvent() as unknown as CudaEvent;
    },
  };
  return { sim: sim as Pick<CudaContext, 'alloc' | 'free' | 'createEvent'>, state };
}

/** Candidates told apart by their first byte. */
const algoList = (n: number) => Array.from({ length: n }, (_, i) => Buffer.alloc(HEURISTIC_ALGO_BYTES, i));

test('autotune: heuristic results are read by the struct layout (state, workspace, 64 algorithm bytes)', () => {
  const results = heuristicResults(5);
  assert.equal(results.length, 5 * HEURISTIC_RESULT_BYTES);
  const workspace = 1 << 20;
  const fill = (i: number, state: number, ws: number) => {
    const at = i * HEURISTIC_RESULT_BYTES;
    results.fill(0x10 + i, at, at + HEURISTIC_ALGO_BYTES);
    results.writeBigUInt64LE(BigInt(ws), at + HEURISTIC_WORKSPACE_OFFSET);
    results.writeInt32LE(state, at + HEURISTIC_STATE_OFFSET);
  };
  fill(0, 0, 0);
  fill(1, 15, 0); // CUBLAS_STATUS_NOT_SUPPORTED
  fill(2, 0, workspace + 1); // over the workspace
  fill(3, 0, workspace);
  fill(4, 0, 0); // beyond `returned`
  const algos = usableAlgos(results, 4, workspace);
  assert.deepEqual(algos.map((a) => [a.length, a[0], a[HEURISTIC_ALGO_BYTES - 1]]), [[64, 0x10, 0x10], [64, 0x13, 0x13]]);
  results.fill(0); // copies, not views of the results buffer
  assert.equal(algos[1]![0], 0x13);
});

test('autotune: the fastest median wins; refused candidates are dropped; only the scratch output is written, then freed', () => {
  const { sim, state } = simulatedContext();
  const algos = algoList(5);
  // ms per launch; #2 is refused at the warm-up, #3 (the fastest) at its third call, #4 has one slow outlier sample
  const cost = [1.0, 0.6, 0.3, 0.1, 0.5];
  const calls = [0, 0, 0, 0, 0];
  const outputs = new Set<number>();
  const before = autotunedProblems();
  const chosen = fastestAlgo(sim, algos, 4096, (algo, out) => {
    const i = algo[0]!;
    outputs.add(out);
    calls[i]!++;
    if (i === 2 || (i === 3 && calls[i] === 3)) return 15;
    state.clock += i === 4 && calls[i] === 2 ? 10 : cost[i]!;
    return 0;
  }, 2 ** 36, 'simulated');
  assert.equal(chosen[0], 4);
  assert.equal(autotunedProblems(), before + 1);
  assert.deepEqual(calls, [4, 4, 1, 3, 4], 'one warm-up and three timed launches each, none after a refusal');
  assert.deepEqual([...outputs], state.allocs, 'every run writes the scratch output');
  assert.deepEqual(state.frees, state.allocs, 'the scratch output is freed');
  assert.equal(state.destroyed, state.created, 'every event is destroyed');
});

test('autotune: small problems take several launches per sample; a candidate must beat the first by 1%', () => {
  for (const [second, want] of [[0.995, 0], [0.98, 1]] as const) {
    const { sim, state } = simulatedContext();
    const cost = [1, second];
    const calls = [0, 0];
    const chosen = fastestAlgo(sim, algoList(2), 1024, (algo) => {
      calls[algo[0]!]!++;
      state.clock += cost[algo[0]!]!;
      return 0;
    }, MIN_AUTOTUNE_WORK, 'simulated');
    assert.deepEqual(calls, [13, 13], 'a warm-up launch, then 3 samples of 4 launches each');
    assert.equal(chosen[0], want, `second candidate at ${second} of the first's time`);
  }
});

test('autotune: nothing to time with one candidate, every candidate refused, or no memory for the scratch output', () => {
  const { sim, state } = simulatedContext();
  const before = autotunedProblems();
  const one = algoList(1);
  assert.equal(fastestAlgo(sim, one, 1024, () => assert.fail('one candidate is not timed'), 2 ** 36, 'x'), one[0]);
  assert.equal(state.allocs.length, 0);
  const refused = algoList(3);
  assert.equal(fastestAlgo(sim, refused, 1024, () => 15, 2 ** 36, 'x'), refused[0]);
  assert.deepEqual(state.frees, state.allocs);
  const noMemory = { ...sim, alloc: () => { throw new Error('cuMemAllocAsync failed: CUDA_ERROR_OUT_OF_MEMORY'); } };
  assert.equal(fastestAlgo(noMemory, refused, 1024, () => assert.fail('no launch without a scratch output'), 2 ** 36, 'x'), refused[0]);
  assert.equal(autotunedProblems(), before + 1, 'only the refused set was timed');
});

test('autotune: candidates are asked for only for large problems, outside capture, unless DSV3_GEMM_AUTOTUNE=0', () => {
  const idle = { isCapturing: false }, capturing = { isCapturing: true };
  withAutotune('1', () => {
    assert.equal(candidateCount(idle, MIN_AUTOTUNE_WORK), DEFAULT_CANDIDATES);
    assert.equal(candidateCount(idle, MIN_AUTOTUNE_WORK - 1), 1);
    assert.equal(candidateCount(capturing, 2 ** 40), 1);
  });
  withAutotune('0', () => assert.equal(candidateCount(idle, 2 ** 40), 1));
  withAutotune('16', () => assert.equal(candidateCount(idle, 2 ** 40), 16));
  withAutotune('', () => assert.equal(candidateCount(idle, 2 ** 40), DEFAULT_CANDIDATES));
});

// ---- on the GPU ---------------------------------------------------------------------------------

/** `count` random entries of C = alpha·A·Bᵀ + beta·C0 (A [M, K], B [N, K] row-major) in FP64, with their indices. */
function sampledReference(rng: Rng, a: Float32Array, b: Float32Array, c0: Float32Array, M: number, N: number, K: number, beta: number, count = 256) {
  const at: number[] = [], want: number[] = [];
  for (let s = 0; s < count; s++) {
    const i = rng.int(0, M - 1), j = rng.int(0, N - 1);
    let sum = 0;
    for (let k = 0; k < K; k++) sum += a[i * K + k]! * b[j * K + k]!;
    at.push(i * N + j);
    want.push(sum + beta * c0[i * N + j]!);
  }
  return { at, want };
}

const pick = (x: Float32Array, at: number[]) => at.map((i) => x[i]!);

test('an autotuned BF16 GEMM equals the heuristic\'s choice; beta = 1 adds the product once; the choice is kept for the class', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const M = 2048, N = 2048, K = 2048; // 2^33 multiply-adds: timed
  const x = roundBf16(randomNormal(rng, M * K)), w = roundBf16(randomNormal(rng, N * K, 0.05));
  const c0 = randomNormal(rng, M * N);
  const px = uploadAs(c, 'bf16', x), pw = uploadAs(c, 'bf16', w);
  const cHeuristic = uploadAs(c, 'f32', c0), cTuned = uploadAs(c, 'f32', c0), cAgain = uploadAs(c, 'f32', c0);
  const g: RowMajorGemm = { m: M, n: N, k: K, abType: 'bf16', cType: 'f32', transA: false, transB: true, lda: K, ldb: K, ldc: N };
  const heuristic = new CublasLtMatmul(c), tuned = new CublasLtMatmul(c);
  try {
    const before = autotunedProblems();
    withAutotune('0', () => heuristic.run(g, px, pw, cHeuristic, 1, 1));
    assert.equal(autotunedProblems(), before, 'DSV3_GEMM_AUTOTUNE=0: no timing');
    let t0 = performance.now();
    withAutotune('1', () => tuned.run(g, px, pw, cTuned, 1, 1));
    c.synchronize();
    const firstMs = performance.now() - t0;
    assert.equal(autotunedProblems(), before + 1, 'the first problem of a large class is timed');
    t0 = performance.now();
    withAutotune('1', () => tuned.run(g, px, pw, cAgain, 1, 1));
    c.synchronize();
    console.log(`# BF16 ${M}×${N}×${K}: first call (plan and timing) ${firstMs.toFixed(1)} ms, second ${(performance.now() - t0).toFixed(2)} ms (host)`);
    assert.equal(autotunedProblems(), before + 1, 'the same problem again: the plan is reused');

    const got = downloadAs(c, 'f32', cTuned, M * N), want = downloadAs(c, 'f32', cHeuristic, M * N);
    assertClose('BF16 C += A·Bᵀ, autotuned against the heuristic\'s algorithm', got, want, 1e-4, rng.seed);
    assertClose('BF16 C += A·Bᵀ, the same call again', downloadAs(c, 'f32', cAgain, M * N), got, 1e-4, rng.seed);
    // beta = 1: C0 + product exactly once (timed runs that wrote C would have added it several times)
    const ref = sampledReference(rng, x, w, c0, M, N, K, 1);
    assertClose('BF16 C += A·Bᵀ, autotuned, against FP64', pick(got, ref.at), ref.want, 1e-4, rng.seed);

    // Another M of the same class (2000 rounds up to 2048): the class's algorithm, no new timing.
    const M2 = 2000;
    const c2 = uploadAs(c, 'f32', c0.subarray(0, M2 * N));
    withAutotune('1', () => tuned.run({ ...g, m: M2 }, px, pw, c2, 1, 0));
    assert.equal(autotunedProblems(), before + 1, 'M = 2000 shares the algorithm timed for M = 2048');
    const ref2 = sampledReference(rng, x, w, c0, M2, N, K, 0);
    assertClose(`BF16 ${M2}×${N}×${K} with the class's algorithm, against FP64`, pick(downloadAs(c, 'f32', c2, M2 * N), ref2.at), ref2.want, 1e-4, rng.seed);
    c.free(c2);
  } finally {
    heuristic.dispose();
    tuned.dispose();
    for (const p of [px, pw, cHeuristic, cTuned, cAgain]) c.free(p);
  }
});

test('no timing under graph capture, for a small problem, or with DSV3_GEMM_AUTOTUNE=0', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const M = 2048, N = 3072, K = 2048;
  const x = roundBf16(randomNormal(rng, M * K)), w = roundBf16(randomNormal(rng, N * K, 0.05));
  const px = uploadAs(c, 'bf16', x), pw = uploadAs(c, 'bf16', w), pc = c.alloc(4 * M * N);
  const g: RowMajorGemm = { m: M, n: N, k: K, abType: 'bf16', cType: 'f32', transA: false, transB: true, lda: K, ldb: K, ldc: N };
  const matmul = new CublasLtMatmul(c);
  try {
    const before = autotunedProblems();
    withAutotune('1', () => {
      // a new large class first seen while capturing: the heuristic's answer, no synchronisation
      const graph = c.capture(() => matmul.run(g, px, pw, pc));
      assert.equal(autotunedProblems(), before, 'no timing while capturing');
      c.memset8(pc, 0, 4 * M * N);
      graph.launch();
      const ref = sampledReference(rng, x, w, new Float32Array(M * N), M, N, K, 0);
      assertClose('BF16 GEMM captured and replayed, against FP64', pick(downloadAs(c, 'f32', pc, M * N), ref.at), ref.want, 1e-4, rng.seed);
      graph.destroy();
      // small: 256·512·512 = 2^26 multiply-adds
      matmul.run({ m: 256, n: 512, k: 512, abType: 'bf16', cType: 'f32', transA: false, transB: true, lda: K, ldb: K, ldc: 512 }, px, pw, pc);
      assert.equal(autotunedProblems(), before, 'no timing for a small problem');
    });
    withAutotune('0', () => matmul.run({ ...g, n: 2048, ldc: 2048 }, px, pw, pc));
    assert.equal(autotunedProblems(), before, 'no timing with DSV3_GEMM_AUTOTUNE=0');
    c.synchronize();
  } finally {
    matmul.dispose();
    for (const p of [px, pw, pc]) c.free(p);
  }
});

test('the FP8 block-scaled GEMM is never timed (it keeps the heuristic\'s first algorithm), accumulates once, and reuses its plan', { skip: fp8Skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const M = 2048, N = 2048, K = 2048;
  const qa = quantizeTiles1x128(randomNormal(rng, M * K), M, K), qw = quantizeWeightBlocks128(randomNormal(rng, N * K, 0.05), N, K);
  const a = c.upload(qa.codes), b = c.upload(qw.codes);
  const aScale = c.upload(activationScalesToDevice(qa.scaleInv, M, K)), bScale = c.upload(weightScalesToDevice(qw.scaleInv, N, K));
  const d0 = randomNormal(rng, M * N, 10);
  const dHeuristic = uploadAs(c, 'f32', d0), dTuned = uploadAs(c, 'f32', d0), dAgain = uploadAs(c, 'f32', d0);
  const args = { M, N, K, a, aScale, b, bScale, dType: 'f32' as const, accumulate: true };
  const heuristic = new Fp8BlockScaledGemm(c), tuned = new Fp8BlockScaledGemm(c);
  try {
    const before = autotunedProblems();
    withAutotune('0', () => heuristic.run({ ...args, d: dHeuristic }));
    assert.equal(autotunedProblems(), before, 'DSV3_GEMM_AUTOTUNE=0: no timing');
    withAutotune('1', () => tuned.run({ ...args, d: dTuned }));
    const timed = autotunedProblems() - before;
    assert.equal(timed, 0, 'FP8 keeps the heuristic\'s first algorithm: nothing is timed');
    withAutotune('1', () => tuned.run({ ...args, d: dAgain }));
    assert.equal(autotunedProblems() - before, timed, 'the same shape again: the plan is reused');

    const got = downloadAs(c, 'f32', dTuned, M * N);
    // Different algorithms may add FP8 products in a different order inside a 128-block (narrow accumulator).
    assertClose('FP8 D += A·Bᵀ, autotuned against the heuristic\'s algorithm', got, downloadAs(c, 'f32', dHeuristic, M * N), 8e-3, rng.seed);
    assertClose('FP8 D += A·Bᵀ, the same call again', downloadAs(c, 'f32', dAgain, M * N), got, 1e-6, rng.seed);
    const ref = sampledReference(rng, dequantizeTiles1x128(qa.codes, qa.scaleInv, M, K), dequantizeWeightBlocks128(qw.codes, qw.scaleInv, N, K), d0, M, N, K, 1);
    assertClose('FP8 D += A·Bᵀ, autotuned, against FP64', pick(got, ref.at), ref.want, 8e-3, rng.seed);
  } finally {
    heuristic.dispose();
    tuned.dispose();
    for (const p of [a, b, aScale, bScale, dHeuristic, dTuned, dAgain]) c.free(p);
  }
});
