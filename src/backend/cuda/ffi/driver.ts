// The CUDA driver API through koffi: the C signatures used, and one `check`.
//
// Conventions of this binding:
// - CUdeviceptr is an unsigned 64-bit integer, not a host pointer: it is declared `uint64_t`
//   and travels as a JS number (device addresses are far below 2^53; `toDevicePtr` asserts it).
// - Handles (CUcontext, CUstream, CUmodule, CUfunction, CUevent, CUgraph, CUgraphExec,
//   CUmemoryPool) are opaque koffi pointers; `null` is the NULL handle.
// - Output scalars use one-element arrays (`[0]`) with `_Out_`; host buffers for copies are
//   passed as typed arrays to `void *` parameters (koffi hands over a pointer to their contents).
// - Where cuda.h #defines a name to a versioned symbol (cuMemcpyHtoDAsync → _v2,
//   cuGraphInstantiate → cuGraphInstantiateWithFlags…) the versioned symbol is bound under the
//   plain name, so errors read like the documented API.

import koffi from 'koffi';
import { loadLibrary } from './libraries.js';

export type Handle = unknown;

/** Declare (once per process) a named pointer-to-opaque type for a CUDA handle. */
export function handleType(name: string): void {
  try {
    koffi.resolve(name);
  } catch {
    koffi.pointer(name, koffi.opaque());
  }
}

for (const t of ['CUcontext', 'CUstream', 'CUmodule', 'CUfunction', 'CUevent', 'CUgraph', 'CUgraphExec', 'CUmemoryPool']) handleType(t);
try {
  koffi.resolve('CUdeviceptr');
} catch {
  koffi.alias('CUdeviceptr', 'uint64_t');
}

/** API name → C prototype of the exported symbol. */
const SIGNATURES = {
  cuGetErrorName: 'int cuGetErrorName(int error, _Out_ const char **pStr)',
  cuGetErrorString: 'int cuGetErrorString(int error, _Out_ const char **pStr)',
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *version)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *device, int ordinal)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *count)',
  cuDeviceGetName: 'int cuDeviceGetName(void *name, int len, int dev)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *value, int attrib, int dev)',
  cuDeviceTotalMem: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
  cuDeviceGetDefaultMemPool: 'int cuDeviceGetDefaultMemPool(_Out_ CUmemoryPool *pool, int dev)',
  cuMemPoolSetAttribute: 'int cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value)',
  cuDevicePrimaryCtxRetain: 'int cuDevicePrimaryCtxRetain(_Out_ CUcontext *ctx, int dev)',
  cuDevicePrimaryCtxRelease: 'int cuDevicePrimaryCtxRelease_v2(int dev)',
  cuCtxSetCurrent: 'int cuCtxSetCurrent(CUcontext ctx)',
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuStreamCreate: 'int cuStreamCreate(_Out_ CUstream *stream, unsigned int flags)',
  cuStreamSynchronize: 'int cuStreamSynchronize(CUstream stream)',
  cuStreamDestroy: 'int cuStreamDestroy_v2(CUstream stream)',
  cuEventCreate: 'int cuEventCreate(_Out_ CUevent *event, unsigned int flags)',
  cuEventRecord: 'int cuEventRecord(CUevent event, CUstream stream)',
  cuEventSynchronize: 'int cuEventSynchronize(CUevent event)',
  cuEventDestroy: 'int cuEventDestroy_v2(CUevent event)',
  cuMemAllocAsync: 'int cuMemAllocAsync(_Out_ CUdeviceptr *dptr, size_t bytes, CUstream stream)',
  cuMemFreeAsync: 'int cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)',
  cuMemcpyHtoDAsync: 'int cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, CUstream stream)',
  cuMemcpyDtoHAsync: 'int cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes, CUstream stream)',
  cuMemcpyDtoDAsync: 'int cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream)',
  cuMemsetD8Async: 'int cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t count, CUstream stream)',
  cuMemsetD32Async: 'int cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t count, CUstream stream)',
  cuMemGetInfo: 'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
  cuModuleLoadData: 'int cuModuleLoadData(_Out_ CUmodule *module, const void *image)',
  cuModuleUnload: 'int cuModuleUnload(CUmodule module)',
  cuModuleGetFunction: 'int cuModuleGetFunction(_Out_ CUfunction *fn, CUmodule module, const char *name)',
  cuFuncSetAttribute: 'int cuFuncSetAttribute(CUfunction fn, int attrib, int value)',
  // kernelParams is `void **`: declared `void *` so a koffi.alloc'ed array of argument addresses
  // passes as is (see launch.ts); `extra` is always NULL.
  cuLaunchKernel:
    'int cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int sharedMemBytes, CUstream stream, void *kernelParams, void *extra)',
  cuStreamBeginCapture: 'int cuStreamBeginCapture_v2(CUstream stream, int mode)',
  cuStreamEndCapture: 'int cuStreamEndCapture(CUstream stream, _Out_ CUgraph *graph)',
  cuGraphInstantiate: 'int cuGraphInstantiateWithFlags(_Out_ CUgraphExec *exec, CUgraph graph, unsigned long long flags)',
  cuGraphLaunch: 'int cuGraphLaunch(CUgraphExec exec, CUstream stream)',
  cuGraphExecDestroy: 'int cuGraphExecDestroy(CUgraphExec exec)',
  cuGraphDestroy: 'int cuGraphDestroy(CUgraph graph)',
} as const;

/** cuEventElapsedTime became cuEventElapsedTime_v2 in CUDA 12.8; older drivers have only the first. */
const ELAPSED_TIME = ['int cuEventElapsedTime_v2(_Out_ float *ms, CUevent start, CUevent end)', 'int cuEventElapsedTime(_Out_ float *ms, CUevent start, CUevent end)'];

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
export type DriverApi = { [K in keyof typeof SIGNATURES]: CFunction } & { cuEventElapsedTime: CFunction; path: string };

// Enum values from cuda.h (CUDA 13.0).
export const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
export const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
export const CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED = 115;
export const CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4;
export const CU_STREAM_NON_BLOCKING = 0x1;
export const CU_EVENT_DEFAULT = 0x0;
export const CU_EVENT_DISABLE_TIMING = 0x2;
export const CU_STREAM_CAPTURE_MODE_GLOBAL = 0;
export const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
export const CU_STREAM_CAPTURE_MODE_RELAXED = 2;
export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
export const CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH = 1;

/** Names of the commonest CUresult codes, for when cuGetErrorName itself is unavailable. */
const RESULT_NAMES: Record<number, string> = {
  0: 'CUDA_SUCCESS', 1: 'CUDA_ERROR_INVALID_VALUE', 2: 'CUDA_ERROR_OUT_OF_MEMORY', 3: 'CUDA_ERROR_NOT_INITIALIZED',
  4: 'CUDA_ERROR_DEINITIALIZED', 34: 'CUDA_ERROR_STUB_LIBRARY', 35: 'CUDA_ERROR_INSUFFICIENT_DRIVER', 100: 'CUDA_ERROR_NO_DEVICE',
  101: 'CUDA_ERROR_INVALID_DEVICE', 200: 'CUDA_ERROR_INVALID_IMAGE', 201: 'CUDA_ERROR_INVALID_CONTEXT', 209: 'CUDA_ERROR_NO_BINARY_FOR_GPU',
  218: 'CUDA_ERROR_INVALID_PTX', 300: 'CUDA_ERROR_INVALID_SOURCE', 400: 'CUDA_ERROR_INVALID_HANDLE', 500: 'CUDA_ERROR_NOT_FOUND',
  600: 'CUDA_ERROR_NOT_READY', 700: 'CUDA_ERROR_ILLEGAL_ADDRESS', 701: 'CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES', 702: 'CUDA_ERROR_LAUNCH_TIMEOUT',
  719: 'CUDA_ERROR_LAUNCH_FAILED', 900: 'CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED', 901: 'CUDA_ERROR_STREAM_CAPTURE_INVALIDATED',
  999: 'CUDA_ERROR_UNKNOWN',
};

let api: DriverApi | undefined;

/** The bound driver API (libcuda is located and opened on first use). */
export function driver(): DriverApi {
  if (api) return api;
  const { lib, path } = loadLibrary('cuda');
  const fns: Record<string, CFunction> = {};
  for (const [name, proto] of Object.entries(SIGNATURES)) fns[name] = lib.func(proto);
  let elapsed: CFunction | undefined;
  for (const proto of ELAPSED_TIME) {
    try {
      elapsed = lib.func(proto);
      break;
    } catch {
      // Symbol absent from this driver: try the older name.
    }
  }
  if (!elapsed) throw new Error(`libcuda at ${path} exports neither cuEventElapsedTime_v2 nor cuEventElapsedTime`);
  api = { ...(fns as { [K in keyof typeof SIGNATURES]: CFunction }), cuEventElapsedTime: elapsed, path };
  return api;
}

/** "CUDA_ERROR_OUT_OF_MEMORY (2)" for a CUresult. */
export function resultName(status: number): string {
  let name = RESULT_NAMES[status];
  if (api) {
    const out: (string | null)[] = [null];
    try {
      if (api.cuGetErrorName(status, out) === 0 && out[0]) name = out[0];
    } catch {
      // Keep the table's name.
    }
  }
  return `${name ?? 'CUDA_ERROR'} (${status})`;
}

/** Throw `Error("cuMemAllocAsync failed: CUDA_ERROR_OUT_OF_MEMORY (2)")` unless status is CUDA_SUCCESS. */
export function check(call: string, status: number): void {
  if (status !== 0) throw new Error(`${call} failed: ${resultName(status)}`);
}

/** A device address from a koffi uint64 result (number, or BigInt when it would not fit). */
export function toDevicePtr(v: number | bigint): number {
  if (typeof v === 'number') return v;
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`device address 0x${v.toString(16)} is beyond 2^53`);
  return Number(v);
}
