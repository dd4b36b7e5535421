// Bandwidth of our memory-bound GPU ops against the device-to-device copy bandwidth (the practical
// peak; about 4.2 TB/s on an H200), at DeepSeek-V3 sizes: RMSNorm, SwiGLU, RoPE, the AdamW step
// (through the CUDA backend) and the FP8 quantization kernels (fp8-matmul.ts). Bytes are everything
// an op must read plus everything it must write; each figure is the median over the timed iterations
// (CUDA events) after warm-up. PyTorch's own copy, RMSNorm, SwiGLU, fused AdamW and an eager 1×128
// quantization run in bench/memory_bound_torch.py for reference. Prints a table, appends a line to
// bench/RESULTS.md, writes $OUT/memory-bound.json when OUT is set and prints JSON on the last line.
//
//   node dist/bench/memory-bound.js [--iters 20] [--warmup 5] [--tokens 16384] [--no-torch]

import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createBackend } from '../src/backend/create.js';
import { CudaBackend, CudaTensor } from '../src/backend/cuda/cuda-backend.js';
import type { CudaEvent } from '../src/backend/cuda/context.js';
import { quantizeActivations1x128, quantizeWeights128x128, activationScaleLayout, weightScaleLayout } from '../src/backend/cuda/fp8-matmul.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { encodeFromFloat } from '../src/tensor/dtypes.js';

const { values: flags } = parseArgs({
  options: {
    iters: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '5' },
    tokens: { type: 'string', default: '16384' },
    'no-torch': { type: 'boolean', default: false },
  },
});
const ITERS = Number(flags.iters), WARMUP = Number(flags.warmup), T = Number(flags.tokens);
if (!Number.isInteger(ITERS) || ITERS < 5) throw new Error(`--iters ${flags.iters}: at least 5`);
if (!Number.isInteger(WARMUP) || WARMUP < 1) throw new Error(`--warmup ${flags.warmup}: a positive integer`);
if (!Number.isInteger(T) || T < 1) throw new Error(`--tokens ${flags.tokens}: a positive integer`);

// DeepSeek-V3 sizes: hidden 7168, dense FFN 18432, 128 query heads of 128 + 64 (RoPE on the last 64).
const D = 7168, FFN = 18432, HEADS = 128, NOPE = 128, ROT = 64;
const COPY_BYTES = 1 << 30;

const repoFile = (rel: string) => fileURLToPath(new URL(`../../${rel}`, import.meta.url));

function gitCommit(): string {
  if (process.env.DSV3_COMMIT) return process.env.DSV3_COMMIT;
  const out = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoFile('.'), encoding: 'utf8' });
  return out.status === 0 ? out.stdout.trim() : 'no commit';
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

const backend = await createBackend({ device: 'cuda' });
if (!(backend instanceof CudaBackend)) throw new Error(`createBackend({ device: 'cuda' }) returned the ${backend.name} backend, not CudaBackend`);
const b = backend;
const ctx = b.ctx;
const gpu = ctx.describe().name;
const starts: CudaEvent[] = Array.from({ length: ITERS }, () => ctx.createEvent());
const ends: CudaEvent[] = Array.from({ length: ITERS }, () => ctx.createEvent());

/** Median milliseconds of `run` on the device over ITERS iterations, after WARMUP. */
function timeOnDevice(run: (i: number) => void): number {
  for (let i = 0; i < WARMUP; i++) run(i);
  ctx.synchronize();
  for (let i = 0; i < ITERS; i++) {
    starts[i]!.record();
    run(WARMUP + i);
    ends[i]!.record();
  }
  ends[ITERS - 1]!.synchronize();
  return median(starts.map((s, i) => ends[i]!.elapsedSince(s)));
}

// Random BF16 values: a pool uploaded once and tiled over each tensor by device copies.
const POOL = 1 << 20;
const pool = (() => {
  const x = new Float32Array(POOL);
  for (let i = 0; i < POOL; i++) x[i] = (Math.random() * 2 - 1) * 2;
  return ctx.upload(encodeFromFloat('BF16', x));
})();

function dev(t: Tensor): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new Error('expected a CUDA tensor');
  return t;
}

/** A BF16 tensor of random values (activations are BF16 in the backend's default mode). */
function randomTensor(shape: number[]): CudaTensor {
  const t = b.zeros(shape, 'bf16');
  const n = t.numel;
  for (let at = 0; at < n; at += POOL) ctx.copyDeviceToDevice(t.ptr + 2 * at, pool, 2 * Math.min(POOL, n - at));
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
    row.ms = timeOnDevice(s.run);
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
  for (let at = 0; at < COPY_BYTES; at += 2 * POOL) ctx.copyDeviceToDevice(src + at, pool, Math.min(2 * POOL, COPY_BYTES - at));
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
  return {
    // param, m, v read and written; the gradient read
    bytes: 2 * bytesOf(p) + bytesOf(g) + 2 * bytesOf(m) + 2 * bytesOf(v),
    run: (i) => b.adamw(p, g, m, v, { lr: 1e-6, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: i + 1, momentsBf16: false }),
    cleanup: () => { for (const t of [p, g, m, v]) b.free(t); },
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

for (const e of [...starts, ...ends]) e.destroy();
ctx.free(pool);
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
  const out = spawnSync('python3', [repoFile('bench/memory_bound_torch.py'), '--tokens', String(T), '--iters', String(ITERS), '--warmup', String(WARMUP)], {
    encoding: 'utf8', timeout: 240_000, maxBuffer: 64 << 20,
  });
  process.stderr.write(out.stderr ?? '');
  const last = (out.stdout ?? '').trim().split('\n').pop() ?? '';
  if (out.error) torchNote = `python3 did not run: ${out.error.message}`;
  else if (out.status !== 0) torchNote = `python3 exited ${out.status}: ${(out.stderr ?? '').trim().split('\n').pop()}`;
  else {
    try {
      torch = JSON.parse(last) as TorchResult;
      torchNote = `torch ${torch.torch}`;
    } catch {
      torchNote = `unreadable output from memory_bound_torch.py: ${last.slice(0, 200)}`;
    }
  }
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
const header = ['op', 'size', 'MB moved', 'ms', 'GB/s', '% of copy', 'torch GB/s', 'ours/torch'];
const table = rows.map((r) => [r.op, r.shape, (r.bytes / 1e6).toFixed(0), fmt(r.ms, 3), fmt(r.gbs), pct(r.gbs), fmt(r.torchGbs),
  r.gbs !== null && r.torchGbs ? `${(r.gbs / r.torchGbs).toFixed(2)}×` : 'n/a']);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
const line = (cells: string[]) => '| ' + cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
console.log(line(header));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const t of table) console.log(line(t));
const below = rows.slice(1).filter((r) => r.gbs !== null && copy !== null && r.gbs < 0.7 * copy).map((r) => r.op);
console.log(`goal ≥ 70% of copy: ${below.length === 0 ? 'met by every op measured' : `below it: ${below.join(', ')}`}`);
const errors = rows.filter((r) => r.error).map((r) => `${r.op}: ${r.error}`);
for (const e of errors) console.log(`  error: ${e}`);
if (torch) for (const [k, e] of Object.entries(torch.errors)) console.log(`  torch ${k}: ${e}`);

const resultsPath = repoFile('bench/RESULTS.md');
if (!existsSync(resultsPath)) writeFileSync(resultsPath, '# Benchmark results\n\n');
const figures = rows.map((r) => `${r.op} ${fmt(r.gbs)} (${pct(r.gbs)}${r.torchGbs ? `, torch ${fmt(r.torchGbs)}` : ''})`).join('; ');
const stamp = new Date().toISOString().slice(0, 16).replace('T', ' ');
appendFileSync(resultsPath, `- ${stamp} UTC · ${gpu} · ${commit} · memory-bound GB/s at ${T} tokens (% of device copy): ${figures}\n`);

const json = { bench: 'memory-bound', date: new Date().toISOString(), gpu, commit, tokens: T, iters: ITERS, copyGbs: copy, torch: torchNote, rows };
if (process.env.OUT) {
  mkdirSync(process.env.OUT, { recursive: true });
  writeFileSync(join(process.env.OUT, 'memory-bound.json'), JSON.stringify(json, null, 2) + '\n');
}
console.log(JSON.stringify(json));
if (errors.length > 0 || (!flags['no-torch'] && torch === null)) process.exitCode = 1;
