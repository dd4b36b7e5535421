// SwiGLU backward (Backend.swigluBackward): y = silu(g) · u = g·σ(g) · u, elementwise over [M, I]:
//   dUp   = dy · g · σ(g)
//   dGate = dy · u · σ(g) · (1 + g · (1 − σ(g)))
// Grid-stride loop, math in FP32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void swiglu_bwd_impl(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ dy, T* __restrict__ dGate,
                                                T* __restrict__ dUp, i64 n) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dy[i]);
    const float sig = 1.0f / (1.0f + expf(-g));
    dUp[i] = from_float<T>(d * g * sig);
    dGate[i] = from_float<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
  }
}

extern "C" __global__ void swiglu_bwd_bf16(const bf16* gate, const bf16* up, const bf16* dy, bf16* dGate, bf16* dUp, i64 n) {
  swiglu_bwd_impl(gate, up, dy, dGate, dUp, n);
}
extern "C" __global__ void swiglu_bwd_f32(const float* gate, const float* up, const float* dy, float* dGate, float* dUp, i64 n) {
  swiglu_bwd_impl(gate, up, dy, dGate, dUp, n);
}
