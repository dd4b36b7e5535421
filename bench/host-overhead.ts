// Host time per enqueued GPU operation, ours (koffi → driver API / cuBLASLt) against PyTorch's
// (Python → ATen) on the same machine and GPU: where a training or decode step is bound by the host,
// this is its price per launch. Each figure is the best of --runs runs of --calls back-to-back calls
// with no synchronisation between them (the GPU work per call is smaller than the host's, so the
// queue never fills), in microseconds of host wall time per call:
//   add        y += x over 4096 BF16 elements (our add_inplace kernel; torch's x.add_(y))
//   gemm       a BF16 GEMM [M, 1024] × [1024, 384]ᵀ at M = 4096 and M = 1 (our cuBLASLt plan; torch.mm)
// Prints a table, appends a line to bench/RESULTS.md and writes $OUT/host-overhead.json when OUT is set.
//
//   node dist/bench/host-overhead.js [--calls 2000] [--runs 3] [--no-torch]

import { CudaContext } from '../src/backend/cuda/context.js';
import { CublasLtMatmul } from '../src/backend/cuda/matmul.js';
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
};
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
const fmt = (v: number | undefined) => (v === undefined ? 'n/a' : v.toFixed(1));
const rows: [string, number, number | undefined][] = [
  ['add (4096 BF16)', ours.add, torch?.add_us],
  ['GEMM 4096×384×1024', ours.gemm4096, torch?.gemm4096_us],
  ['GEMM 1×384×1024', ours.gemm1, torch?.gemm1_us],
];
console.log(`host µs per enqueued call, best of ${RUNS} × ${CALLS} calls — ${gpu}, commit ${commit}; torch: ${torchNote}`);
printTable(['call', 'ours µs', 'torch µs'], rows.map(([name, o, t]) => [name, fmt(o), fmt(t)]), 1);
appendResult(gpu, commit, `host-overhead µs per call ours/torch: ${rows.map(([name, o, t]) => `${name} ${fmt(o)}/${fmt(t)}`).join('; ')}`);
writeJson('host-overhead', { bench: 'host-overhead', date: new Date().toISOString(), gpu, commit, calls: CALLS, runs: RUNS, ours, torch, torchNote });
