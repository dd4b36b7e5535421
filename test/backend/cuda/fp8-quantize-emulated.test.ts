// The FP8 quantization kernels (kernels/fp8-quantize.cu) on the CPU, which the kernel emulator
// (emulator/) leaves out because the file has inline PTX: here the file is compiled as host C++
// with the emulator's shim and runtime, its PTX conversion replaced by the file's own portable
// fallback (e4m3_code_soft, compiled where __CUDA_ARCH__ is undefined) and the float intrinsics by
// the IEEE operations they are. Checked without a GPU:
// - fp8_scale_inv, the kernels' scale rule (its quotient amax / 448 by one Markstein step instead
//   of a division), against float32(max(amax, 1e-12) / 448) for every float amax ≥ 0 and +inf;
// - both kernels through the real launchers of fp8-matmul.ts, and the activation kernel on grids
//   smaller than the launcher's (many groups per warp: the pipelined loop's turns and wraps), give
//   the codes and scales of src/fp8/quantize.ts bit for bit: odd shapes, partial tiles, unaligned
//   rows, infinite inputs (the IEEE-division path) and negative zeros.
// test/backend/cuda/fp8-matmul.gpu.ts checks the same on the GPU, with the PTX conversion.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { kernelDir } from '../../../src/backend/cuda/compile.js';
import type { CudaContext } from '../../../src/backend/cuda/context.js';
import {
  activationScaleLayout, activationScalesFromDevice, quantizeActivations1x128, quantizeWeights128x128, weightScaleLayout, weightScalesFromDevice,
  type Fp8InputType,
} from '../../../src/backend/cuda/fp8-matmul.js';
import { quantizeTiles1x128, quantizeWeightBlocks128 } from '../../../src/fp8/quantize.js';
import { EmulatedDevice, KERNEL_CALL_PROLOGUE } from './emulator/emulator.js';
import { encodeBf16, roundBf16, seededRandom, type Rng } from './gpu-helpers.js';
import { repoRoot } from '../../shared-paths.js';

const run = promisify(execFile);
const FILE = 'fp8-quantize.cu';
const emulatorDir = join(repoRoot, 'test', 'backend', 'cuda', 'emulator');

/** Host stand-ins for what the file uses beyond the emulator's shim, and the exhaustive scale check. */
const HOST_SUPPORT = `
#include <cmath>
#define __launch_bounds__(...)
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
`;

const SCALE_CHECK = `
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>
/** Floats a ≥ 0 (bit patterns 0 … 0x7f800000) whose fp8_scale_inv differs from float32(max(a, 1e-12) / 448). */
extern "C" unsigned long long fp8_scale_rule_mismatches() {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<unsigned long long> bad{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++) pool.emplace_back([&bad, t, threads] {
    unsigned long long b = 0;
    for (unsigned long long u = t; u <= 0x7f800000ull; u += threads) {
      float a;
      const unsigned bits = (unsigned)u;
      std::memcpy(&a, &bits, 4);
      const float got = fp8_scale_inv<false>(a), want = (float)(std::max((double)a, 1e-12) / 448.0);
      if (std::memcmp(&got, &want, 4) != 0) b++;
    }
    bad += b;
  });
  for (auto& th : pool) th.join();
  return bad.load();
}
`;

function cudaIncludeDir(): string | undefined {
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter((r): r is string => !!r);
  return roots.map((r) => join(r, 'include')).find((d) => existsSync(join(d, 'cuda_bf16.h')));
}

/** The file's kernels: the names its ACT_KERNEL / WEIGHT_KERNEL lines define. */
function kernelNames(source: string): string[] {
  return [...source.matchAll(/^(?:ACT|WEIGHT)_KERNEL\((quantize_\w+),/gm)].map((m) => m[1]!);
}

/** Build (or find in the cache) the host library of fp8-quantize.cu; its path, or why it cannot be built. */
async function buildLibrary(): Promise<{ path: string } | { skip: string }> {
  const include = cudaIncludeDir();
  if (!include) return { skip: 'no CUDA headers (cuda_bf16.h) under CUDA_HOME, CUDA_PATH or /usr/local/cuda' };
  try {
    await run('g++', ['--version']);
  } catch {
    return { skip: 'no g++' };
  }
  const dir = kernelDir();
  const headers = readdirSync(dir).filter((f) => f.endsWith('.cuh')).sort();
  const source = readFileSync(join(dir, FILE), 'utf8');
  const names = kernelNames(source);
  const hash = createHash('sha256').update(HOST_SUPPORT).update(SCALE_CHECK).update(source);
  for (const f of ['cuda-shim.h', 'runtime.cpp']) hash.update(readFileSync(join(emulatorDir, f)));
  for (const h of headers) hash.update(h).update(readFileSync(join(dir, h)));
  const out = join(tmpdir(), `dsv3-fp8-quantize-host-${hash.digest('hex').slice(0, 16)}`);
  const lib = join(out, 'libfp8.so');
  if (existsSync(lib)) return { path: lib };
  const work = `${out}.${process.pid}`;
  mkdirSync(work, { recursive: true });
  // shared memory as one host object per block, as the emulator does
  const shared = (s: string) => s.replace(/extern\s+__shared__/g, 'extern').replace(/__shared__/g, 'static');
  for (const h of headers) writeFileSync(join(work, h), shared(readFileSync(join(dir, h), 'utf8')));
  writeFileSync(join(work, FILE), shared(source));
  writeFileSync(join(work, 'tu.cpp'), [
    '#include "cuda-shim.h"',
    HOST_SUPPORT,
    ...KERNEL_CALL_PROLOGUE,
    'static std::vector<std::pair<void*, size_t>> emuDynamicShared;',
    `#include "${FILE}"`,
    SCALE_CHECK,
    'namespace {',
    'struct Registrar {',
    '  Registrar() {',
    ...names.map((k) => `    emu_register_kernel("${k}", [](void** p) { emu_call(${k}, p); }, &emuDynamicShared);`),
    '  }',
    '} registrar;',
    '}  // namespace',
    '',
  ].join('\n'));
  const flags = ['-std=c++17', '-O2', '-fno-strict-aliasing', '-fPIC', '-pthread', '-w', `-I${work}`, `-I${emulatorDir}`, `-I${include}`];
  await Promise.all([
    run('g++', [...flags, '-c', join(work, 'tu.cpp'), '-o', join(work, 'tu.o')], { maxBuffer: 1 << 24 }),
    run('g++', [...flags, '-c', join(emulatorDir, 'runtime.cpp'), '-o', join(work, 'runtime.o')], { maxBuffer: 1 << 24 }),
  ]);
  await run('g++', ['-shared', '-pthread', '-o', join(work, 'libfp8.so'), join(work, 'tu.o'), join(work, 'runtime.o')]);
  mkdirSync(out, { recursive: true });
  renameSync(join(work, 'libfp8.so'), lib);
  rmSync(work, { recursive: true, force: true });
  return { path: lib };
}

const built = await buildLibrary();
const skip = 'skip' in built ? `no host build of ${FILE}: ${built.skip}` : false;
if (skip) console.log(`# skipping: ${skip}`);

test('the scale rule (amax / 448 by a Markstein step) equals the emulation for every float', { skip }, () => {
  if ('skip' in built) return;
  const check = koffi.load(built.path).func('uint64_t fp8_scale_rule_mismatches()') as () => number | bigint;
  assert.equal(Number(check()), 0, 'floats whose scale differs from float32(max(amax, 1e-12) / 448)');
});

/**
 * Normal values whose tiles (blockRows × 128) each get their own magnitude, 2^-12 … 2^12, plus an
 * all-zero tile, a tile near the 1e-12 floor, a huge tile and single outliers; `special` adds ±inf
 * (an infinite scale) and negative zeros.
 */
function spreadValues(rng: Rng, rows: number, cols: number, blockRows: number, special: boolean): Float32Array {
  const x = new Float32Array(rows * cols);
  const tileRows = Math.ceil(rows / blockRows), tileCols = Math.ceil(cols / 128);
  const magnitude = new Float64Array(tileRows * tileCols).map(() => 2 ** (rng.uniform() * 24 - 12));
  if (magnitude.length > 3) {
    magnitude[1] = 0;
    magnitude[2] = 1e-13;
    magnitude[3] = 1e30;
  }
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) x[r * cols + c] = rng.normal() * magnitude[Math.floor(r / blockRows) * tileCols + Math.floor(c / 128)]!;
  }
  for (let i = 0; i < 8; i++) {
    const at = rng.int(0, x.length - 1);
    x[at] = x[at]! * 300;
  }
  if (special) {
    x[rng.int(0, x.length - 1)] = Infinity;
    x[rng.int(0, x.length - 1)] = -Infinity;
    for (let i = 0; i < 4; i++) x[rng.int(0, x.length - 1)] = -0;
  }
  return x;
}

interface Case {
  kind: 'activations' | 'weights';
  rows: number;
  cols: number;
  type: Fp8InputType;
  pow2: boolean;
  /** Elements before the input: rows that do not start on a 16-byte boundary. */
  offset?: number;
  /** Launch the activation kernel on this many blocks instead of the launcher's grid. */
  grid?: number;
  special?: boolean;
}

function runCase(ctx: CudaContext, c: Case): void {
  const rng = seededRandom();
  const { kind, rows, cols, type, pow2 } = c;
  const offset = c.offset ?? 0;
  const raw = spreadValues(rng, rows, cols, kind === 'activations' ? 1 : 128, c.special ?? false);
  const x = type === 'bf16' ? roundBf16(raw) : raw;
  const padded = new Float32Array(offset + x.length);
  padded.set(x, offset);
  const input = type === 'bf16' ? ctx.upload(encodeBf16(padded)) : ctx.upload(padded);
  const layout = kind === 'activations' ? activationScaleLayout(rows, cols) : weightScaleLayout(rows, cols);
  const codes = ctx.alloc(Math.max(1, rows * cols));
  const scales = ctx.alloc(4 * layout.elements);
  ctx.memset8(scales, 0, 4 * layout.elements); // the layout's padding is never written
  const args = { rows, cols, input: input + offset * (type === 'bf16' ? 2 : 4), inputType: type, codes, scales, powerOfTwo: pow2 };
  if (c.grid !== undefined) {
    const name = `quantize_1x128_${pow2 ? 'pow2_' : ''}${type}`;
    ctx.kernels(FILE).fn(name, ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32']).launch(ctx.stream, c.grid, 256, 0, [args.input, codes, scales, rows, cols, layout.ld]);
  } else if (kind === 'activations') {
    quantizeActivations1x128(ctx, args);
  } else {
    quantizeWeights128x128(ctx, args);
  }
  const gotCodes = new Uint8Array(rows * cols);
  ctx.copyToHost(gotCodes, codes);
  const gotScales = new Float32Array(layout.elements);
  ctx.copyToHost(gotScales, scales);
  const want = kind === 'activations' ? quantizeTiles1x128(x, rows, cols, { powerOfTwo: pow2 }) : quantizeWeightBlocks128(x, rows, cols, { powerOfTwo: pow2 });
  const label = `${kind} [${rows}, ${cols}] ${type}${pow2 ? ' pow2' : ''}${offset ? ` offset ${offset}` : ''}${c.grid !== undefined ? ` on ${c.grid} blocks` : ''}${c.special ? ' with ±inf and −0' : ''}`;
  const codeAt = gotCodes.findIndex((v, i) => v !== want.codes[i]);
  assert.equal(codeAt, -1, `${label}: code ${codeAt} is 0x${gotCodes[codeAt]?.toString(16)}, the emulation's 0x${want.codes[codeAt]?.toString(16)} (seed ${rng.seed})`);
  const rowMajor = kind === 'activations' ? activationScalesFromDevice(gotScales, rows, cols) : weightScalesFromDevice(gotScales, rows, cols);
  const g = new Uint32Array(rowMajor.buffer, rowMajor.byteOffset, rowMajor.length), w = new Uint32Array(want.scaleInv.buffer, want.scaleInv.byteOffset, want.scaleInv.length);
  const scaleAt = g.findIndex((v, i) => v !== w[i]);
  assert.equal(scaleAt, -1, `${label}: scale ${scaleAt} is ${rowMajor[scaleAt]}, the emulation's ${want.scaleInv[scaleAt]} (seed ${rng.seed})`);
  for (const p of [input, codes, scales]) ctx.free(p);
}

const CASES: Omit<Case, 'type' | 'pow2'>[] = [
  { kind: 'activations', rows: 256, cols: 1024 },
  { kind: 'activations', rows: 67, cols: 300 }, // K % 8 ≠ 0: element-wise rows, a partial last tile
  { kind: 'activations', rows: 33, cols: 200 }, // K % 128 ≠ 0 on the vector path, a partial band
  { kind: 'activations', rows: 45, cols: 256, offset: 1 }, // unaligned rows: every group element-wise
  { kind: 'activations', rows: 1, cols: 7168 },
  { kind: 'activations', rows: 8, cols: 7168, special: true },
  { kind: 'activations', rows: 7, cols: 136 },
  { kind: 'activations', rows: 5, cols: 1 },
  // many groups per warp: interior bands and tile columns wrap, both register buffers in turn
  { kind: 'activations', rows: 37, cols: 1000, grid: 1 },
  { kind: 'activations', rows: 64, cols: 1024, grid: 2 },
  { kind: 'activations', rows: 63, cols: 1152, grid: 3, special: true },
  { kind: 'activations', rows: 16, cols: 896, grid: 1, offset: 2 },
  { kind: 'weights', rows: 256, cols: 512 },
  { kind: 'weights', rows: 300, cols: 200, special: true }, // partial blocks in both directions
  { kind: 'weights', rows: 130, cols: 260, offset: 1 },
];

test('both quantization kernels give the emulation\'s codes and scales bit for bit', { skip }, () => {
  if ('skip' in built) return;
  const ctx = new EmulatedDevice(built.path).context();
  let count = 0;
  for (const type of ['bf16', 'f32'] as const) {
    for (const pow2 of [false, true]) {
      for (const c of CASES) {
        runCase(ctx, { ...c, type, pow2 });
        count++;
      }
    }
  }
  console.log(`# ${count} cases identical to the emulation`);
});
