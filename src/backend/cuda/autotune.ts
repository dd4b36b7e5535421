// Autotuning of cuBLASLt algorithms, shared by the BF16/FP32 GEMMs (matmul.ts) and the
// block-scaled FP8 GEMM (fp8-matmul.ts). cuBLASLt's heuristic ranks algorithms by a model of
// the GPU, and its first answer is not always the fastest on large GEMMs; so when a plan is made
// for a large problem the heuristic is asked for several candidates, each is timed on the stream
// with CUDA events, and the fastest is kept in the plan (and, in matmul.ts, for the problem class).
//
// The timed runs read the caller's A and B (and scales) and write a scratch output from the
// context's pool: the caller's C/D, which may be accumulated into (beta = 1), is never touched.
// No timing (the heuristic's first answer, asked for alone as before) when:
//   - the problem is small (m·n·k·batch < 2^32): a GEMM shorter than the ~10 µs the host takes to
//     enqueue one would be timed by the host, and small GEMMs gain little;
//   - the stream is being captured into a CUDA graph (no synchronisation, no allocation then);
//   - DSV3_GEMM_AUTOTUNE=0. A number n ≥ 2 there asks for up to n candidates (default 8), and
//     DSV3_GEMM_AUTOTUNE_LOG=1 prints each choice with its timings to stderr.
// Timing: one warm-up launch per candidate (an algorithm cuBLASLt refuses at launch is dropped),
// then three rounds over all candidates, each sample 1–4 launches long; the fastest median wins,
// unless it beats the heuristic's first answer by less than 1% (noise: keep the first).

import {
  HEURISTIC_RESULT_BYTES, HEURISTIC_ALGO_BYTES, HEURISTIC_WORKSPACE_OFFSET, HEURISTIC_STATE_OFFSET,
} from './ffi/cublaslt.js';
import type { CudaContext, CudaEvent } from './context.js';

/** Candidates asked of the heuristic by default. */
export const DEFAULT_CANDIDATES = 8;
const MAX_CANDIDATES = 64;
/** Problems below this many multiply-adds are not timed. */
export const MIN_AUTOTUNE_WORK = 2 ** 32;
/** Multiply-adds timed per sample: 4 launches of the smallest tuned problem, one of a large one. */
const SAMPLE_WORK = 2 ** 34;
const MAX_LAUNCHES_PER_SAMPLE = SAMPLE_WORK / MIN_AUTOTUNE_WORK;
const TIMED_ROUNDS = 3;
/** A candidate must beat the heuristic's first answer by this fraction to replace it. */
const MARGIN = 0.01;

let tuned = 0;

/** Problems timed so far in this process (for tests and diagnostics). */
export function autotunedProblems(): number {
  return tuned;
}

/** How many algorithms to ask the heuristic for: 1 when a problem of `work` multiply-adds is not to be timed. */
export function candidateCount(ctx: Pick<CudaContext, 'isCapturing'>, work: number): number {
  const env = process.env.DSV3_GEMM_AUTOTUNE?.trim();
  if (env === '0' || ctx.isCapturing || work < MIN_AUTOTUNE_WORK) return 1;
  const n = Number(env);
  return env && Number.isInteger(n) && n >= 2 ? Math.min(n, MAX_CANDIDATES) : DEFAULT_CANDIDATES;
}

/** Room for `count` cublasLtMatmulHeuristicResult_t. */
export function heuristicResults(count: number): Buffer {
  return Buffer.alloc(count * HEURISTIC_RESULT_BYTES);
}

/** The algorithms (64-byte cublasLtMatmulAlgo_t copies) of the first `returned` results that succeeded and fit the workspace, best first. */
export function usableAlgos(results: Buffer, returned: number, workspaceBytes: number): Buffer[] {
  const algos: Buffer[] = [];
  for (let i = 0; i < returned; i++) {
    const at = i * HEURISTIC_RESULT_BYTES;
    if (results.readInt32LE(at + HEURISTIC_STATE_OFFSET) !== 0) continue;
    if (Number(results.readBigUInt64LE(at + HEURISTIC_WORKSPACE_OFFSET)) > workspaceBytes) continue;
    algos.push(Buffer.from(results.subarray(at, at + HEURISTIC_ALGO_BYTES)));
  }
  return algos;
}

/**
 * The fastest of `algos` (best first, as the heuristic ranks them) for a problem of `work`
 * multiply-adds: `launch(algo, out)` enqueues the GEMM with that algorithm on the stream, writing
 * `out` (a scratch buffer of `outBytes`), and returns the cublasStatus_t. Synchronises the stream.
 * Returns algos[0] when there is nothing to choose, no memory for the scratch output, or every
 * candidate fails (the caller's own launch then reports the error).
 */
export function fastestAlgo(
  ctx: Pick<CudaContext, 'alloc' | 'free' | 'createEvent'>, algos: readonly Buffer[], outBytes: number,
  launch: (algo: Buffer, out: number) => number, work: number, label: string,
): Buffer {
  if (algos.length < 2) return algos[0]!;
  let out: number;
  try {
    out = ctx.alloc(outBytes);
  } catch {
    return algos[0]!; // out of memory: not worth failing the GEMM for
  }
  const events: CudaEvent[] = [];
  try {
    const mark = (): CudaEvent => {
      const e = ctx.createEvent();
      events.push(e);
      e.record();
      return e;
    };
    const launches = Math.min(MAX_LAUNCHES_PER_SAMPLE, Math.max(1, Math.ceil(SAMPLE_WORK / work)));
    const failed = algos.map((algo) => launch(algo, out) !== 0); // warm-up
    const samples: { i: number; start: CudaEvent; end: CudaEvent }[] = [];
    let last = mark();
    for (let round = 0; round < TIMED_ROUNDS; round++) {
      for (let i = 0; i < algos.length; i++) {
        if (failed[i]) continue;
        let ok = true;
        for (let r = 0; r < launches && ok; r++) ok = launch(algos[i]!, out) === 0;
        const end = mark();
        if (ok) samples.push({ i, start: last, end });
        else failed[i] = true;
        last = end;
      }
    }
    last.synchronize();
    const times: number[][] = algos.map(() => []);
    for (const s of samples) times[s.i]!.push(s.end.elapsedSince(s.start) / launches);
    const medians = times.map((t, i) => (failed[i] || t.length === 0 ? Infinity : t.sort((x, y) => x - y)[t.length >> 1]!));
    let best = 0;
    for (let i = 1; i < medians.length; i++) if (medians[i]! < medians[best]!) best = i;
    if (best !== 0 && medians[best]! > (1 - MARGIN) * medians[0]!) best = 0;
    tuned++;
    if (process.env.DSV3_GEMM_AUTOTUNE_LOG === '1') {
      console.error(`dsv3 GEMM autotune ${label}: ${medians.map((ms) => (ms === Infinity ? 'failed' : `${(ms * 1000).toFixed(1)}µs`)).join(' ')} → #${best}`);
    }
    return algos[best]!;
  } finally {
    for (const e of events) e.destroy();
    ctx.free(out);
  }
}
