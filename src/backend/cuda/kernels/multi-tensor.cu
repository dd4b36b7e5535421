// Multi-tensor kernels: one launch over a list of tensors (all of a model's gradients or weights)
// instead of one per tensor, through the table of multi-tensor.cuh with 4 i64 per tensor,
//   [address, element count, first chunk, extra]
// (adamw_many in optimizer.cu uses the same table with more words per tensor).
//   sum_squares_many       partial[c] = Σ x² over chunk c (FP64); extra = 1 for BF16, 0 for FP32.
//                          The partials depend only on the table, not on the grid: the same
//                          inputs give the same bits every run (sum_f64 or grad_norm_clip in
//                          reduce.cu adds them).
//   scale_many             x *= alpha over every chunk (like scale_{bf16,f32}); extra as above.
//                          alpha = 0 writes zeros without reading x, clearing NaN and Inf too:
//                          what zeroing the gradients before a step wants, at half the bytes.
//   cast_f32_to_bf16_many  y = bf16(x) (like cast_f32_to_bf16); extra = the address of y.
//   add_many               y += x in FP32, y at the address, x (FP32) at extra.
// blockDim.x is a multiple of 32 (at most 1024).
#include "multi-tensor.cuh"

struct Chunk {
  i64 address;
  i64 start;
  i64 count;
  i64 extra;
};

/** Chunk c of the table: its tensor's address and extra word, and the element range it covers. */
__device__ __forceinline__ Chunk find_chunk(const i64* __restrict__ table, int tensors, int c, i64 chunkElems) {
  const TableChunk k = find_table_chunk<4>(table, tensors, c, chunkElems);
  return {k.entry[0], k.start, k.count, k.entry[3]};
}

extern "C" __global__ void sum_squares_many(const i64* table, int tensors, int chunks, i64 chunkElems, double* partial) {
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Chunk k = find_chunk(table, tensors, c, chunkElems);
    double s = 0.0;
    if (k.extra) {
      const bf16* x = reinterpret_cast<const bf16*>(k.address) + k.start;
      for (i64 i = threadIdx.x; i < k.count; i += blockDim.x) {
        const double v = (double)to_float(x[i]);
        s += v * v;
      }
    } else {
      const float* x = reinterpret_cast<const float*>(k.address) + k.start;
      for (i64 i = threadIdx.x; i < k.count; i += blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
      }
    }
    s = block_sum_f64(s);
    if (threadIdx.x == 0) partial[c] = s;
  }
}

extern "C" __global__ void scale_many(const i64* table, int tensors, int chunks, i64 chunkElems, float alpha) {
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Chunk k = find_chunk(table, tensors, c, chunkElems);
    if (k.extra) scale_range(reinterpret_cast<bf16*>(k.address) + k.start, alpha, k.count, threadIdx.x, blockDim.x);
    else scale_range(reinterpret_cast<float*>(k.address) + k.start, alpha, k.count, threadIdx.x, blockDim.x);
  }
}

extern "C" __global__ void cast_f32_to_bf16_many(const i64* table, int tensors, int chunks, i64 chunkElems) {
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Chunk k = find_chunk(table, tensors, c, chunkElems);
    const float* x = reinterpret_cast<const float*>(k.address) + k.start;
    bf16* y = reinterpret_cast<bf16*>(k.extra) + k.start;
    for (i64 i = threadIdx.x; i < k.count; i += blockDim.x) y[i] = from_float<bf16>(x[i]);
  }
}

extern "C" __global__ void add_many(const i64* table, int tensors, int chunks, i64 chunkElems) {
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Chunk k = find_chunk(table, tensors, c, chunkElems);
    float* y = reinterpret_cast<float*>(k.address) + k.start;
    const float* x = reinterpret_cast<const float*>(k.extra) + k.start;
    for (i64 i = threadIdx.x; i < k.count; i += blockDim.x) y[i] = y[i] + x[i];
  }
}
