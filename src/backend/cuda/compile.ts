// Run-time kernel compilation (DESIGN §3): the CUDA C++ files in src/backend/cuda/kernels/ are
// compiled by NVRTC for the GPU's own architecture (sm_90a on Hopper) into CUBIN, cached on
// disk under a sha256 of (file name, source, headers, options, NVRTC version), and loaded as
// modules whose functions launch with pre-packed arguments (launch.ts).

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { check, driver, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, type Handle } from './ffi/driver.js';
import { compileToCubin, cudaIncludeDir, nvrtcVersion } from './ffi/nvrtc.js';
import { dim3, KernelArgs, type Dim3, type KernelArgType } from './launch.js';

/** `sm_90a` on compute capability 9.0 (Hopper's wgmma/TMA need the `a` target), `sm_XY` otherwise. */
export function gpuArchitecture(major: number, minor: number): string {
  return major === 9 && minor === 0 ? 'sm_90a' : `sm_${major}${minor}`;
}

/**
 * The kernel sources. Compiled JS lives in dist/src/backend/cuda/, the sources stay in
 * src/backend/cuda/kernels/: walk up from this file to the package root (the folder whose
 * package.json names "dsv3") and take src/backend/cuda/kernels there. DSV3_KERNEL_DIR overrides.
 */
export function kernelDir(): string {
  const override = process.env.DSV3_KERNEL_DIR;
  if (override) return resolve(override);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'dsv3') {
          const kernels = join(dir, 'src', 'backend', 'cuda', 'kernels');
          if (existsSync(kernels)) return kernels;
        }
      } catch {
        // Unreadable package.json: keep walking up.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(`CUDA kernel sources not found: no src/backend/cuda/kernels under a "dsv3" package above ${fileURLToPath(import.meta.url)}; set DSV3_KERNEL_DIR`);
}

/** Every `.cu` file of the kernel folder, sorted. */
export function kernelSourceFiles(dir = kernelDir()): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.cu')).sort();
}

/** `$DSV3_CACHE_DIR/kernels`, else `$XDG_CACHE_HOME/dsv3/kernels`, else `~/.cache/dsv3/kernels`. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DSV3_CACHE_DIR) return join(env.DSV3_CACHE_DIR, 'kernels');
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'dsv3', 'kernels');
}

export interface KernelCompileOptions {
  /** Target, e.g. 'sm_90a' (see gpuArchitecture). */
  arch: string;
  /** --use_fast_math (off by default: our tolerances are set for IEEE math). */
  fastMath?: boolean;
  /** Preprocessor definitions, passed as -DNAME=VALUE. */
  defines?: Record<string, string | number>;
  /** Further NVRTC options. */
  extraOptions?: string[];
  /** Cache folder; null disables the disk cache. Default: defaultCacheDir(). */
  cacheDir?: string | null;
  /** Folder holding the kernel sources (default kernelDir()). */
  sourceDir?: string;
}

export interface CompiledKernel {
  name: string;
  cubin: Buffer;
  /** sha256 hex of everything the CUBIN depends on. */
  key: string;
  /** Where the CUBIN came from: the process's memory, the disk cache, or NVRTC just now. */
  source: 'memory' | 'disk' | 'nvrtc';
  options: string[];
}

/** The NVRTC options used for every kernel file. */
export function nvrtcOptions(opts: KernelCompileOptions, sourceDir: string): string[] {
  const options = [`--gpu-architecture=${opts.arch}`, '-std=c++17', `--include-path=${sourceDir}`];
  const cudaInclude = cudaIncludeDir();
  if (cudaInclude) options.push(`--include-path=${cudaInclude}`);
  if (opts.fastMath) options.push('--use_fast_math');
  for (const [k, v] of Object.entries(opts.defines ?? {})) options.push(`-D${k}=${v}`);
  options.push(...(opts.extraOptions ?? []));
  return options;
}

const memoryCache = new Map<string, Buffer>();

/** Forget the CUBINs compiled or read by this process (tests of the disk cache). */
export function clearKernelMemoryCache(): void {
  memoryCache.clear();
}

/** Compile a source string (with the kernel folder's headers) through the disk cache. */
export function compileSource(name: string, source: string, opts: KernelCompileOptions): CompiledKernel {
  const sourceDir = opts.sourceDir ?? kernelDir();
  const options = nvrtcOptions(opts, sourceDir);
  const hash = createHash('sha256');
  hash.update(`dsv3-kernel-v1\0${name}\0${source}\0${options.join('\0')}\0nvrtc ${nvrtcVersion()}\0`);
  // Headers of the kernel folder are part of every kernel's input.
  for (const h of readdirSync(sourceDir).filter((f) => f.endsWith('.cuh') || f.endsWith('.h')).sort()) {
    hash.update(`${h}\0`);
    hash.update(readFileSync(join(sourceDir, h)));
  }
  const key = hash.digest('hex');
  const inMemory = memoryCache.get(key);
  if (inMemory) return { name, cubin: inMemory, key, source: 'memory', options };

  const cacheDir = opts.cacheDir === undefined ? defaultCacheDir() : opts.cacheDir;
  const cachePath = cacheDir ? join(cacheDir, `${basename(name, '.cu')}-${key}.cubin`) : undefined;
  if (cachePath && existsSync(cachePath)) {
    try {
      const cubin = readFileSync(cachePath);
      if (cubin.length > 0) {
        memoryCache.set(key, cubin);
        return { name, cubin, key, source: 'disk', options };
      }
    } catch {
      // Unreadable cache entry: compile again.
    }
  }
  const { cubin } = compileToCubin(source, name, options);
  memoryCache.set(key, cubin);
  if (cachePath && cacheDir) {
    try {
      mkdirSync(cacheDir, { recursive: true });
      // Write then rename, so a concurrent reader never sees half a file.
      const tmp = `${cachePath}.${process.pid}.tmp`;
      writeFileSync(tmp, cubin);
      renameSync(tmp, cachePath);
    } catch {
      // A read-only cache folder only costs recompilation.
    }
  }
  return { name, cubin, key, source: 'nvrtc', options };
}

/** Compile `file` (e.g. 'rmsnorm.cu') from the kernel folder. */
export function compileKernelFile(file: string, opts: KernelCompileOptions): CompiledKernel {
  const sourceDir = opts.sourceDir ?? kernelDir();
  const source = readFileSync(join(sourceDir, file), 'utf8');
  return compileSource(file, source, { ...opts, sourceDir });
}

/** A loaded CUBIN (needs a current CUDA context: create a CudaContext first). */
export class KernelModule {
  readonly name: string;
  private handle: Handle;
  private readonly functions = new Map<string, KernelFunction>();

  private constructor(name: string, handle: Handle) {
    this.name = name;
    this.handle = handle;
  }

  static load(name: string, cubin: Buffer): KernelModule {
    const out: Handle[] = [null];
    check(`cuModuleLoadData(${name})`, driver().cuModuleLoadData(out, cubin));
    return new KernelModule(name, out[0]);
  }

  /** The kernel `name`, whose parameters have the C types `types` in order. */
  fn(name: string, types: readonly KernelArgType[]): KernelFunction {
    let f = this.functions.get(name);
    if (f) {
      if (f.args.types.join() !== types.join()) throw new Error(`kernel ${name} already declared with arguments (${f.args.types.join(', ')})`);
      return f;
    }
    if (this.handle === null) throw new Error(`module ${this.name} was unloaded`);
    const out: Handle[] = [null];
    check(`cuModuleGetFunction(${name})`, driver().cuModuleGetFunction(out, this.handle, name));
    f = new KernelFunction(name, out[0], new KernelArgs(types));
    this.functions.set(name, f);
    return f;
  }

  unload(): void {
    if (this.handle === null) return;
    check(`cuModuleUnload(${this.name})`, driver().cuModuleUnload(this.handle));
    this.handle = null;
    this.functions.clear();
  }
}

export class KernelFunction {
  readonly name: string;
  readonly handle: Handle;
  readonly args: KernelArgs;
  private readonly launchKernel = driver().cuLaunchKernel;

  constructor(name: string, handle: Handle, args: KernelArgs) {
    this.name = name;
    this.handle = handle;
    this.args = args;
  }

  /** Allow more than 48 KiB of dynamic shared memory (up to the device's opt-in limit). */
  setMaxDynamicSharedBytes(bytes: number): void {
    check(`cuFuncSetAttribute(${this.name}, MAX_DYNAMIC_SHARED_SIZE_BYTES)`, driver().cuFuncSetAttribute(this.handle, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes));
  }

  /** Launch on `stream` with the argument values in declaration order (device pointers as numbers). */
  launch(stream: Handle, grid: Dim3, block: Dim3, sharedBytes: number, values: ArrayLike<number>): void {
    this.args.set(values);
    const [gx, gy, gz] = dim3(grid);
    const [bx, by, bz] = dim3(block);
    const status = this.launchKernel(this.handle, gx, gy, gz, bx, by, bz, sharedBytes, stream, this.args.pointers, null);
    if (status !== 0) check(`cuLaunchKernel(${this.name}, grid ${gx}×${gy}×${gz}, block ${bx}×${by}×${bz}, shared ${sharedBytes})`, status);
  }
}
