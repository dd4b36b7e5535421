// Host time per enqueued GPU operation, ours (koffi → driver API / cuBLASLt) against PyTorch's
// (Python → ATen) on the same machine and GPU: where a training or decode step is bound by the host,
// this is its price per launch. Each figure is the best of --runs runs of --calls back-to-back calls
// with no synchronisation between them (the GPU work per call is smaller than the host's, so the
// queue never fills), in microseconds of host wall time per call:
//   add        y += x over 4096 BF16 elements (our add_inplace kernel; torch's x.add_(y))
//   gemm       a BF16 GEMM [M, 1024] × [1024, 384]ᵀ at M = 4096 and M = 1 (our cuBLASLt plan; torch.mm)
//   fp8        the block-scaled FP8 GEMM at M = 4096, with the same scales every call and with two
//              sets of scales taking turns (which changes the cuBLASLt descriptor each call; ours only)
// Prints a table, appends a line to bench/RESULTS.md and writes $OUT/host-overhead.json when OUT is set.
//
//   node dist/bench/host-overhead.js [--calls 2000] [--runs 3] [--no-torch]

import { CudaContext } from '../src/backend/cuda/context.js';
import { CublasLtMatmul } from '../src/backend/cuda/matmul.js';
import { activationScaleLayout, Fp8BlockScaledGemm, fp8GemmUnsupported, weightScaleLayout } from '../src/backend/cuda/fp8-matmul.js';
import * as ops from '../src/backend/cuda/ops.js';
import { appendResult, gitCommit, parseFlags, printTable, runPythonJson, writeJson } from './common.js';

const flags = parseFlags({ integers: { calls: [2000, 100], runs: [3, 1] }, booleans: ['no-torch'] });
const CALLS = flags.calls, RUNS = flags.runs;

const ctx = CudaContext.create(0);
const gpu = ctx.describe().name;
const matmul = new CublasLtMatmul(ctx);
const K = 1024, N = 384, MAX_M = 4096;
const x = ctx.alloc(2 * MAX_M * K), w = ctx.alloc(2 * N * K), y = ctx.alloc(2 * MAX_M * N);
for (const p of [x, w, y]) ctx.memset8(p, 0x3c, 2 * (p === w ? N * K : p === x ? MAX_M * K : MAX_M * N)); // BF16 0x3c3c ≈ 0.0115: finite, not zero

/** Best-of-RUNS host microseconds per call of `body` (CALLS calls, synchronised before and after). */
function hostMicroseconds(body: () => void): number {
  body(); // plans, modules and allocations made outside the timed calls
  let best = Infinity;
  for (let r = 0; r < RUNS; r++) {
    ctx.synchronize();
    const t0 = performance.now();
    for (let i = 0; i < CALLS; i++) body();
    best = Math.min(best, ((performance.now() - t0) * 1000) / CALLS);
  }
  ctx.synchronize();
  return best;
}

const gemm = (m: number) => () => matmul.run({ m, n: N, k: K, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: K, ldb: K, ldc: N }, x, w, y);
const ours = {
  add: hostMicroseconds(() => ops.addInPlace(ctx, 'bf16', y, x, 1, 4096)),
  gemm4096: hostMicroseconds(gemm(4096)),
  gemm1: hostMicroseconds(gemm(1)),
  fp8Same: null as number | null,
  fp8Alternating: null as number | null,
};
if (!fp8GemmUnsupported(ctx)) {
  const fp8 = new Fp8BlockScaledGemm(ctx);
  // codes and scales of 0x3c bytes: E4M3 1.5, FP32 scales ≈ 0.0115 (finite, not zero)
  const a = ctx.alloc(MAX_M * K), b = ctx.alloc(N * K);
  const aScales = [0, 1].map(() => ctx.alloc(4 * activationScaleLayout(MAX_M, K).elements));
  const bScales = [0, 1].map(() => ctx.alloc(4 * weightScaleLayout(N, K).elements));
  for (const p of [a, b]) ctx.memset8(p, 0x3c, p === a ? MAX_M * K : N * K);
  for (const p of aScales) ctx.memset8(p, 0x3c, 4 * activationScaleLayout(MAX_M, K).elements);
  for (const p of bScales) ctx.memset8(p, 0x3c, 4 * weightScaleLayout(N, K).elements);
  let turn = 0;
  const fp8Gemm = (alternate: boolean) => () => {
    const s = alternate ? turn++ & 1 : 0;
    fp8.run({ M: MAX_M, N, K, a, aScale: aScales[s]!, b, bScale: bScales[s]!, d: y, dType: 'bf16' });
  };
  ours.fp8Same = hostMicroseconds(fp8Gemm(false));
  ours.fp8Alternating = hostMicroseconds(fp8Gemm(true));
  fp8.dispose();
  for (const p of [a, b, ...aScales, ...bScales]) ctx.free(p);
}
matmul.dispose();
for (const p of [x, w, y]) ctx.free(p);
ctx.dispose();

interface TorchResult {
  torch: string;
  add_us: number;
  gemm4096_us: number;
  gemm1_us: number;
}
let torch: TorchResult | null = null;
let torchNote = 'not run (--no-torch)';
if (!flags['no-torch']) {
  const run = runPythonJson<TorchResult>('host_overhead_torch.py', ['--calls', String(CALLS), '--runs', String(RUNS)], { timeoutS: 120 });
  torch = run.result;
  torchNote = run.failure ?? `torch ${run.result.torch}`;
}

const commit = gitCommit();
const fmt = (v: number | null | undefined) => (v === undefined || v === null ? 'n/a' : v.toFixed(1));
const rows: [string, number | null, number | undefined][] = [
  ['add (4096 BF16)', ours.add, torch?.add_us],
  ['GEMM 4096×384×1024', ours.gemm4096, torch?.gemm4096_us],
  ['GEMM 1×384×1024', ours.gemm1, torch?.gemm1_us],
  ['FP8 GEMM 4096×384×1024, same scales', ours.fp8Same, undefined],
  ['FP8 GEMM 4096×384×1024, scales alternate', ours.fp8Alternating, undefined],
];
console.log(`host µs per enqueued call, best of ${RUNS} × ${CALLS} calls — ${gpu}, commit ${commit}; torch: ${torchNote}`);
printTable(['call', 'ours µs', 'torch µs'], rows.map(([name, o, t]) => [name, fmt(o), fmt(t)]), 1);
appendResult(gpu, commit, `host-overhead µs per call ours/torch: ${rows.map(([name, o, t]) => `${name} ${fmt(o)}/${fmt(t)}`).join('; ')}`);
writeJson('host-overhead', { bench: 'host-overhead', date: new Date().toISOString(), gpu, commit, calls: CALLS, runs: RUNS, ours, torch, torchNote });
