// A CPU emulator of the CUDA device for tests on machines without a GPU: the kernel files the
// backend's kernel table names are compiled by g++ as host C++ (cuda-shim.h, with CUDA's own
// cuda_bf16.h), each CUDA thread runs as a fiber (runtime.cpp), and a stand-in CudaContext and
// GEMM runner let the real CudaBackend and ops.ts launchers run on it unchanged. It checks what a
// GPU would not report clearly: launch shapes, kernel pointer arguments outside live memory,
// writes past an allocation's end, and (through NaN-filled fresh and freed memory) reads of
// memory nothing wrote. It says nothing about speed, races between blocks or real GPU limits.
//
// Graph capture records instead of running, as a CUDA graph does: kernel launches (with their
// argument values as they were then), GEMMs, memsets and device copies are kept and run again at
// each launch of the graph, so work that read a host number at capture repeats that number.
// Memory allocated during capture belongs to the graph (its frees wait for the graph's
// destruction); host copies and synchronisation during capture throw, as they fail on a GPU.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { KERNELS } from '../../../../src/backend/cuda/kernels.js';
import { kernelDir } from '../../../../src/backend/cuda/compile.js';
import { KernelArgs, dim3, type Dim3, type KernelArgType } from '../../../../src/backend/cuda/launch.js';
import type { CudaContext, HostArray } from '../../../../src/backend/cuda/context.js';
import type { GemmRunner } from '../../../../src/backend/cuda/cuda-backend.js';
import type { RowMajorGemm } from '../../../../src/backend/cuda/matmul.js';
import { repoRoot } from '../../../shared-paths.js';

const run = promisify(execFile);
const sourceDir = join(repoRoot, 'test', 'backend', 'cuda', 'emulator');
/** Dynamic shared memory each file's arrays hold (Hopper's opt-in maximum). */
const DYNAMIC_SHARED_BYTES = 227 * 1024;
const STATIC_SHARED_LIMIT = 48 * 1024;

function cudaIncludeDir(): string | undefined {
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter((r): r is string => !!r);
  return roots.map((r) => join(r, 'include')).find((d) => existsSync(join(d, 'cuda_bf16.h')));
}

/** The headers of the kernel folder (what NVRTC finds through its include path, compile.ts). */
function kernelHeaders(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.cuh') || f.endsWith('.h')).sort();
}

/**
 * Whether a kernel file is plain CUDA C++, counting the kernel-folder headers it includes (inline
 * PTX has no host meaning).
 */
function emulatable(dir: string, file: string, seen = new Set<string>()): boolean {
  seen.add(file);
  const source = readFileSync(join(dir, file), 'utf8');
  if (/\basm\s*(volatile\s*)?\(/.test(source)) return false;
  for (const [, header] of source.matchAll(/^\s*#\s*include\s+"([^"]+)"/gm)) {
    if (!seen.has(header) && existsSync(join(dir, header)) && !emulatable(dir, header, seen)) return false;
  }
  return true;
}

/** The emulatable kernel files of the table and the kernels of each. */
function kernelFiles(): Map<string, string[]> {
  const byFile = new Map<string, string[]>();
  for (const [name, spec] of Object.entries(KERNELS)) byFile.set(spec.file, [...(byFile.get(spec.file) ?? []), name]);
  for (const file of [...byFile.keys()]) if (!emulatable(kernelDir(), file)) byFile.delete(file);
  return byFile;
}

/** The kernels of the table that the emulator runs (those of files without inline PTX). */
export function emulatedKernels(): string[] {
  return [...kernelFiles().values()].flat();
}

/** Shared memory as host objects: one per block (`static`), the dynamic arrays defined by the wrapper. */
function rewriteShared(source: string): string {
  return source.replace(/extern\s+__shared__/g, 'extern').replace(/__shared__/g, 'static');
}

/** C++ that registers kernels with the runtime and calls one with an array of argument pointers. */
export const KERNEL_CALL_PROLOGUE = [
  '#include <cstddef>',
  '#include <type_traits>',
  '#include <utility>',
  '#include <vector>',
  'void emu_register_kernel(const char*, void (*)(void**), std::vector<std::pair<void*, size_t>>*);',
  'template <typename... A, size_t... I> static void emu_call_impl(void (*f)(A...), void** p, std::index_sequence<I...>) {',
  '  f(*reinterpret_cast<std::remove_reference_t<A>*>(p[I])...);',
  '}',
  'template <typename... A> static void emu_call(void (*f)(A...), void** p) { emu_call_impl(f, p, std::index_sequence_for<A...>{}); }',
];

function wrapper(file: string, kernels: string[], source: string): string {
  const dynamic = [...source.matchAll(/extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]/g)].map((m) => ({ type: m[1]!, name: m[2]! }));
  return [
    '#include "cuda-shim.h"',
    ...KERNEL_CALL_PROLOGUE,
    ...dynamic.map((d) => `alignas(16) static ${d.type} ${d.name}[${DYNAMIC_SHARED_BYTES} / sizeof(${d.type})];`),
    `static std::vector<std::pair<void*, size_t>> emuDynamicShared = {${dynamic.map((d) => `{${d.name}, sizeof(${d.name})}`).join(', ')}};`,
    `#include "${file}"`,
    'namespace {',
    'struct Registrar {',
    '  Registrar() {',
    ...kernels.map((k) => `    emu_register_kernel("${k}", [](void** p) { emu_call(${k}, p); }, &emuDynamicShared);`),
    '  }',
    '} registrar;',
    '}  // namespace',
    '',
  ].join('\n');
}

/** Build (or find in the cache) the emulator library; returns its path, or why it cannot be built. */
async function buildLibrary(): Promise<{ path: string } | { skip: string }> {
  const include = cudaIncludeDir();
  if (!include) return { skip: 'no CUDA headers (cuda_bf16.h) under CUDA_HOME, CUDA_PATH or /usr/local/cuda' };
  try {
    await run('g++', ['--version']);
  } catch {
    return { skip: 'no g++' };
  }
  const kernels = kernelDir();
  const files = kernelFiles();
  const headers = kernelHeaders(kernels);
  const hash = createHash('sha256');
  for (const f of ['cuda-shim.h', 'runtime.cpp']) hash.update(readFileSync(join(sourceDir, f)));
  for (const f of [...headers, ...files.keys()].sort()) hash.update(f).update(readFileSync(join(kernels, f)));
  hash.update(JSON.stringify([...files]));
  const key = hash.digest('hex').slice(0, 16);
  const dir = join(tmpdir(), `dsv3-cuda-emulator-${key}`);
  const lib = join(dir, 'libemu.so');
  if (existsSync(lib)) return { path: lib };

  const work = `${dir}.${process.pid}`;
  mkdirSync(work, { recursive: true });
  for (const h of headers) writeFileSync(join(work, h), rewriteShared(readFileSync(join(kernels, h), 'utf8')));
  // Kernels read 16-byte vectors through other element types, as CUDA allows: no strict aliasing.
  const flags = ['-std=c++17', '-O2', '-fno-strict-aliasing', '-fPIC', '-w', `-I${work}`, `-I${sourceDir}`, `-I${include}`];
  const objects: Promise<string>[] = [];
  for (const [file, names] of files) {
    const source = readFileSync(join(kernels, file), 'utf8');
    writeFileSync(join(work, file), rewriteShared(source));
    const tu = join(work, `${file}.cpp`);
    writeFileSync(tu, wrapper(file, names, source));
    objects.push(run('g++', [...flags, '-c', tu, '-o', `${tu}.o`], { maxBuffer: 1 << 24 }).then(() => `${tu}.o`));
  }
  objects.push(run('g++', [...flags, '-c', join(sourceDir, 'runtime.cpp'), '-o', join(work, 'runtime.o')]).then(() => join(work, 'runtime.o')));
  const built = await Promise.all(objects);
  await run('g++', ['-shared', '-o', join(work, 'libemu.so'), ...built]);
  mkdirSync(dir, { recursive: true });
  renameSync(join(work, 'libemu.so'), lib);
  rmSync(work, { recursive: true, force: true });
  return { path: lib };
}

/** A device pointer from a koffi uint64 result. */
function address(v: number | bigint): number {
  return typeof v === 'bigint' ? Number(v) : v;
}

class EmulatedKernel {
  readonly args: KernelArgs;
  private readonly letters: string;
  private maxShared = STATIC_SHARED_LIMIT;

  constructor(readonly name: string, types: readonly KernelArgType[], private readonly device: EmulatedDevice) {
    this.args = new KernelArgs(types);
    this.letters = types.map((t) => (t === 'ptr' ? 'p' : 's')).join('');
  }

  setMaxDynamicSharedBytes(bytes: number): void {
    if (bytes > DYNAMIC_SHARED_BYTES) throw new Error(`${this.name}: ${bytes} bytes of shared memory exceed the device's ${DYNAMIC_SHARED_BYTES}`);
    this.maxShared = bytes;
  }

  launch(_stream: unknown, grid: Dim3, block: Dim3, sharedBytes: number, values: ArrayLike<number>): void {
    const [gx, gy, gz] = dim3(grid);
    const [bx, by, bz] = dim3(block);
    const argValues = Array.from(values);
    const maxShared = this.maxShared;
    this.device.enqueue(() => {
      this.args.set(argValues);
      this.device.launches.push(this.name);
      this.device.call(`launch ${this.name}`, this.device.fns.emu_launch(this.name, this.letters, gx, gy, gz, bx, by, bz, sharedBytes, maxShared, this.args.pointers));
    });
  }
}

/** What a capture in progress has recorded. */
interface Recording {
  work: (() => void)[];
  /** Memory allocated during the capture: the graph's own. */
  allocations: Set<number>;
  /** Frees of the graph's own memory, done when the graph is destroyed. */
  frees: number[];
}

/** The emulated device: memory, kernels and a CudaContext-shaped object for the backend. */
export class EmulatedDevice {
  readonly fns: Record<string, (...args: unknown[]) => number>;
  /** Names of the kernels launched so far. */
  readonly launches: string[] = [];
  private readonly modules = new Map<string, Map<string, EmulatedKernel>>();
  /** The capture in progress, or null. */
  private recording: Recording | null = null;

  constructor(libPath: string) {
    const lib = koffi.load(libPath);
    const sig = {
      emu_last_error: 'const char *emu_last_error()',
      emu_clear_error: 'void emu_clear_error()',
      emu_alloc: 'uint64_t emu_alloc(uint64_t bytes)',
      emu_free: 'int emu_free(uint64_t ptr)',
      emu_live_bytes: 'uint64_t emu_live_bytes()',
      emu_h2d: 'int emu_h2d(uint64_t dst, const void *src, uint64_t bytes)',
      emu_d2h: 'int emu_d2h(void *dst, uint64_t src, uint64_t bytes)',
      emu_d2d: 'int emu_d2d(uint64_t dst, uint64_t src, uint64_t bytes)',
      emu_memset8: 'int emu_memset8(uint64_t dst, int value, uint64_t bytes)',
      emu_memset32: 'int emu_memset32(uint64_t dst, uint32_t value, uint64_t count)',
      emu_launch: 'int emu_launch(const char *name, const char *types, uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by, uint32_t bz, uint32_t shared, uint32_t maxShared, void *params)',
      emu_gemm: 'int emu_gemm(int m, int n, int k, int abType, int cType, int transA, int transB, int64_t lda, int64_t ldb, int64_t ldc, int batch, int64_t strideA, int64_t strideB, int64_t strideC, uint64_t a, uint64_t b, uint64_t c, float alpha, float beta)',
    };
    this.fns = Object.fromEntries(Object.entries(sig).map(([k, proto]) => [k, lib.func(proto) as (...args: unknown[]) => number]));
  }

  /** Throw the emulator's message when a call failed. */
  call(what: string, status: number): void {
    if (status === 0) return;
    const message = this.fns.emu_last_error() as unknown as string;
    this.fns.emu_clear_error();
    throw new Error(`emulated device, ${what}: ${message}`);
  }

  liveBytes(): number {
    return address(this.fns.emu_live_bytes() as unknown as number | bigint);
  }

  /** Run stream work now, or record it when a capture is in progress. */
  enqueue(work: () => void): void {
    if (this.recording) this.recording.work.push(work);
    else work();
  }

  /** Throw for work that a stream capture cannot record. */
  private notCapturing(what: string): void {
    if (this.recording) throw new Error(`emulated device: ${what} during stream capture (only stream work can be captured)`);
  }

  /** Record what `body` enqueues into a graph (see the top of this file). */
  private capture(body: () => void): { launch(): void; destroy(): void } {
    if (this.recording) throw new Error('CUDA stream capture is already in progress');
    const rec: Recording = { work: [], allocations: new Set(), frees: [] };
    this.recording = rec;
    try {
      body();
    } catch (e) {
      this.recording = null;
      for (const p of rec.allocations) this.call('free', this.fns.emu_free(p));
      throw e;
    }
    this.recording = null;
    let destroyed = false;
    return {
      launch: () => {
        if (destroyed) throw new Error('CUDA graph was destroyed');
        for (const w of rec.work) w();
      },
      destroy: () => {
        if (destroyed) return;
        destroyed = true;
        for (const p of rec.frees) this.call('free', this.fns.emu_free(p));
      },
    };
  }

  /** A stand-in for CudaContext with the members the backend and the launchers use. */
  context(): CudaContext {
    const fns = this.fns;
    const call = this.call.bind(this);
    const device = this;
    const ctx = {
      ordinal: 0,
      arch: 'emulated',
      smCount: 4,
      maxSharedMemoryPerBlockOptin: DYNAMIC_SHARED_BYTES,
      stream: null,
      get isCapturing(): boolean {
        return device.recording !== null;
      },
      alloc(bytes: number): number {
        if (bytes <= 0) return 0;
        const p = address(fns.emu_alloc(bytes) as unknown as number | bigint);
        if (p === 0) throw new Error(`emulated device: out of host memory for ${bytes} bytes`);
        device.recording?.allocations.add(p);
        return p;
      },
      free(ptr: number): void {
        if (ptr === 0) return;
        const rec = device.recording;
        if (rec?.allocations.has(ptr)) rec.frees.push(ptr);
        else device.enqueue(() => call('free', fns.emu_free(ptr)));
      },
      copyToDevice(dst: number, src: HostArray, bytes = src.byteLength): void {
        device.notCapturing('copyToDevice');
        if (bytes > src.byteLength) throw new Error(`copyToDevice: ${bytes} bytes from a ${src.byteLength}-byte array`);
        call('copyToDevice', fns.emu_h2d(dst, src, bytes));
      },
      copyToHost(dst: HostArray, src: number, bytes = dst.byteLength): void {
        device.notCapturing('copyToHost');
        if (bytes > dst.byteLength) throw new Error(`copyToHost: ${bytes} bytes into a ${dst.byteLength}-byte array`);
        call('copyToHost', fns.emu_d2h(dst, src, bytes));
      },
      copyDeviceToDevice(dst: number, src: number, bytes: number): void {
        device.enqueue(() => call('copyDeviceToDevice', fns.emu_d2d(dst, src, bytes)));
      },
      memset8(dst: number, value: number, bytes: number): void {
        device.enqueue(() => call('memset8', fns.emu_memset8(dst, value, bytes)));
      },
      memset32(dst: number, value: number, count: number): void {
        device.enqueue(() => call('memset32', fns.emu_memset32(dst, value >>> 0, count)));
      },
      upload(src: HostArray): number {
        const p = ctx.alloc(src.byteLength);
        ctx.copyToDevice(p, src);
        return p;
      },
      synchronize(): void {
        device.notCapturing('synchronize');
      },
      capture: (body: () => void) => device.capture(body),
      makeCurrent(): void {},
      memoryInfo: () => ({ freeBytes: 0, totalBytes: 0 }),
      kernels(file: string) {
        let m = device.modules.get(file);
        if (!m) device.modules.set(file, (m = new Map()));
        const module = m;
        return {
          fn(name: string, types: readonly KernelArgType[]): EmulatedKernel {
            let f = module.get(name);
            if (!f) module.set(name, (f = new EmulatedKernel(name, types, device)));
            return f;
          },
        };
      },
      dispose(): void {},
    };
    return ctx as unknown as CudaContext;
  }

  /** The reference GEMM, in place of cuBLASLt. */
  matmul(): GemmRunner {
    const fns = this.fns;
    const call = this.call.bind(this);
    const device = this;
    return {
      run(g: RowMajorGemm, a: number, b: number, c: number, alpha = 1, beta = 0): void {
        if (g.m === 0 || g.n === 0) return;
        const type = (t: string) => (t === 'bf16' ? 0 : 1);
        const s = { ...g };
        device.enqueue(() => call(`gemm ${s.m}×${s.n}×${s.k}`, fns.emu_gemm(s.m, s.n, s.k, type(s.abType), type(s.cType), s.transA ? 1 : 0, s.transB ? 1 : 0,
          s.lda, s.ldb, s.ldc, s.batch ?? 1, s.strideA ?? 0, s.strideB ?? 0, s.strideC ?? 0, a, b, c, alpha, beta)));
      },
      dispose(): void {},
    };
  }
}

let device: Promise<EmulatedDevice | string> | undefined;

/**
 * The emulated device (built once per process), or the reason there is none (no g++, no CUDA
 * headers). A kernel file that does not compile as host C++ is an error, not a reason to skip.
 */
export function emulatedDevice(): Promise<EmulatedDevice | string> {
  device ??= buildLibrary().then((r) => ('skip' in r ? r.skip : new EmulatedDevice(r.path)));
  return device;
}
