// Attention kernels on the GPU against PyTorch, measured in one run on one machine:
//   - causal training attention, BF16, B=1, T=4096, Dk=192, Dv=128 (MLA's per-head sizes), H=16 and
//     H=128: our flash forward and backward (flash-attention.ts) against every
//     scaled_dot_product_attention backend PyTorch runs on the shape (bench/attention_torch.py),
//     with the default block sizes, and each block size of the forward (rows a block) and of the
//     backward (keys a block) on its own in a table of variants;
//   - MLA decoding over a 4096-position latent cache (C=512, R=64, H=16), B=1 and B=32: our
//     mlaDecode against the same step in eager PyTorch.
// Prints tables, appends a dated line to bench/RESULTS.md and prints the figures as JSON on the
// last line of stdout.
//
//   npx tsc -p . && node dist/bench/attention.js            (on the GPU machine)
//   node dist/bench/attention.js --iters 10 --no-torch       (ours only)
//
// FLOPs: the causal forward is counted as 2·B·H·T²·(Dk+Dv)/2 (half the score matrix), the
// backward as 2.5× the forward (five matrix products against two) and forward+backward as 3.5×,
// the FlashAttention convention; torch's figures use the same counts (its padded V work is not
// counted), so the ratios compare times.

import { CudaContext } from '../src/backend/cuda/context.js';
import {
  FLASH_BACKWARD_BLOCKS, FLASH_FORWARD_BLOCKS, flashAttentionBackward, flashAttentionForward, flashBackwardBlock, flashForwardBlock, mlaDecode,
  mlaDecodePlan,
} from '../src/backend/cuda/flash-attention.js';
import { appendResult, gitCommit, parseFlags, printTable, runPythonJson } from './common.js';

const flags = parseFlags({ integers: { iters: [20, 1] }, booleans: ['no-torch'] });
const ITERS = flags.iters;
const B = 1, T = 4096, DK = 192, DV = 128;
const HEADS = [16, 128];
const DECODE = { H: 16, S: 4096, C: 512, R: 64, batches: [1, 32] };

// ---- device helpers -----------------------------------------------------------------------------

const ctx = CudaContext.create(0);
const info = ctx.describe();

/** A device buffer of n BF16 values uniform in [−1, 1) (an LCG: timing does not need better). */
function randomBf16(n: number, seed: number): number {
  const host = new Uint16Array(n);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    f[0] = s / 2 ** 31 - 1;
    host[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
  }
  return ctx.upload(host);
}

/** Median milliseconds of `fn` over ITERS runs (events around each), after warm-up runs (the first compiles). */
function timeMs(fn: () => void, iters = ITERS, warmup = 3): number {
  for (let i = 0; i < warmup; i++) fn();
  ctx.synchronize();
  const start = ctx.createEvent(), end = ctx.createEvent();
  const times: number[] = [];
  for (let i = 0; i < iters; i++) {
    start.record();
    fn();
    end.record();
    end.synchronize();
    times.push(end.elapsedSince(start));
  }
  start.destroy();
  end.destroy();
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

/** Mean microseconds per call of `fn` over `reps` back-to-back calls (decode steps are short). */
function timeUsPerCall(fn: () => void, reps: number): number {
  for (let i = 0; i < 5; i++) fn();
  ctx.synchronize();
  const start = ctx.createEvent(), end = ctx.createEvent();
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    start.record();
    for (let i = 0; i < reps; i++) fn();
    end.record();
    end.synchronize();
    best = Math.min(best, (end.elapsedSince(start) * 1000) / reps);
  }
  start.destroy();
  end.destroy();
  return best;
}

/** Microseconds per call of `fn` replayed from a CUDA graph of `perGraph` calls (GPU time, no launch overhead). */
function timeGraphUsPerCall(fn: () => void, perGraph = 20): number {
  fn(); // compiles and loads the module outside the capture
  ctx.synchronize();
  const graph = ctx.capture(() => {
    for (let i = 0; i < perGraph; i++) fn();
  });
  graph.launch();
  ctx.synchronize();
  const start = ctx.createEvent(), end = ctx.createEvent();
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    start.record();
    for (let i = 0; i < 10; i++) graph.launch();
    end.record();
    end.synchronize();
    best = Math.min(best, (end.elapsedSince(start) * 1000) / (10 * perGraph));
  }
  start.destroy();
  end.destroy();
  graph.destroy();
  return best;
}

// ---- ours: training attention -------------------------------------------------------------------

/** One block size of one pass, timed on its own. */
interface TrainVariant {
  pass: 'forward' | 'backward';
  /** Query rows (forward) or keys (backward) a block. */
  block: number;
  isDefault: boolean;
  ms: number;
  tflops: number;
}

interface TrainRow {
  H: number;
  variants?: TrainVariant[];
  fwdMs?: number;
  bwdMs?: number;
  fwdTflops?: number;
  bwdTflops?: number;
  totalTflops?: number;
  error?: string;
  torch?: { backend: string; fwdMs: number; fwdbwdMs: number; fwdTflops: number; totalTflops: number; paddedV: boolean };
  torchDefault?: string;
  torchAll?: Record<string, { fwdMs?: number; fwdbwdMs?: number; error?: string }>;
}

const fwdFlops = (H: number) => 2 * B * H * T * T * (DK + DV) / 2;

function measureTrain(H: number): TrainRow {
  const nq = B * T * H * DK, nv = B * T * H * DV;
  const need = 2 * (4 * nq + 4 * nv) + 4 * (nq + 2 * B * H * T); // q k dq dk, v dOut out dv (BF16); dq accumulator, lse, D (FP32)
  if (need * 1.2 > ctx.memoryInfo().freeBytes) return { H, error: `needs ${(need / 2 ** 30).toFixed(1)} GiB` };
  const q = randomBf16(nq, 1), k = randomBf16(nq, 2), v = randomBf16(nv, 3), dOut = randomBf16(nv, 4);
  const out = ctx.alloc(2 * nv), lse = ctx.alloc(4 * B * H * T);
  const dq = ctx.alloc(2 * nq), dk = ctx.alloc(2 * nq), dv = ctx.alloc(2 * nv);
  const dims = { B, Tq: T, Tk: T, H, Dk: DK, Dv: DV, scale: 1 / Math.sqrt(DK), qStart: 0 };
  const fwd = () => flashAttentionForward(ctx, { q, k, v, out, lse, ...dims });
  const bwd = () => flashAttentionBackward(ctx, { q, k, v, out, dOut, lse, dq, dk, dv, ...dims });
  const fwdMs = timeMs(fwd);
  const bwdMs = timeMs(bwd);
  const f = fwdFlops(H);
  const variants: TrainVariant[] = [];
  const fwdDefault = flashForwardBlock(ctx, dims), bwdDefault = flashBackwardBlock(ctx, dims);
  for (const blockM of FLASH_FORWARD_BLOCKS) {
    const ms = timeMs(() => flashAttentionForward(ctx, { q, k, v, out, lse, ...dims, blockM }));
    variants.push({ pass: 'forward', block: blockM, isDefault: blockM === fwdDefault, ms, tflops: f / (ms * 1e9) });
  }
  for (const blockN of FLASH_BACKWARD_BLOCKS) {
    const ms = timeMs(() => flashAttentionBackward(ctx, { q, k, v, out, dOut, lse, dq, dk, dv, ...dims, blockN }));
    variants.push({ pass: 'backward', block: blockN, isDefault: blockN === bwdDefault, ms, tflops: (2.5 * f) / (ms * 1e9) });
  }
  for (const p of [q, k, v, dOut, out, lse, dq, dk, dv]) ctx.free(p);
  ctx.synchronize();
  return {
    H, fwdMs, bwdMs, variants,
    fwdTflops: f / (fwdMs * 1e9),
    bwdTflops: (2.5 * f) / (bwdMs * 1e9),
    totalTflops: (3.5 * f) / ((fwdMs + bwdMs) * 1e9),
  };
}

// ---- ours: MLA decode ---------------------------------------------------------------------------

interface DecodeRow {
  B: number;
  H: number;
  S: number;
  splits: number;
  /** Per step replayed from a CUDA graph (GPU time). */
  us: number;
  /** Per step launched one by one from JavaScript (includes the launch overhead). */
  launchUs: number;
  gbps: number;
  torchUs?: number;
}

function measureDecode(batch: number): DecodeRow {
  const { H, S, C, R } = DECODE;
  const qLat = randomBf16(batch * H * C, 5), qPe = randomBf16(batch * H * R, 6);
  const ckv = randomBf16(batch * S * C, 7), kpe = randomBf16(batch * S * R, 8);
  const out = ctx.alloc(2 * batch * H * C);
  const args = { qLat, qPe, ckv, kpe, out, B: batch, Tq: 1, H, C, R, S, kvLen: S, scale: 1 / Math.sqrt(128 + R), qStart: S - 1 };
  const plan = mlaDecodePlan(ctx, args);
  const launchUs = timeUsPerCall(() => mlaDecode(ctx, args), 200);
  const us = timeGraphUsPerCall(() => mlaDecode(ctx, args));
  for (const p of [qLat, qPe, ckv, kpe, out]) ctx.free(p);
  ctx.synchronize();
  const bytes = batch * S * (C + R) * 2;
  return { B: batch, H, S, splits: plan.splits, us, launchUs, gbps: bytes / (us * 1e3) };
}

// ---- torch --------------------------------------------------------------------------------------

interface TorchBackend {
  fwd_ms?: number;
  fwdbwd_ms?: number;
  bwd_ms?: number;
  padded_v?: boolean;
  error?: string;
}
interface TorchResult {
  error?: string;
  torch?: string;
  cuda?: string;
  device?: string;
  train?: Array<{ H: number; default_backend?: string; backends?: Record<string, TorchBackend>; error?: string }>;
  decode?: Array<{ B: number; H: number; S: number; us?: number; error?: string }>;
}

function runTorch(): TorchResult {
  const args = ['--B', String(B), '--T', String(T), '--H', HEADS.join(','), '--dk', String(DK), '--dv', String(DV),
    '--decode-B', DECODE.batches.join(','), '--decode-H', String(DECODE.H), '--S', String(DECODE.S), '--C', String(DECODE.C), '--R', String(DECODE.R),
    '--iters', String(ITERS)];
  const run = runPythonJson<TorchResult>('attention_torch.py', args, { echoStderr: false });
  return run.failure === null ? run.result : { error: run.failure };
}

// ---- run ----------------------------------------------------------------------------------------

const train = HEADS.map(measureTrain);
const decode = DECODE.batches.map(measureDecode);
ctx.dispose(); // hand the memory pool back before torch allocates
const torch = flags['no-torch'] ? { error: 'skipped (--no-torch)' } : runTorch();

for (const row of train) {
  const t = torch.train?.find((x) => x.H === row.H);
  if (!t?.backends) continue;
  row.torchDefault = t.default_backend;
  row.torchAll = {};
  let best: TrainRow['torch'];
  for (const [name, e] of Object.entries(t.backends)) {
    row.torchAll[name] = { fwdMs: e.fwd_ms, fwdbwdMs: e.fwdbwd_ms, error: e.error };
    if (e.fwd_ms === undefined || e.fwdbwd_ms === undefined) continue;
    if (!best || e.fwdbwd_ms < best.fwdbwdMs) {
      const f = fwdFlops(row.H);
      best = { backend: name, fwdMs: e.fwd_ms, fwdbwdMs: e.fwdbwd_ms, fwdTflops: f / (e.fwd_ms * 1e9), totalTflops: (3.5 * f) / (e.fwdbwd_ms * 1e9), paddedV: !!e.padded_v };
    }
  }
  row.torch = best;
}
for (const row of decode) row.torchUs = torch.decode?.find((x) => x.B === row.B && x.H === row.H)?.us;

// ---- report -------------------------------------------------------------------------------------

const commit = gitCommit();
const fmt = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits));

console.log(`causal attention, BF16, B=${B} T=${T} Dk=${DK} Dv=${DV} — ${info.name}, commit ${commit}`);
console.log(`  torch: ${torch.error ?? `${torch.torch} (CUDA ${torch.cuda}) on ${torch.device}`}`);
console.log('  TFLOP/s: forward 2·B·H·T²·(Dk+Dv)/2, backward 2.5×, forward+backward 3.5× that; median of runs');
printTable(
  ['H', 'ours fwd ms', 'TFLOP/s', 'ours bwd ms', 'TFLOP/s', 'ours f+b TFLOP/s', 'torch backend', 'torch fwd ms', 'torch f+b ms', 'TFLOP/s', 'fwd ours/torch', 'f+b ours/torch'],
  train.map((r) => [
    String(r.H), r.error ?? fmt(r.fwdMs, 3), fmt(r.fwdTflops), fmt(r.bwdMs, 3), fmt(r.bwdTflops), fmt(r.totalTflops),
    r.torch ? `${r.torch.backend}${r.torch.paddedV ? ' (V padded)' : ''}` : 'n/a', fmt(r.torch?.fwdMs, 3), fmt(r.torch?.fwdbwdMs, 3), fmt(r.torch?.totalTflops),
    r.torch && r.fwdMs ? fmt(r.torch.fwdMs / r.fwdMs, 2) + '×' : 'n/a',
    r.torch && r.fwdMs && r.bwdMs ? fmt(r.torch.fwdbwdMs / (r.fwdMs + r.bwdMs), 2) + '×' : 'n/a',
  ]),
);
for (const r of train) {
  if (!r.torchAll) continue;
  const parts = Object.entries(r.torchAll).map(([name, e]) => (e.error ? `${name}: ${e.error}` : `${name} fwd ${fmt(e.fwdMs, 3)} ms, f+b ${fmt(e.fwdbwdMs, 3)} ms`));
  console.log(`  torch H=${r.H} (default picks ${r.torchDefault}): ${parts.join('; ')}`);
}
console.log('  (ours/torch > 1×: ours is faster)');
console.log('');
console.log('  block sizes, each timed on its own (forward: query rows a block; backward: keys a block)');
printTable(
  ['H', 'pass', 'block', 'default', 'ms', 'TFLOP/s'],
  train.flatMap((r) => (r.variants ?? []).map((v) => [String(r.H), v.pass, String(v.block), v.isDefault ? 'yes' : '', fmt(v.ms, 3), fmt(v.tflops)])),
);
console.log('');
console.log(`MLA decode, one token, C=${DECODE.C} R=${DECODE.R} H=${DECODE.H} S=${DECODE.S} (cache read once per step)`);
printTable(
  ['B', 'splits', 'ours µs (CUDA graph)', 'cache GB/s', 'ours µs (launched from JS)', 'torch eager µs'],
  decode.map((r) => [String(r.B), String(r.splits), fmt(r.us), fmt(r.gbps, 0), fmt(r.launchUs), fmt(r.torchUs)]),
);

const trainFigures = train
  .map((r) => r.error
    ? `H=${r.H} ${r.error}`
    : `H=${r.H} fwd ${fmt(r.fwdTflops)} / bwd ${fmt(r.bwdTflops)} / f+b ${fmt(r.totalTflops)} TFLOP/s` +
      (r.torch ? ` (torch ${r.torch.backend}${r.torch.paddedV ? ', V padded' : ''} f+b ${fmt(r.torch.totalTflops)}, ours/torch ${fmt(r.torch.fwdbwdMs / (r.fwdMs! + r.bwdMs!), 2)}×)` : ''))
  .join('; ');
const decodeFigures = decode.map((r) => `B=${r.B} ${fmt(r.us)} µs (graph; ${fmt(r.launchUs)} launched${r.torchUs !== undefined ? `, torch eager ${fmt(r.torchUs)}` : ''})`).join(', ');
appendResult(info.name, commit, `attention causal BF16 B=${B} T=${T} Dk=${DK} Dv=${DV}: ${trainFigures}; ` +
  `MLA decode S=${DECODE.S} H=${DECODE.H} C=${DECODE.C} R=${DECODE.R}: ${decodeFigures}`);

console.log(JSON.stringify({ device: info.name, commit, torch: torch.error ?? torch.torch, train, decode }));
