// Host compilation of the CUDA kernel files for the CPU emulator (emulator.ts): the kernel sources
// are compiled by g++ as plain C++ after this header, with every CUDA thread a fiber (runtime.cpp).
// The build rewrites `extern __shared__` to `extern` and `__shared__` to `static` in the sources,
// so a block's shared memory is one object shared by its fibers (blocks run one at a time).
#pragma once
#include <cuda_bf16.h>
#include <cmath>
#include <cstdint>
#include <cstring>

#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline

extern uint3 emu_threadIdx, emu_blockIdx;
extern dim3 emu_blockDim, emu_gridDim;
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim

// Provided by runtime.cpp.
void emu_syncthreads();
void emu_syncwarp();
/** Publish this lane's 8-byte value, wait for the warp, read lane `src`'s, wait again. */
uint64_t emu_warp_exchange(uint64_t mine, int src);
/** Bit l set when running lane l of the calling thread's warp passes a true predicate. */
unsigned emu_warp_ballot(int pred);
/** Index of the calling thread's lane in its warp. */
int emu_lane();

inline void __syncthreads() { emu_syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_syncwarp(); }

template <typename T>
inline T emu_shfl(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const uint64_t got = emu_warp_exchange(bits, src & 31);
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int laneMask, int = 32) { return emu_shfl(v, emu_lane() ^ laneMask); }
template <typename T> inline T __shfl_sync(unsigned, T v, int srcLane, int = 32) { return emu_shfl(v, srcLane); }
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  const int src = emu_lane() + (int)delta;
  return emu_shfl(v, src < 32 ? src : emu_lane());
}

inline unsigned __ballot_sync(unsigned, int pred) { return emu_warp_ballot(pred); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// Fibers never run at the same time, so an atomic is a plain read-modify-write.
inline float atomicAdd(float* p, float v) { const float old = *p; *p = old + v; return old; }
inline double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }
inline int atomicAdd(int* p, int v) { const int old = *p; *p = old + v; return old; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { const unsigned old = *p; *p = old + v; return old; }
inline int atomicMax(int* p, int v) { const int old = *p; *p = old > v ? old : v; return old; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
