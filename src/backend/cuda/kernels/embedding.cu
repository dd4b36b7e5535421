// Embedding gather: y[n, :] = table[ids[n], :]. One block per token row, 16-byte copies when the
// table and the output share a type; embedding_f32_to_bf16 reads an FP32 table (master weights)
// and writes BF16 rows (activations), converting element by element.
// An id outside [0, vocab) yields a row of NaN, so a bad id cannot pass unnoticed.
#include "common.cuh"

template <typename S, typename D>
__device__ __forceinline__ void embedding_impl(const S* __restrict__ table, const int* __restrict__ ids, D* __restrict__ y, int n, int d, int vocab) {
  for (int t = blockIdx.x; t < n; t += gridDim.x) {
    const int id = ids[t];
    D* yr = y + (i64)t * d;
    if (id < 0 || id >= vocab) {
      for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<D>(__int_as_float(0x7fc00000));
    } else {
      const S* src = table + (i64)id * d;
      for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<D>(to_float(src[i]));
    }
  }
}

template <typename T>
__device__ __forceinline__ void embedding_copy_impl(const T* __restrict__ table, const int* __restrict__ ids, T* __restrict__ y, int n, int d, int vocab) {
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

extern "C" __global__ void embedding_bf16(const bf16* table, const int* ids, bf16* y, int n, int d, int vocab) { embedding_copy_impl(table, ids, y, n, d, vocab); }
extern "C" __global__ void embedding_f32(const float* table, const int* ids, float* y, int n, int d, int vocab) { embedding_copy_impl(table, ids, y, n, d, vocab); }
extern "C" __global__ void embedding_f32_to_bf16(const float* table, const int* ids, bf16* y, int n, int d, int vocab) { embedding_impl(table, ids, y, n, d, vocab); }
