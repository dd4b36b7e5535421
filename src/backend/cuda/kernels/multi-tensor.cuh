// The tensor table of the multi-tensor kernels (multi-tensor.cu, and adamw_many in optimizer.cu):
// one launch over a list of tensors instead of one per tensor. The table holds W i64 words per
// tensor, the first four always
//   [address, element count, first chunk, extra]
// and any further words the kernel's own (ops.ts's multiTensorTable writes them). The tensors are
// cut into chunks of `chunkElems` elements (a tensor's last chunk may be shorter), numbered in
// table order: tensor t owns chunks [first_t, first_{t+1}). Blocks stride over the chunks; each
// finds its tensor by binary search on the first chunks.
#pragma once
#include "common.cuh"

/** Chunk c of a table: its tensor's entry (W words) and the element range of the tensor it covers. */
struct TableChunk {
  const i64* entry;
  i64 start;
  i64 count;
};

template <int W>
__device__ __forceinline__ TableChunk find_table_chunk(const i64* __restrict__ table, int tensors, int c, i64 chunkElems) {
  int lo = 0, hi = tensors - 1;
  while (lo < hi) {  // the last tensor whose first chunk is ≤ c
    const int mid = (lo + hi + 1) >> 1;
    if (table[W * mid + 2] <= c) lo = mid;
    else hi = mid - 1;
  }
  const i64* e = table + W * lo;
  const i64 start = (c - e[2]) * chunkElems;
  const i64 left = e[1] - start;
  return {e, start, left < chunkElems ? left : chunkElems};
}
