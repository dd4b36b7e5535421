// Embedding gather: y[n, :] = table[ids[n], :]. One block per token row, 16-byte copies.
// An id outside [0, vocab) yields a row of NaN, so a bad id cannot pass unnoticed.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embedding_impl(const T* __restrict__ table, const int* __restrict__ ids, T* __restrict__ y, int n, int d, int vocab) {
  for (int t = blockIdx.x; t < n; t += gridDim.x) {
    const int id = ids[t];
    T* yr = y + (i64)t * d;
    if (id < 0 || id >= vocab) {
      for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<T>(__int_as_float(0x7fc00000));
    } else {
      block_copy_row(table + (i64)id * d, yr, d);
    }
  }
}

extern "C" __global__ void embedding_bf16(const bf16* table, const int* ids, bf16* y, int n, int d, int vocab) { embedding_impl(table, ids, y, n, d, vocab); }
extern "C" __global__ void embedding_f32(const float* table, const int* ids, float* y, int n, int d, int vocab) { embedding_impl(table, ids, y, n, d, vocab); }
