// MoE permute / unpermute (Backend.moePermute, moeUnpermute) and the device side of the
// auxiliary-loss-free balancing (Backend.expertLoadInto, correctionBiasUpdate).
// Permute is a stable counting sort of the N·K slots by expert (slot order kept inside each
// expert, like the CPU backend), in three launches:
//   moe_count   counts[e]                        (one block per expert)
//   moe_scatter sourceSlot[row] = slot  (one block per expert, walking the slots in order and
//               ranking matches with a ballot + block scan); expert e's rows start after expert
//               e−1's (packed), or at e·capacity when capacity > 0 (padded: the rows past an
//               expert's count keep sourceSlot −1, which the host writes first). An expert's
//               slots ranked past the capacity get no row: dropped, counted into stats[0], the
//               largest count raising stats[1] (a fixed capacity, which the host chose without
//               reading the counts)
//   moe_gather  rows[row] = x[sourceSlot[row] / K], zero for a row without a slot
// Unpermute inverts sourceSlot (moe_invert into a rowOfSlot the host fills with −1 first, so a
// dropped slot keeps −1) and sums each token's K expert rows weighted (moe_combine, FP32
// accumulation, slots without a row skipped).
#include "common.cuh"

extern "C" __global__ void moe_count(const int* __restrict__ indices, int nk, int* __restrict__ counts) {
  const int e = blockIdx.x;
  int c = 0;
  for (int s = threadIdx.x; s < nk; s += blockDim.x) c += indices[s] == e;
  c = block_sum_int(c);
  if (threadIdx.x == 0) counts[e] = c;
}

/**
 * blockDim.x must be a multiple of 32. stats (nullable): stats[0] += the slots dropped (expert e's
 * past the capacity, and, by the last block, those of no expert in [0, gridDim.x)); stats[1] =
 * max(stats[1], counts[e]).
 */
extern "C" __global__ void moe_scatter(const int* __restrict__ indices, int nk, const int* __restrict__ counts, int capacity, int* __restrict__ sourceSlot,
                                       int* __restrict__ stats) {
  __shared__ int warpCounts[32];
  __shared__ int start, ranked;
  const int e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int before = 0;
  for (int j = threadIdx.x; j < e; j += blockDim.x) before += counts[j];
  before = block_sum_int(before);
  if (threadIdx.x == 0) {
    start = capacity > 0 ? e * capacity : before;
    ranked = 0;
    if (stats != nullptr) {
      int dropped = capacity > 0 ? max(counts[e] - capacity, 0) : 0;
      if (e == gridDim.x - 1) dropped += nk - before - counts[e];
      if (dropped > 0) atomicAdd(stats, dropped);
      atomicMax(stats + 1, counts[e]);
    }
  }
  __syncthreads();
  for (int t0 = 0; t0 < nk; t0 += blockDim.x) {
    const int s = t0 + threadIdx.x;
    const bool match = s < nk && indices[s] == e;
    const unsigned ballot = __ballot_sync(FULL_MASK, match);
    if (lane == 0) warpCounts[warp] = __popc(ballot);
    __syncthreads();
    int earlier = 0, tile = 0;
    for (int w = 0; w < warps; w++) {
      if (w < warp) earlier += warpCounts[w];
      tile += warpCounts[w];
    }
    if (match) {
      const int rank = ranked + earlier + __popc(ballot & ((1u << lane) - 1u));
      if (capacity == 0 || rank < capacity) sourceSlot[start + rank] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) ranked += tile;
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ void moe_gather_impl(const T* __restrict__ x, const int* __restrict__ sourceSlot, T* __restrict__ rows, int nRows, int K, int d) {
  for (int r = blockIdx.x; r < nRows; r += gridDim.x) {
    const int slot = sourceSlot[r];
    if (slot >= 0) {
      block_copy_row(x + (i64)(slot / K) * d, rows + (i64)r * d, d);
    } else {
      T* row = rows + (i64)r * d;
      for (int c = threadIdx.x; c < d; c += blockDim.x) row[c] = from_float<T>(0.0f);
    }
  }
}

extern "C" __global__ void moe_gather_bf16(const bf16* x, const int* sourceSlot, bf16* rows, int nRows, int K, int d) { moe_gather_impl(x, sourceSlot, rows, nRows, K, d); }
extern "C" __global__ void moe_gather_f32(const float* x, const int* sourceSlot, float* rows, int nRows, int K, int d) { moe_gather_impl(x, sourceSlot, rows, nRows, K, d); }

extern "C" __global__ void moe_invert(const int* __restrict__ sourceSlot, int nRows, int* __restrict__ rowOfSlot) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < nRows; r += gridDim.x * blockDim.x) {
    const int slot = sourceSlot[r];
    if (slot >= 0) rowOfSlot[slot] = r;
  }
}

/** y[n] = Σ_k weights[n, k] · expertOut[rowOfSlot[n·K + k]] over the slots with a row (≥ 0); K ≤ 64 (checked by the host). */
template <typename T, typename W>
__device__ __forceinline__ void moe_combine_impl(const T* __restrict__ expertOut, const int* __restrict__ rowOfSlot, const W* __restrict__ weights,
                                                 T* __restrict__ y, int N, int K, int d) {
  __shared__ int rowsOf[64];
  __shared__ float weightOf[64];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    __syncthreads();
    if (threadIdx.x < K) {
      rowsOf[threadIdx.x] = rowOfSlot[(i64)n * K + threadIdx.x];
      weightOf[threadIdx.x] = to_float(weights[(i64)n * K + threadIdx.x]);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int k = 0; k < K; k++) {
        if (rowsOf[k] >= 0) acc = fmaf(weightOf[k], to_float(expertOut[(i64)rowsOf[k] * d + c]), acc);
      }
      y[(i64)n * d + c] = from_float<T>(acc);
    }
  }
}

extern "C" __global__ void moe_combine_bf16_f32w(const bf16* expertOut, const int* rowOfSlot, const float* weights, bf16* y, int N, int K, int d) {
  moe_combine_impl(expertOut, rowOfSlot, weights, y, N, K, d);
}
extern "C" __global__ void moe_combine_bf16_bf16w(const bf16* expertOut, const int* rowOfSlot, const bf16* weights, bf16* y, int N, int K, int d) {
  moe_combine_impl(expertOut, rowOfSlot, weights, y, N, K, d);
}
extern "C" __global__ void moe_combine_f32_f32w(const float* expertOut, const int* rowOfSlot, const float* weights, float* y, int N, int K, int d) {
  moe_combine_impl(expertOut, rowOfSlot, weights, y, N, K, d);
}

/** load[e] += the number of the nk slots routed to expert e (one block per expert; exact in FP32 up to 2^24). */
extern "C" __global__ void moe_expert_load(const int* __restrict__ indices, int nk, float* __restrict__ load) {
  const int e = blockIdx.x;
  int c = 0;
  for (int s = threadIdx.x; s < nk; s += blockDim.x) c += indices[s] == e;
  c = block_sum_int(c);
  if (threadIdx.x == 0) load[e] += (float)c;
}

/**
 * bias[i] += gamma · sign(mean(load) − load[i]) for i < E (SPEC §3), one block. The arithmetic of
 * the host's updateCorrectionBias, bit for bit: the mean summed in order in FP64, the sum
 * bias + gamma·sign in FP64 rounded once to FP32.
 */
extern "C" __global__ void moe_bias_update(float* __restrict__ bias, const float* __restrict__ load, int E, double gamma) {
  __shared__ double mean;
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int j = 0; j < E; j++) sum += load[j];
    mean = sum / E;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const double diff = mean - (double)load[i];
    bias[i] = (float)((double)bias[i] + gamma * (double)((diff > 0.0) - (diff < 0.0)));
  }
}
