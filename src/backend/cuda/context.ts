// One GPU, as the CUDA backend uses it (DESIGN §7): the device's primary context, one
// non-blocking stream that every kernel, copy and GEMM is ordered on, stream-ordered
// allocations from the device's default memory pool (set to keep freed memory instead of
// returning it to the driver), a cuBLASLt handle with a 32 MiB workspace, compiled kernel
// modules, and CUDA-graph capture of that stream.

import { check, driver, toDevicePtr, type Handle, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
  CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED,
  CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, CU_STREAM_NON_BLOCKING, CU_EVENT_DEFAULT, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL } from './ffi/driver.js';
import { check as checkLt, cublasLt, cublasLtVersion } from './ffi/cublaslt.js';
import { nvrtcVersion } from './ffi/nvrtc.js';
import { loadedLibraryPaths, type CudaLibraryId } from './ffi/libraries.js';
import { compileKernelFile, gpuArchitecture, KernelModule, type KernelCompileOptions } from './compile.js';

export const CUBLASLT_WORKSPACE_BYTES = 32 * 1024 * 1024;

export interface CudaDeviceInfo {
  ordinal: number;
  name: string;
  computeCapability: string;
  arch: string;
  smCount: number;
  totalMemoryBytes: number;
  freeMemoryBytes: number;
  maxSharedMemoryPerBlockOptin: number;
  /** "13.0" from cuDriverGetVersion. */
  driverVersion: string;
  /** NVRTC version, or the reason it is unavailable. */
  nvrtcVersion: string;
  cublasLtVersion: string;
  libraries: Partial<Record<CudaLibraryId, string>>;
}

/** Typed arrays whose bytes can be copied to and from the device. */
export type HostArray = Float32Array | Float64Array | Int32Array | Uint32Array | Uint16Array | Int16Array | Uint8Array | Int8Array | BigInt64Array | BigUint64Array;

function int(call: string, fn: (out: number[]) => number): number {
  const out = [0];
  check(call, fn(out));
  return out[0]!;
}

export class CudaEvent {
  constructor(readonly handle: Handle, private readonly ctx: CudaContext) {}
  record(): void {
    check('cuEventRecord', driver().cuEventRecord(this.handle, this.ctx.stream));
  }
  synchronize(): void {
    check('cuEventSynchronize', driver().cuEventSynchronize(this.handle));
  }
  /** Milliseconds from `start` to this event (both recorded and complete). */
  elapsedSince(start: CudaEvent): number {
    const ms = [0];
    check('cuEventElapsedTime', driver().cuEventElapsedTime(ms, start.handle, this.handle));
    return ms[0]!;
  }
  destroy(): void {
    check('cuEventDestroy', driver().cuEventDestroy(this.handle));
  }
}

/** A captured stream sequence, instantiated; `launch` replays it on the context's stream. */
export class CudaGraph {
  constructor(private graph: Handle, private exec: Handle, private readonly ctx: CudaContext) {}
  launch(): void {
    if (this.exec === null) throw new Error('CUDA graph was destroyed');
    check('cuGraphLaunch', driver().cuGraphLaunch(this.exec, this.ctx.stream));
  }
  destroy(): void {
    if (this.exec !== null) check('cuGraphExecDestroy', driver().cuGraphExecDestroy(this.exec));
    if (this.graph !== null) check('cuGraphDestroy', driver().cuGraphDestroy(this.graph));
    this.exec = null;
    this.graph = null;
  }
}

export class CudaContext {
  readonly ordinal: number;
  readonly device: number;
  readonly context: Handle;
  readonly stream: Handle;
  readonly ltHandle: Handle;
  readonly workspace: number;
  readonly workspaceBytes = CUBLASLT_WORKSPACE_BYTES;
  readonly computeCapability: [number, number];
  readonly arch: string;
  readonly smCount: number;
  readonly maxSharedMemoryPerBlockOptin: number;
  private readonly modules = new Map<string, KernelModule>();
  private readonly ptrOut = [0];
  private capturing = false;
  private disposed = false;

  private constructor(ordinal: number) {
    const cu = driver();
    check('cuInit', cu.cuInit(0));
    const count = int('cuDeviceGetCount', (o) => cu.cuDeviceGetCount(o));
    if (ordinal < 0 || ordinal >= count) throw new Error(`CUDA device ${ordinal} does not exist: this machine has ${count} CUDA device${count === 1 ? '' : 's'}`);
    this.ordinal = ordinal;
    this.device = int('cuDeviceGet', (o) => cu.cuDeviceGet(o, ordinal));
    const attr = (a: number, what: string): number => int(`cuDeviceGetAttribute(${what})`, (o) => cu.cuDeviceGetAttribute(o, a, this.device));
    this.computeCapability = [attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 'COMPUTE_CAPABILITY_MAJOR'), attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 'COMPUTE_CAPABILITY_MINOR')];
    this.arch = gpuArchitecture(...this.computeCapability);
    this.smCount = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 'MULTIPROCESSOR_COUNT');
    this.maxSharedMemoryPerBlockOptin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 'MAX_SHARED_MEMORY_PER_BLOCK_OPTIN');
    if (!attr(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 'MEMORY_POOLS_SUPPORTED')) throw new Error(`CUDA device ${ordinal} does not support stream-ordered memory pools (cuMemAllocAsync)`);

    const ctxOut: Handle[] = [null];
    check('cuDevicePrimaryCtxRetain', cu.cuDevicePrimaryCtxRetain(ctxOut, this.device));
    this.context = ctxOut[0];
    check('cuCtxSetCurrent', cu.cuCtxSetCurrent(this.context));

    // Keep freed blocks in the pool: without a release threshold the pool hands memory back to
    // the driver at every synchronisation, and the next step pays for cuMemMap again.
    const poolOut: Handle[] = [null];
    check('cuDeviceGetDefaultMemPool', cu.cuDeviceGetDefaultMemPool(poolOut, this.device));
    check('cuMemPoolSetAttribute(RELEASE_THRESHOLD)', cu.cuMemPoolSetAttribute(poolOut[0], CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, new BigUint64Array([0xffffffffffffffffn])));

    const streamOut: Handle[] = [null];
    check('cuStreamCreate', cu.cuStreamCreate(streamOut, CU_STREAM_NON_BLOCKING));
    this.stream = streamOut[0];

    const lt = cublasLt();
    const ltOut: Handle[] = [null];
    checkLt('cublasLtCreate', lt.cublasLtCreate(ltOut));
    this.ltHandle = ltOut[0];
    this.workspace = this.alloc(this.workspaceBytes);
  }

  /** Initialise device `ordinal` (default 0) and make its primary context current. */
  static create(ordinal = 0): CudaContext {
    return new CudaContext(ordinal);
  }

  /** Make this context current on the calling thread (after another library changed it). */
  makeCurrent(): void {
    check('cuCtxSetCurrent', driver().cuCtxSetCurrent(this.context));
  }

  // ---- memory -------------------------------------------------------------------------

  /** Stream-ordered allocation from the pool; 0 bytes gives the null pointer 0. */
  alloc(bytes: number): number {
    if (bytes <= 0) return 0;
    const status = driver().cuMemAllocAsync(this.ptrOut, bytes, this.stream);
    if (status !== 0) check(`cuMemAllocAsync(${bytes} bytes)`, status);
    return toDevicePtr(this.ptrOut[0]!);
  }

  /** Stream-ordered free back to the pool (the memory is reused only by later work on the stream). */
  free(ptr: number): void {
    if (ptr === 0) return;
    check('cuMemFreeAsync', driver().cuMemFreeAsync(ptr, this.stream));
  }

  /** Copy host bytes to the device; returns once the host array may be reused. */
  copyToDevice(dst: number, src: HostArray, bytes = src.byteLength): void {
    if (bytes > src.byteLength) throw new Error(`copyToDevice: ${bytes} bytes from a ${src.byteLength}-byte array`);
    if (bytes === 0) return;
    check('cuMemcpyHtoDAsync', driver().cuMemcpyHtoDAsync(dst, src, bytes, this.stream));
  }

  /** Copy device bytes into a host array, waiting for the stream's earlier work and the copy. */
  copyToHost(dst: HostArray, src: number, bytes = dst.byteLength): void {
    if (bytes > dst.byteLength) throw new Error(`copyToHost: ${bytes} bytes into a ${dst.byteLength}-byte array`);
    if (bytes === 0) return;
    check('cuMemcpyDtoHAsync', driver().cuMemcpyDtoHAsync(dst, src, bytes, this.stream));
    this.synchronize();
  }

  copyDeviceToDevice(dst: number, src: number, bytes: number): void {
    if (bytes === 0) return;
    check('cuMemcpyDtoDAsync', driver().cuMemcpyDtoDAsync(dst, src, bytes, this.stream));
  }

  /** Set `bytes` bytes to `value` (0..255). */
  memset8(dst: number, value: number, bytes: number): void {
    if (bytes === 0) return;
    check('cuMemsetD8Async', driver().cuMemsetD8Async(dst, value, bytes, this.stream));
  }

  /** Set `count` 32-bit words to `value` (bits, e.g. a float's). */
  memset32(dst: number, value: number, count: number): void {
    if (count === 0) return;
    check('cuMemsetD32Async', driver().cuMemsetD32Async(dst, value >>> 0, count, this.stream));
  }

  /** Upload a typed array into a fresh allocation. */
  upload(src: HostArray): number {
    const ptr = this.alloc(src.byteLength);
    this.copyToDevice(ptr, src);
    return ptr;
  }

  memoryInfo(): { freeBytes: number; totalBytes: number } {
    const free = [0], total = [0];
    check('cuMemGetInfo', driver().cuMemGetInfo(free, total));
    return { freeBytes: Number(free[0]), totalBytes: Number(total[0]) };
  }

  synchronize(): void {
    check('cuStreamSynchronize', driver().cuStreamSynchronize(this.stream));
  }

  // ---- kernels ------------------------------------------------------------------------

  /** The module of kernel file `file` (e.g. 'rmsnorm.cu'), compiled for this GPU on first use. */
  kernels(file: string, options: Partial<KernelCompileOptions> = {}): KernelModule {
    const key = `${file}\0${JSON.stringify(options)}`;
    let m = this.modules.get(key);
    if (!m) {
      const compiled = compileKernelFile(file, { arch: this.arch, ...options });
      m = KernelModule.load(file, compiled.cubin);
      this.modules.set(key, m);
    }
    return m;
  }

  // ---- timing and graphs --------------------------------------------------------------

  createEvent(): CudaEvent {
    const out: Handle[] = [null];
    check('cuEventCreate', driver().cuEventCreate(out, CU_EVENT_DEFAULT));
    return new CudaEvent(out[0], this);
  }

  /**
   * Record everything `body` enqueues on the stream into a CUDA graph instead of running it.
   * Only stream work may happen inside (kernels, device copies, memsets, cuBLASLt, pool
   * allocations): no host copies and no synchronisation.
   */
  capture(body: () => void, instantiateFlags = 0): CudaGraph {
    if (this.capturing) throw new Error('CUDA stream capture is already in progress');
    const cu = driver();
    check('cuStreamBeginCapture', cu.cuStreamBeginCapture(this.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    this.capturing = true;
    let failure: unknown;
    try {
      body();
    } catch (e) {
      failure = e;
    }
    const graphOut: Handle[] = [null];
    const endStatus = cu.cuStreamEndCapture(this.stream, graphOut);
    this.capturing = false;
    if (failure !== undefined) {
      if (graphOut[0]) cu.cuGraphDestroy(graphOut[0]);
      throw failure;
    }
    check('cuStreamEndCapture', endStatus);
    const execOut: Handle[] = [null];
    const status = cu.cuGraphInstantiate(execOut, graphOut[0], instantiateFlags);
    if (status !== 0) {
      cu.cuGraphDestroy(graphOut[0]);
      check('cuGraphInstantiate', status);
    }
    return new CudaGraph(graphOut[0], execOut[0], this);
  }

  get isCapturing(): boolean {
    return this.capturing;
  }

  // ---- description --------------------------------------------------------------------

  describe(): CudaDeviceInfo {
    const cu = driver();
    const nameBuf = Buffer.alloc(256);
    check('cuDeviceGetName', cu.cuDeviceGetName(nameBuf, nameBuf.length, this.device));
    const end = nameBuf.indexOf(0);
    const version = int('cuDriverGetVersion', (o) => cu.cuDriverGetVersion(o));
    const total = [0];
    check('cuDeviceTotalMem', cu.cuDeviceTotalMem(total, this.device));
    let nvrtc: string;
    try {
      nvrtc = nvrtcVersion();
    } catch (e) {
      nvrtc = `unavailable: ${(e as Error).message}`;
    }
    return {
      ordinal: this.ordinal,
      name: nameBuf.toString('utf8', 0, end < 0 ? nameBuf.length : end),
      computeCapability: `${this.computeCapability[0]}.${this.computeCapability[1]}`,
      arch: this.arch,
      smCount: this.smCount,
      totalMemoryBytes: Number(total[0]),
      freeMemoryBytes: this.memoryInfo().freeBytes,
      maxSharedMemoryPerBlockOptin: this.maxSharedMemoryPerBlockOptin,
      driverVersion: `${Math.floor(version / 1000)}.${Math.floor((version % 1000) / 10)}`,
      nvrtcVersion: nvrtc,
      cublasLtVersion: cublasLtVersion(),
      libraries: loadedLibraryPaths(),
    };
  }

  /** Wait for the stream, then release the workspace, modules, cuBLASLt handle, stream and context. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const cu = driver();
    this.synchronize();
    for (const m of this.modules.values()) m.unload();
    this.modules.clear();
    this.free(this.workspace);
    this.synchronize();
    checkLt('cublasLtDestroy', cublasLt().cublasLtDestroy(this.ltHandle));
    check('cuStreamDestroy', cu.cuStreamDestroy(this.stream));
    check('cuDevicePrimaryCtxRelease', cu.cuDevicePrimaryCtxRelease(this.device));
  }
}
