// RMSNorm over the last dimension: y = x · w / sqrt(mean(x²) + eps), statistics in FP32.
// One block per row; 16-byte vector loads of x and y when d is a multiple of the vector width
// and the row pointers are aligned (always true for d % 8 == 0 on pool allocations). The weight
// may be stored in another type than x (FP32 master weights beside BF16 activations); it is
// read element by element (d values, cached).
#include "common.cuh"

template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_impl(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y, int rows, int d, float eps) {
  constexpr int V = Vec<T>::N;
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (i64)row * d;
    T* yr = y + (i64)row * d;
    const bool vec = d % V == 0 && aligned16(xr) && aligned16(yr);
    float ss = 0.0f;
    if (vec) {
      for (int i = threadIdx.x; i < d / V; i += blockDim.x) {
        uint4 vx = reinterpret_cast<const uint4*>(xr)[i];
        const T* ex = reinterpret_cast<const T*>(&vx);
#pragma unroll
        for (int j = 0; j < V; j++) {
          const float v = to_float(ex[j]);
          ss = fmaf(v, v, ss);
        }
      }
    } else {
      for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = to_float(xr[i]);
        ss = fmaf(v, v, ss);
      }
    }
    const float r = rsqrtf(block_sum(ss) / (float)d + eps);
    if (vec) {
      for (int i = threadIdx.x; i < d / V; i += blockDim.x) {
        uint4 vx = reinterpret_cast<const uint4*>(xr)[i];
        uint4 vy;
        const T* ex = reinterpret_cast<const T*>(&vx);
        T* ey = reinterpret_cast<T*>(&vy);
#pragma unroll
        for (int j = 0; j < V; j++) ey[j] = from_float<T>(to_float(ex[j]) * r * to_float(w[i * V + j]));
        reinterpret_cast<uint4*>(yr)[i] = vy;
      }
    } else {
      for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<T>(to_float(xr[i]) * r * to_float(w[i]));
    }
  }
}

extern "C" __global__ void rmsnorm_bf16(const bf16* x, const bf16* w, bf16* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
extern "C" __global__ void rmsnorm_f32(const float* x, const float* w, float* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
extern "C" __global__ void rmsnorm_bf16_f32w(const bf16* x, const float* w, bf16* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
