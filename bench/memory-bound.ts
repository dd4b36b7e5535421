// Bandwidth of our memory-bound GPU ops against the device-to-device copy bandwidth (the practical
// peak; about 4.2 TB/s on an H200), at DeepSeek-V3 sizes: RMSNorm, SwiGLU, RoPE, the AdamW step
// (through the CUDA backend) and the FP8 quantization kernels (fp8-matmul.ts). Bytes are everything
// an op must read plus everything it must write; each figure is the median over the timed iterations
// (CUDA events) after warm-up. PyTorch's own copy, RMSNorm, SwiGLU, fused AdamW and an eager 1×128
// quantization run in bench/memory_bound_torch.py for reference. Prints a table, appends a line to
// bench/RESULTS.md, writes $OUT/memory-bound.json when OUT is set and prints JSON on the last line.
//
//   node dist/bench/memory-bound.js [--iters 20] [--warmup 5] [--tokens 16384] [--no-torch]

import { adamwHyperValues } from '../src/backend/backend.js';
import { CudaTensor } from '../src/backend/cuda/cuda-backend.js';
import { quantizeActivations1x128, quantizeWeights128x128, activationScaleLayout, weightScaleLayout } from '../src/backend/cuda/fp8-matmul.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { appendResult, Bf16Pool, createCudaBackend, EventTimer, gitCommit, parseFlags, printTable, runPythonJson, writeJson } from './common.js';

const flags = parseFlags({ integers: { iters: [20, 5], warmup: [5, 1], tokens: [16384, 1] }, booleans: ['no-torch'] });
const ITERS = flags.iters, WARMUP = flags.warmup, T = flags.tokens;

// DeepSeek-V3 sizes: hidden 7168, dense FFN 18432, 128 query heads of 128 + 64 (RoPE on the last 64).
const D = 7168, FFN = 18432, HEADS = 128, NOPE = 128, ROT = 64;
const COPY_BYTES = 1 << 30;

const backend = await createCudaBackend();
const b = backend;
const ctx = b.ctx;
const gpu = ctx.describe().name;
const timer = new EventTimer(ctx, ITERS, WARMUP);

// Random BF16 values, tiled over each tensor.
const pool = new Bf16Pool(ctx, Float32Array.from({ length: 1 << 20 }, () => (Math.random() * 2 - 1) * 2));

function dev(t: Tensor): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new Error('expected a CUDA tensor');
  return t;
}

/** A BF16 tensor of random values (activations are BF16 in the backend's default mode). */
function randomTensor(shape: number[]): CudaTensor {
  const t = b.zeros(shape, 'bf16');
  pool.fill(t.ptr, t.numel);
  return t;
}

interface Row {
  op: string;
  shape: string;
  bytes: number;
  ms: number | null;
  gbs: number | null;
  /** PyTorch's figure for the same op and size, where it has one. */
  torchGbs: number | null;
  error: string | null;
}
const rows: Row[] = [];

function measure(op: string, shape: string, setup: () => { bytes: number; run: (i: number) => void; cleanup: () => void }): void {
  const row: Row = { op, shape, bytes: 0, ms: null, gbs: null, torchGbs: null, error: null };
  rows.push(row);
  let cleanup = () => {};
  try {
    const s = setup();
    cleanup = s.cleanup;
    row.bytes = s.bytes;
    row.ms = timer.time(s.run);
    row.gbs = s.bytes / (row.ms * 1e-3) / 1e9;
  } catch (e) {
    row.error = (e as Error).message.split('\n')[0]!;
  } finally {
    try {
      cleanup();
      ctx.synchronize();
    } catch (e) {
      row.error ??= `cleanup: ${(e as Error).message}`;
    }
  }
  console.log(`# ${op} ${shape}: ${row.gbs === null ? `failed: ${row.error}` : `${row.gbs.toFixed(0)} GB/s (${row.ms!.toFixed(3)} ms)`}`);
}

const bytesOf = (t: Tensor) => dev(t).bytes;

measure('copy (cuMemcpyDtoD)', `${COPY_BYTES >> 20} MiB`, () => {
  const src = ctx.alloc(COPY_BYTES), dst = ctx.alloc(COPY_BYTES);
  pool.fill(src, COPY_BYTES / 2);
  return { bytes: 2 * COPY_BYTES, run: () => ctx.copyDeviceToDevice(dst, src, COPY_BYTES), cleanup: () => { ctx.free(src); ctx.free(dst); } };
});

measure('RMSNorm', `[${T}, ${D}] bf16`, () => {
  // the weight is an FP32 master weight, as in training
  const x = randomTensor([T, D]), w = b.upload(Float32Array.from({ length: D }, () => 1 + 0.1 * Math.random()), [D], 'f32');
  return {
    bytes: 2 * bytesOf(x) + bytesOf(w),
    run: () => b.free(b.rmsNorm(x, w, 1e-6)),
    cleanup: () => { b.free(x); b.free(w); },
  };
});

measure('SwiGLU', `[${T}, ${FFN}] bf16`, () => {
  const g = randomTensor([T, FFN]), u = randomTensor([T, FFN]);
  return {
    bytes: 3 * bytesOf(g),
    run: () => b.free(b.swiglu(g, u)),
    cleanup: () => { b.free(g); b.free(u); },
  };
});

measure('RoPE (queries)', `[${T}, ${HEADS}, ${NOPE + ROT}] bf16, rot ${ROT}`, () => {
  const x = randomTensor([T, HEADS, NOPE + ROT]);
  const half = ROT / 2;
  const cos = new Float32Array(T * half), sin = new Float32Array(T * half);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * 10000 ** (-(2 * i) / ROT);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  const cosT = b.upload(cos, [T, half]), sinT = b.upload(sin, [T, half]);
  const positions = b.uploadInt(Int32Array.from({ length: T }, (_, i) => i), [T]);
  // x in and out, the positions, and one row of each table per token
  const bytes = 2 * bytesOf(x) + 4 * T + 2 * T * half * (bytesOf(cosT) / (T * half));
  return {
    bytes,
    run: () => b.free(b.rope(x, cosT, sinT, positions, NOPE, ROT)),
    cleanup: () => { for (const t of [x, cosT, sinT, positions]) b.free(t); },
  };
});

measure('AdamW step', `[${D}, ${FFN}] fp32`, () => {
  // FP32 master weight, gradient and moments, as the backend trains (values do not change the traffic)
  const p = b.zeros([D, FFN], 'f32'), g = b.zeros([D, FFN], 'f32');
  const m = b.zeros([D, FFN], 'f32'), v = b.zeros([D, FFN], 'f32');
  const h = { beta1: 0.9, beta2: 0.95, eps: 1e-8, momentsBf16: false };
  // the step's lr and bias corrections are read from the device (written once: the step number does not change the traffic)
  const hyper = b.upload(adamwHyperValues(1e-6, h, 1), [3], 'f32');
  return {
    // param, m, v read and written; the gradient read
    bytes: 2 * bytesOf(p) + bytesOf(g) + 2 * bytesOf(m) + 2 * bytesOf(v),
    run: () => b.adamw(p, g, m, v, h, 0.1, { hyper, gradScale: null, skip: null }),
    cleanup: () => { for (const t of [p, g, m, v, hyper]) b.free(t); },
  };
});

measure('FP8 quantize 1×128 (activations)', `[${T}, ${D}] bf16`, () => {
  const x = randomTensor([T, D]);
  const layout = activationScaleLayout(T, D);
  const codes = ctx.alloc(T * D), scales = ctx.alloc(4 * layout.elements);
  return {
    bytes: bytesOf(x) + T * D + 4 * T * layout.lines,
    run: () => quantizeActivations1x128(ctx, { rows: T, cols: D, input: x.ptr, inputType: 'bf16', codes, scales }),
    cleanup: () => { b.free(x); ctx.free(codes); ctx.free(scales); },
  };
});

measure('FP8 quantize 128×128 (weights)', `[${FFN}, ${D}] bf16`, () => {
  const w = randomTensor([FFN, D]);
  const layout = weightScaleLayout(FFN, D);
  const codes = ctx.alloc(FFN * D), scales = ctx.alloc(4 * layout.elements);
  return {
    bytes: bytesOf(w) + FFN * D + 4 * layout.lines * Math.ceil(D / 128),
    run: () => quantizeWeights128x128(ctx, { rows: FFN, cols: D, input: w.ptr, inputType: 'bf16', codes, scales }),
    cleanup: () => { b.free(w); ctx.free(codes); ctx.free(scales); },
  };
});

timer.destroy();
pool.free();
ctx.synchronize();
backend.dispose();

// ---- PyTorch reference ---------------------------------------------------------------------------

interface TorchResult {
  torch: string;
  device: string;
  gbs: Record<string, number | null>;
  errors: Record<string, string>;
}
let torch: TorchResult | null = null;
let torchNote = '';
if (flags['no-torch']) {
  torchNote = 'not run (--no-torch)';
} else {
  const run = runPythonJson<TorchResult>('memory_bound_torch.py', ['--tokens', String(T), '--iters', String(ITERS), '--warmup', String(WARMUP)], { timeoutS: 240 });
  torch = run.result;
  torchNote = run.failure ?? `torch ${run.result.torch}`;
}
const TORCH_KEYS: Record<string, string> = {
  'copy (cuMemcpyDtoD)': 'copy', RMSNorm: 'rmsnorm', SwiGLU: 'swiglu', 'AdamW step': 'adamw', 'FP8 quantize 1×128 (activations)': 'quantize_1x128',
};
for (const row of rows) {
  const key = TORCH_KEYS[row.op];
  if (key && torch) row.torchGbs = torch.gbs[key] ?? null;
}

// ---- report --------------------------------------------------------------------------------------

const commit = gitCommit();
const copy = rows[0]!.gbs;
const fmt = (x: number | null, digits = 0) => (x === null ? 'n/a' : x.toFixed(digits));
const pct = (x: number | null) => (x === null || copy === null ? 'n/a' : `${((100 * x) / copy).toFixed(0)}%`);
console.log(`memory-bound ops, GB/s (bytes read + written), median of ${ITERS} after ${WARMUP} warm-up — ${gpu}, commit ${commit}`);
console.log(`  reference: ${torchNote}`);
printTable(['op', 'size', 'MB moved', 'ms', 'GB/s', '% of copy', 'torch GB/s', 'ours/torch'],
  rows.map((r) => [r.op, r.shape, (r.bytes / 1e6).toFixed(0), fmt(r.ms, 3), fmt(r.gbs), pct(r.gbs), fmt(r.torchGbs),
    r.gbs !== null && r.torchGbs ? `${(r.gbs / r.torchGbs).toFixed(2)}×` : 'n/a']), 2);
const below = rows.slice(1).filter((r) => r.gbs !== null && copy !== null && r.gbs < 0.7 * copy).map((r) => r.op);
console.log(`goal ≥ 70% of copy: ${below.length === 0 ? 'met by every op measured' : `below it: ${below.join(', ')}`}`);
const errors = rows.filter((r) => r.error).map((r) => `${r.op}: ${r.error}`);
for (const e of errors) console.log(`  error: ${e}`);
if (torch) for (const [k, e] of Object.entries(torch.errors)) console.log(`  torch ${k}: ${e}`);

const figures = rows.map((r) => `${r.op} ${fmt(r.gbs)} (${pct(r.gbs)}${r.torchGbs ? `, torch ${fmt(r.torchGbs)}` : ''})`).join('; ');
appendResult(gpu, commit, `memory-bound GB/s at ${T} tokens (% of device copy): ${figures}`);

writeJson('memory-bound', { bench: 'memory-bound', date: new Date().toISOString(), gpu, commit, tokens: T, iters: ITERS, copyGbs: copy, torch: torchNote, rows });
if (errors.length > 0 || (!flags['no-torch'] && torch === null)) process.exitCode = 1;
