// SwiGLU: y = silu(gate) · up = gate / (1 + e^-gate) · up, elementwise over [M, I], math in FP32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void swiglu_impl(const T* gate, const T* up, T* y, i64 n) {
  constexpr int V = Vec<T>::N;
  const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  const i64 nv = (aligned16(gate) && aligned16(up) && aligned16(y)) ? n / V : 0;
  for (i64 i = tid; i < nv; i += stride) {
    uint4 vg = reinterpret_cast<const uint4*>(gate)[i];
    uint4 vu = reinterpret_cast<const uint4*>(up)[i];
    uint4 vy;
    const T* eg = reinterpret_cast<const T*>(&vg);
    const T* eu = reinterpret_cast<const T*>(&vu);
    T* ey = reinterpret_cast<T*>(&vy);
#pragma unroll
    for (int j = 0; j < V; j++) {
      const float g = to_float(eg[j]);
      ey[j] = from_float<T>(g / (1.0f + expf(-g)) * to_float(eu[j]));
    }
    reinterpret_cast<uint4*>(y)[i] = vy;
  }
  for (i64 i = nv * V + tid; i < n; i += stride) {
    const float g = to_float(gate[i]);
    y[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
  }
}

extern "C" __global__ void swiglu_bf16(const bf16* gate, const bf16* up, bf16* y, i64 n) { swiglu_impl(gate, up, y, n); }
extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* y, i64 n) { swiglu_impl(gate, up, y, n); }
