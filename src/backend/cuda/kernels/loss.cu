// Fused softmax cross-entropy (Backend.crossEntropyInto): logits [M, V], targets [M] (i32; a target
// < 0 means "no target") → dLogits [M, V] and per-row statistics, FP32 math throughout:
//   loss_r    = max + log Σ_j exp(x_j − max) − x_target
//   dLogits_r = scale · (softmax(x_r) − onehot(target))           (0 for rows without a target)
// rowStats [2, M]: rowStats[r] = loss_r (0 without a target, NaN for a target ≥ V, which callers
// rule out on the host: a loss summed on the device still shows it), rowStats[M + r] = 1 when the
// row counts. add_row_sums_f32
// (reduce.cu) adds the rows' sums into the caller's accumulators on the device. One block per
// row (grid-stride); blockDim.x a multiple of 32.
#include "common.cuh"

/** Max over the block (blockDim.x a multiple of 32); every thread gets the result. */
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partialMax[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();  // an earlier call may still be reading partialMax
  if (lane == 0) partialMax[warp] = v;
  __syncthreads();
  return warp_max(lane < warps ? partialMax[lane] : NEG_INF);
}

template <typename T>
__device__ __forceinline__ void cross_entropy_impl(const T* __restrict__ logits, const int* __restrict__ targets, T* __restrict__ dLogits,
                                                   float* __restrict__ rowStats, int M, int V, float scale) {
  for (int r = blockIdx.x; r < M; r += gridDim.x) {
    const T* x = logits + (i64)r * V;
    T* dx = dLogits + (i64)r * V;
    const int target = targets[r];
    if (target < 0 || target >= V) {
      for (int j = threadIdx.x; j < V; j += blockDim.x) dx[j] = from_float<T>(0.0f);
      if (threadIdx.x == 0) {
        rowStats[r] = target >= V ? __int_as_float(0x7fc00000) : 0.0f;  // NaN
        rowStats[(i64)M + r] = 0.0f;
      }
      continue;
    }
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_float(x[j]));
    mx = block_max(mx);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(to_float(x[j]) - mx);
    sum = block_sum(sum);
    const float k = scale / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      const float p = expf(to_float(x[j]) - mx) * k;
      dx[j] = from_float<T>(j == target ? p - scale : p);
    }
    if (threadIdx.x == 0) {
      rowStats[r] = mx + logf(sum) - to_float(x[target]);
      rowStats[(i64)M + r] = 1.0f;
    }
  }
}

extern "C" __global__ void cross_entropy_bf16(const bf16* logits, const int* targets, bf16* dLogits, float* rowStats, int M, int V, float scale) {
  cross_entropy_impl(logits, targets, dLogits, rowStats, M, V, scale);
}
extern "C" __global__ void cross_entropy_f32(const float* logits, const int* targets, float* dLogits, float* rowStats, int M, int V, float scale) {
  cross_entropy_impl(logits, targets, dLogits, rowStats, M, V, scale);
}
