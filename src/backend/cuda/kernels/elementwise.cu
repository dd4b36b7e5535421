// Elementwise ops: y = a + b, a += alpha·b, x *= alpha, and the f32 ↔ bf16 casts. Grid-stride
// loops over n elements, the additions with 16-byte vector loads when every pointer is 16-byte
// aligned; math in FP32.
#include "common.cuh"

struct AddOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

struct AxpyOp {
  float alpha;
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaf(alpha, b, a); }
};

/** y[i] = op(a[i], b[i]); y may alias a. */
template <typename T, typename Op>
__device__ __forceinline__ void binary_map(const T* a, const T* b, T* y, i64 n, Op op) {
  constexpr int V = Vec<T>::N;
  const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  const i64 nv = (aligned16(a) && aligned16(b) && aligned16(y)) ? n / V : 0;
  for (i64 i = tid; i < nv; i += stride) {
    uint4 va = reinterpret_cast<const uint4*>(a)[i];
    uint4 vb = reinterpret_cast<const uint4*>(b)[i];
    uint4 vy;
    const T* ea = reinterpret_cast<const T*>(&va);
    const T* eb = reinterpret_cast<const T*>(&vb);
    T* ey = reinterpret_cast<T*>(&vy);
#pragma unroll
    for (int j = 0; j < V; j++) ey[j] = from_float<T>(op(to_float(ea[j]), to_float(eb[j])));
    reinterpret_cast<uint4*>(y)[i] = vy;
  }
  for (i64 i = nv * V + tid; i < n; i += stride) y[i] = from_float<T>(op(to_float(a[i]), to_float(b[i])));
}

template <typename S, typename D>
__device__ __forceinline__ void cast_map(const S* x, D* y, i64 n) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) y[i] = from_float<D>(to_float(x[i]));
}

extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* y, i64 n) { binary_map(a, b, y, n, AddOp()); }
extern "C" __global__ void add_f32(const float* a, const float* b, float* y, i64 n) { binary_map(a, b, y, n, AddOp()); }

extern "C" __global__ void add_inplace_bf16(bf16* a, const bf16* b, float alpha, i64 n) { binary_map(a, b, a, n, AxpyOp{alpha}); }
extern "C" __global__ void add_inplace_f32(float* a, const float* b, float alpha, i64 n) { binary_map(a, b, a, n, AxpyOp{alpha}); }

extern "C" __global__ void cast_f32_to_bf16(const float* x, bf16* y, i64 n) { cast_map(x, y, n); }
extern "C" __global__ void cast_bf16_to_f32(const bf16* x, float* y, i64 n) { cast_map(x, y, n); }

/** x[i] *= alpha over the grid (alpha = 0: zeros written, x not read; see scale_range). */
template <typename T>
__device__ __forceinline__ void scale_map(T* x, float alpha, i64 n) {
  scale_range(x, alpha, n, blockIdx.x * (i64)blockDim.x + threadIdx.x, (i64)gridDim.x * blockDim.x);
}

extern "C" __global__ void scale_bf16(bf16* x, float alpha, i64 n) { scale_map(x, alpha, n); }
extern "C" __global__ void scale_f32(float* x, float alpha, i64 n) { scale_map(x, alpha, n); }
