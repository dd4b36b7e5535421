// Strided 2-D copies: dst[b][r][:] = src[b][r][:] for b < batches, r < rows, rows of rowBytes bytes,
// with row strides (leading dimensions) and batch strides in bytes. Callers offset the base
// pointers, so one kernel serves sliceCols and concatHeads.
// The data moves as raw words of `wordBytes` (16, 8, 4 or 2: the largest that divides every
// address, stride and the row length, chosen by the host), so any dtype works; one flat
// grid-stride loop over all words keeps every thread busy even when rows are a few dozen bytes
// (one block per row left most of a block idle on MLA's 64-column slices).
#include "common.cuh"

template <typename W>
__device__ __forceinline__ void copy_2d_words(const char* __restrict__ src, i64 srcLd, i64 srcBatch, char* __restrict__ dst, i64 dstLd, i64 dstBatch,
                                              i64 rows, i64 total, i64 rowWords) {
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
    const i64 c = i % rowWords, rb = i / rowWords;
    const i64 r = rb % rows, b = rb / rows;
    reinterpret_cast<W*>(dst + b * dstBatch + r * dstLd)[c] = reinterpret_cast<const W*>(src + b * srcBatch + r * srcLd)[c];
  }
}

extern "C" __global__ void copy_2d(const char* src, i64 srcLd, i64 srcBatch, char* dst, i64 dstLd, i64 dstBatch, i64 rows, i64 batches, i64 rowBytes,
                                   int wordBytes) {
  const i64 rowWords = rowBytes / wordBytes, total = batches * rows * rowWords;
  switch (wordBytes) {
    case 16: copy_2d_words<uint4>(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, total, rowWords); break;
    case 8: copy_2d_words<uint2>(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, total, rowWords); break;
    case 4: copy_2d_words<unsigned>(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, total, rowWords); break;
    default: copy_2d_words<unsigned short>(src, srcLd, srcBatch, dst, dstLd, dstBatch, rows, total, rowWords); break;
  }
}
