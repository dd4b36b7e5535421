// GEMM throughput on the GPU, ours against PyTorch in one run on one machine (DESIGN §10):
//   BF16: y[M, N] = x[M, K] · W[N, K]ᵀ through our cuBLASLt plan (matmul.ts) against torch.matmul(x, W.t())
//   FP8:  the same product from E4M3 operands with 1×128 activation and 128×128 weight scales, our
//         cuBLASLt block-scaled GEMM (fp8-matmul.ts) against torch._scaled_mm with blockwise scales
// at DeepSeek-V3's projection shapes with M = 4096 tokens. Each figure is the median over ≥ 20
// iterations timed with CUDA events after warm-up, then the median over --rounds rounds in which ours and
// PyTorch alternate; quantization is outside the timed region for both.
// Prints a table, appends a line to bench/RESULTS.md, writes $OUT/gpu-gemm.json when OUT is set and
// prints the figures as JSON on the last line of stdout.
//
//   node dist/bench/gpu-gemm.js [--iters 30] [--warmup 10] [--rounds 2] [--shapes 4096x24576x1536,...] [--no-torch]
//   (shapes are M×N×K)

import { CudaContext } from '../src/backend/cuda/context.js';
import { CublasLtMatmul } from '../src/backend/cuda/matmul.js';
import {
  Fp8BlockScaledGemm, fp8GemmUnsupported, quantizeActivations1x128, quantizeWeights128x128, activationScaleLayout, weightScaleLayout,
} from '../src/backend/cuda/fp8-matmul.js';
import { appendResult, Bf16Pool, EventTimer, gitCommit, median, parseFlags, printTable, runPythonJson, writeJson } from './common.js';

// DeepSeek-V3's q_b (24576×1536), kv_b (32768×512), o_proj (7168×16384), a fused gate/up pair of
// the shared expert (4096×7168) and an expert's down projection (7168×2048), at M = 4096; then
// o_proj's transpose orientation (N = 16384, K = 7168) as a wide-output case.
const DEFAULT_SHAPES = '4096x24576x1536,4096x32768x512,4096x7168x16384,4096x4096x7168,4096x7168x2048,4096x16384x7168';

const flags = parseFlags({ integers: { iters: [30, 20], warmup: [10, 1], rounds: [2, 1] }, strings: { shapes: DEFAULT_SHAPES }, booleans: ['no-torch'] });
const ITERS = flags.iters, WARMUP = flags.warmup, ROUNDS = flags.rounds;
const shapes = flags.shapes.split(',').map((s) => {
  const dims = s.toLowerCase().split('x').map(Number);
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d > 0)) throw new Error(`--shapes: "${s}" is not M×N×K (e.g. 4096x7168x2048)`);
  return { M: dims[0]!, N: dims[1]!, K: dims[2]! };
});

// ---- measuring ---------------------------------------------------------------------------------

const tflops = (M: number, N: number, K: number, ms: number) => (2 * M * N * K) / (ms * 1e-3) / 1e12;

interface Row {
  M: number;
  N: number;
  K: number;
  /** TFLOP/s, the median over the rounds; null where the measurement failed (see errors). */
  oursBf16: number | null;
  oursFp8: number | null;
  torchBf16: number | null;
  torchFp8: number | null;
  /** Each round's figures, in the order measured. */
  rounds: { oursBf16: number | null; oursFp8: number | null; torchBf16: number | null; torchFp8: number | null }[];
  errors: string[];
}

const rows: Row[] = shapes.map(({ M, N, K }) => ({ M, N, K, oursBf16: null, oursFp8: null, torchBf16: null, torchFp8: null, rounds: [], errors: [] }));
let device: ReturnType<CudaContext['describe']> | null = null;

/** Our figures for every shape (a fresh context, disposed before PyTorch runs). */
function measureOurs(): { bf16: number | null; fp8: number | null; errors: string[] }[] {
  const ctx = CudaContext.create(0);
  device = ctx.describe();
  const timer = new EventTimer(ctx, ITERS, WARMUP);
  // Random BF16 data: pools of normals tiled over each buffer, one pool for activations and another
  // for weights (from one shared pool, x and W held shifted copies of the same rows).
  const normalPool = () => {
    const v = new Float32Array(1 << 22);
    for (let i = 0; i < v.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log(1 - Math.random())), t = 2 * Math.PI * Math.random();
      v[i] = r * Math.cos(t);
      v[i + 1] = r * Math.sin(t);
    }
    return new Bf16Pool(ctx, v);
  };
  const pools = [normalPool(), normalPool()];
  const randomBf16 = (n: number, pool: Bf16Pool) => {
    const ptr = ctx.alloc(2 * n);
    pool.fill(ptr, n);
    return ptr;
  };
  const matmul = new CublasLtMatmul(ctx);
  const fp8Reason = fp8GemmUnsupported(ctx);
  const fp8 = fp8Reason ? null : new Fp8BlockScaledGemm(ctx);
  const out = shapes.map(({ M, N, K }) => {
    const r = { bf16: null as number | null, fp8: null as number | null, errors: [] as string[] };
    const x = randomBf16(M * K, pools[0]!), w = randomBf16(N * K, pools[1]!), y = ctx.alloc(2 * M * N);
    try {
      r.bf16 = tflops(M, N, K, timer.time(() => matmul.run({ m: M, n: N, k: K, abType: 'bf16', cType: 'bf16', transA: false, transB: true, lda: K, ldb: K, ldc: N }, x, w, y)));
    } catch (e) {
      r.errors.push(`ours bf16: ${(e as Error).message}`);
    }
    if (fp8) {
      const aLayout = activationScaleLayout(M, K), bLayout = weightScaleLayout(N, K);
      const a = ctx.alloc(M * K), b = ctx.alloc(N * K), aScale = ctx.alloc(4 * aLayout.elements), bScale = ctx.alloc(4 * bLayout.elements);
      try {
        quantizeActivations1x128(ctx, { rows: M, cols: K, input: x, inputType: 'bf16', codes: a, scales: aScale });
        quantizeWeights128x128(ctx, { rows: N, cols: K, input: w, inputType: 'bf16', codes: b, scales: bScale });
        r.fp8 = tflops(M, N, K, timer.time(() => fp8.run({ M, N, K, a, aScale, b, bScale, d: y, dType: 'bf16' })));
      } catch (e) {
        r.errors.push(`ours fp8: ${(e as Error).message}`);
      }
      for (const p of [a, b, aScale, bScale]) ctx.free(p);
    } else {
      r.errors.push(`ours fp8: ${fp8Reason}`);
    }
    for (const p of [x, w, y]) ctx.free(p);
    ctx.synchronize();
    return r;
  });
  fp8?.dispose();
  matmul.dispose();
  timer.destroy();
  for (const p of pools) p.free();
  ctx.dispose();
  return out;
}

// ---- PyTorch, in its own process after ours released the GPU ----------------------------------

interface TorchRow {
  M: number;
  N: number;
  K: number;
  bf16_ms: number | null;
  fp8_ms: number | null;
  fp8_max_rel_err: number | null;
  error: string | null;
}
interface TorchResult {
  torch: string;
  cuda: string;
  device: string;
  fp8_api: string;
  rows: TorchRow[];
}

// Ours and PyTorch alternate, round after round, so that neither always runs on a GPU that has just
// been idle (or hot): a single ours-then-torch order measured the same cuBLASLt kernel up to 13%
// apart on the same shape (2026-11-30; Nsight Compute timed it within 0.3%).
let torchNote = flags['no-torch'] ? 'not run (--no-torch)' : '';
let torchRan = false;
const medianOrNull = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? median(v) : null;
};
for (let round = 0; round < ROUNDS; round++) {
  const ours = measureOurs();
  let torch: TorchResult | null = null;
  if (!flags['no-torch']) {
    const run = runPythonJson<TorchResult>('gemm_torch.py', ['--shapes', shapes.map((s) => `${s.M}x${s.N}x${s.K}`).join(','), '--iters', String(ITERS), '--warmup', String(WARMUP)], { timeoutS: 300 });
    torch = run.result;
    torchRan ||= torch !== null;
    torchNote = run.failure ?? `torch ${run.result.torch}, CUDA ${run.result.cuda}, FP8 through ${run.result.fp8_api}`;
  }
  rows.forEach((row, i) => {
    const t = torch?.rows.find((r) => r.M === row.M && r.N === row.N && r.K === row.K);
    row.rounds.push({
      oursBf16: ours[i]!.bf16, oursFp8: ours[i]!.fp8, torchBf16: t?.bf16_ms ? tflops(row.M, row.N, row.K, t.bf16_ms) : null,
      torchFp8: t?.fp8_ms ? tflops(row.M, row.N, row.K, t.fp8_ms) : null,
    });
    for (const e of ours[i]!.errors) if (!row.errors.includes(e)) row.errors.push(e);
    if (t?.error && !row.errors.includes(`torch: ${t.error}`)) row.errors.push(`torch: ${t.error}`);
  });
}
for (const row of rows) {
  row.oursBf16 = medianOrNull(row.rounds.map((r) => r.oursBf16));
  row.oursFp8 = medianOrNull(row.rounds.map((r) => r.oursFp8));
  row.torchBf16 = medianOrNull(row.rounds.map((r) => r.torchBf16));
  row.torchFp8 = medianOrNull(row.rounds.map((r) => r.torchFp8));
}

// ---- report ------------------------------------------------------------------------------------

const commit = gitCommit();
const gpu = device!.name;
const fmt = (x: number | null) => (x === null ? 'n/a' : x.toFixed(0));
const ratio = (a: number | null, b: number | null) => (a === null || b === null ? 'n/a' : `${(a / b).toFixed(2)}×`);

console.log(`GEMM TFLOP/s, median of ${ITERS} iterations (CUDA events) after ${WARMUP} warm-up, median over ${ROUNDS} alternating rounds — ${gpu}, cuBLASLt ${device!.cublasLtVersion}, commit ${commit}`);
console.log(`  torch: ${torchNote}`);
printTable(['M×N×K', 'BF16 ours', 'BF16 torch', 'ours/torch', 'FP8 ours', 'FP8 torch', 'ours/torch'],
  rows.map((r) => [`${r.M}×${r.N}×${r.K}`, fmt(r.oursBf16), fmt(r.torchBf16), ratio(r.oursBf16, r.torchBf16), fmt(r.oursFp8), fmt(r.torchFp8), ratio(r.oursFp8, r.torchFp8)]));
const geo = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null && x > 0);
  return v.length ? Math.exp(v.reduce((s, x) => s + Math.log(x), 0) / v.length) : null;
};
const bf16Ratio = geo(rows.map((r) => (r.oursBf16 !== null && r.torchBf16 !== null ? r.oursBf16 / r.torchBf16 : null)));
const fp8Ratio = geo(rows.map((r) => (r.oursFp8 !== null && r.torchFp8 !== null ? r.oursFp8 / r.torchFp8 : null)));
console.log(`geometric mean ours/torch: BF16 ${bf16Ratio?.toFixed(2) ?? 'n/a'}× (goal ≥ 0.95×), FP8 ${fp8Ratio?.toFixed(2) ?? 'n/a'}× (goal ≥ 1.0×)`);
const errors = rows.flatMap((r) => r.errors.map((e) => `${r.M}×${r.N}×${r.K}: ${e}`));
for (const e of errors) console.log(`  error: ${e}`);

const figures = rows
  .map((r) => `${r.M}×${r.N}×${r.K} bf16 ${fmt(r.oursBf16)}/${fmt(r.torchBf16)} (${ratio(r.oursBf16, r.torchBf16)}), fp8 ${fmt(r.oursFp8)}/${fmt(r.torchFp8)} (${ratio(r.oursFp8, r.torchFp8)})`)
  .join('; ');
appendResult(gpu, commit, `gpu-gemm TFLOP/s ours/torch (median of ${ITERS}, ${ROUNDS} alternating rounds): ${figures}; geomean bf16 ${bf16Ratio?.toFixed(2) ?? 'n/a'}×, fp8 ${fp8Ratio?.toFixed(2) ?? 'n/a'}×`);

writeJson('gpu-gemm', { bench: 'gpu-gemm', date: new Date().toISOString(), gpu, commit, cublasLt: device!.cublasLtVersion, torch: torchNote, iters: ITERS, rounds: ROUNDS, rows, bf16Ratio, fp8Ratio });
if (errors.length > 0 || (!flags['no-torch'] && !torchRan)) process.exitCode = 1;
