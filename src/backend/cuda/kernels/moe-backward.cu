// MoE permute / unpermute backward (Backend.moeUnpermuteBackward, moePermuteBackward).
//   moe_unpermute_bwd  for sorted row r holding slot s = sourceSlot[r] of token n = s / K:
//                        dExpertOut[r, :] = weights[s] · dy[n, :]
//                        dWeights[s]      = dy[n, :] · expertOut[r, :]     (block_sum, FP32)
//                      and dExpertOut[r, :] = 0 for a padding row (s = −1); one block per
//                      sorted row (grid-stride). A slot without a row (dropped by a fixed
//                      capacity) keeps the zero dWeights the host writes first
//   moe_permute_bwd    dx[n, :] = Σ_k dRows[rowOfSlot[n·K + k], :], k in order over the slots
//                      with a row (rowOfSlot from moe_invert in moe.cu, −1 for a slot dropped by
//                      a fixed capacity); one block per token (grid-stride)
// Row data in T (bf16 or f32), gating weights and their gradient in FP32; blockDim.x a multiple of 32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void moe_unpermute_bwd_impl(const T* __restrict__ dy, const T* __restrict__ expertOut, const int* __restrict__ sourceSlot,
                                                       const float* __restrict__ weights, T* __restrict__ dExpertOut, float* __restrict__ dWeights,
                                                       int nRows, int K, int d) {
  for (int r = blockIdx.x; r < nRows; r += gridDim.x) {
    const int slot = sourceSlot[r];
    if (slot < 0) {
      T* de = dExpertOut + (i64)r * d;
      for (int c = threadIdx.x; c < d; c += blockDim.x) de[c] = from_float<T>(0.0f);
      continue;
    }
    const T* g = dy + (i64)(slot / K) * d;
    const T* y = expertOut + (i64)r * d;
    T* de = dExpertOut + (i64)r * d;
    const float w = weights[slot];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      const float gc = to_float(g[c]);
      de[c] = from_float<T>(w * gc);
      dot = fmaf(gc, to_float(y[c]), dot);
    }
    dot = block_sum(dot);
    if (threadIdx.x == 0) dWeights[slot] = dot;
  }
}

template <typename T>
__device__ __forceinline__ void moe_permute_bwd_impl(const T* __restrict__ dRows, const int* __restrict__ rowOfSlot, T* __restrict__ dx, int N, int K, int d) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int* rows = rowOfSlot + (i64)n * K;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float s = 0.0f;
      for (int k = 0; k < K; k++) {
        if (rows[k] >= 0) s += to_float(dRows[(i64)rows[k] * d + c]);
      }
      dx[(i64)n * d + c] = from_float<T>(s);
    }
  }
}

extern "C" __global__ void moe_unpermute_bwd_bf16(const bf16* dy, const bf16* expertOut, const int* sourceSlot, const float* weights, bf16* dExpertOut,
                                                  float* dWeights, int nRows, int K, int d) {
  moe_unpermute_bwd_impl(dy, expertOut, sourceSlot, weights, dExpertOut, dWeights, nRows, K, d);
}
extern "C" __global__ void moe_unpermute_bwd_f32(const float* dy, const float* expertOut, const int* sourceSlot, const float* weights, float* dExpertOut,
                                                 float* dWeights, int nRows, int K, int d) {
  moe_unpermute_bwd_impl(dy, expertOut, sourceSlot, weights, dExpertOut, dWeights, nRows, K, d);
}
extern "C" __global__ void moe_permute_bwd_bf16(const bf16* dRows, const int* rowOfSlot, bf16* dx, int N, int K, int d) { moe_permute_bwd_impl(dRows, rowOfSlot, dx, N, K, d); }
extern "C" __global__ void moe_permute_bwd_f32(const float* dRows, const int* rowOfSlot, float* dx, int N, int K, int d) { moe_permute_bwd_impl(dRows, rowOfSlot, dx, N, K, d); }
