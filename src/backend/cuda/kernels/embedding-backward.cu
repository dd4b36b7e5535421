// Embedding backward (Backend.embeddingBackward): dTable[ids[n], :] += dy[n, :], the table's
// gradient in FP32 (atomicAdd: several tokens may share an id, so the summation order, and
// with it the last bits, depends on scheduling). One block per token row, grid-stride over
// tokens; ids outside [0, vocab) are skipped (their forward rows were NaN already).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embedding_bwd_impl(const int* __restrict__ ids, const T* __restrict__ dy, float* __restrict__ dTable, int n, int d, int vocab) {
  for (int t = blockIdx.x; t < n; t += gridDim.x) {
    const int id = ids[t];
    if (id < 0 || id >= vocab) continue;
    const T* g = dy + (i64)t * d;
    float* row = dTable + (i64)id * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) atomicAdd(row + i, to_float(g[i]));
  }
}

extern "C" __global__ void embedding_bwd_bf16(const int* ids, const bf16* dy, float* dTable, int n, int d, int vocab) { embedding_bwd_impl(ids, dy, dTable, n, d, vocab); }
extern "C" __global__ void embedding_bwd_f32(const int* ids, const float* dy, float* dTable, int n, int d, int vocab) { embedding_bwd_impl(ids, dy, dTable, n, d, vocab); }
