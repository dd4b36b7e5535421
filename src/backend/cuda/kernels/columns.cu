// Strided 2-D copies: dst[b][r][c] = src[b][r][c] for b < batches, r < rows, c < cols, with
// row strides (leading dimensions) and batch strides in elements. Callers offset the base
// pointers, so one kernel serves sliceCols, concatCols (two launches) and writeCache.
// Elements are moved as raw 2- or 4-byte words, so any dtype of that size works.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void copy_2d_impl(const T* __restrict__ src, i64 srcLd, i64 srcBatch, T* __restrict__ dst, i64 dstLd, i64 dstBatch,
                                             int rows, int cols) {
  const int b = blockIdx.y;
  const T* s = src + b * srcBatch;
  T* d = dst + b * dstBatch;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* sr = s + r * srcLd;
    T* dr = d + r * dstLd;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = sr[c];
  }
}

extern "C" __global__ void copy_2d_b16(const unsigned short* src, i64 srcLd, i64 srcBatch, unsigned short* dst, i64 dstLd, i64 dstBatch, int rows, int cols) {
  copy_2d_impl(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, cols);
}
extern "C" __global__ void copy_2d_b32(const unsigned int* src, i64 srcLd, i64 srcBatch, unsigned int* dst, i64 dstLd, i64 dstBatch, int rows, int cols) {
  copy_2d_impl(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, cols);
}
