// Shared helpers for the kernels in this folder: BF16 storage with FP32 math, warp and block
// reductions, 16-byte vector access. Compiled both by nvcc (CI) and by NVRTC at run time, so
// only CUDA's own headers are used (NVRTC has no C++ standard library).
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef long long i64;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define INT_MAX_VALUE 2147483647

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

/**
 * x[i] *= alpha for i = tid, tid + threads, … below n (scale_{bf16,f32}, scale_many). alpha = 0
 * writes zeros without reading x: zeroing (the gradients before a step) clears NaN and Inf too,
 * and moves half the bytes.
 */
template <typename T>
__device__ __forceinline__ void scale_range(T* x, float alpha, i64 n, i64 tid, i64 threads) {
  if (alpha == 0.0f) {
    for (i64 i = tid; i < n; i += threads) x[i] = from_float<T>(0.0f);
  } else {
    for (i64 i = tid; i < n; i += threads) x[i] = from_float<T>(to_float(x[i]) * alpha);
  }
}

/** Elements of T in one 16-byte vector. */
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15) == 0; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

/** Sum over the block (blockDim.x a multiple of 32); every thread gets the total. */
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // an earlier call may still be reading `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? partial[lane] : 0.0f);
}

__device__ __forceinline__ int block_sum_int(int v) {
  __shared__ int partial_int[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum_int(v);
  __syncthreads();
  if (lane == 0) partial_int[warp] = v;
  __syncthreads();
  return warp_sum_int(lane < warps ? partial_int[lane] : 0);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

/** Sum over the block in FP64 (reductions that must not depend on the summation order's rounding); every thread gets the total. */
__device__ __forceinline__ double block_sum_f64(double v) {
  __shared__ double partial_f64[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum_f64(v);
  __syncthreads();  // an earlier call may still be reading partial_f64
  if (lane == 0) partial_f64[warp] = v;
  __syncthreads();
  return warp_sum_f64(lane < warps ? partial_f64[lane] : 0.0);
}

/** Copy n elements of T (16-byte vectors when both rows allow it), threads of one block striding. */
template <typename T>
__device__ __forceinline__ void block_copy_row(const T* __restrict__ src, T* __restrict__ dst, int n) {
  constexpr int V = Vec<T>::N;
  if (n % V == 0 && aligned16(src) && aligned16(dst)) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int i = threadIdx.x; i < n / V; i += blockDim.x) d[i] = s[i];
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
  }
}
