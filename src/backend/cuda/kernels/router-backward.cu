// Router backward and the sequence-wise balance loss (Backend.routerBackward, sequenceBalanceLossInto;
// SPEC §3). Scores s [N, E] are the unbiased affinities routerTopK wrote (FP32); the correction
// bias only selects experts, so no gradient flows through the choice.
//
// router_bwd, one warp per token, ds [E] in shared memory:
//   ds = dScores (the balance loss's gradient, or 0)
//   ds[idx_k] += rsf · (g_k / S − Σ_k g_k s_k / S²),  S = Σ_k s_{idx_k} + 1e-20   (normTopk)
//   ds[idx_k] += rsf · g_k                                                       (otherwise)
//   dLogits = ds · s · (1 − s)           (sigmoid scoring)
//   dLogits = s · (ds − Σ_e ds·s)        (softmax scoring)
// The K chosen experts of a token are distinct, so lane k < K updates ds[idx_k] alone.
// Dynamic shared memory: E floats per warp. K ≤ 32.
//
// The sequence-wise balance loss of `batch` sequences of `seq` tokens n = b·seq + t, in two kernels
// spread over the whole GPU (one block per sequence left a 4096-token sequence on one SM):
//   balance_counts           counts[b, e] = #{(t, k): idx[t, k] = e}          (integers: exact in any order)
//   sequence_balance_loss    with f_e = E / (K·seq) · counts[b, e]:
//     lossPart[b, block] = α / (batch·seq) · Σ_{t of the block} (Σ_e f_e s_te) / Z_t,  Z_t = Σ_e s_te
//     dScores[t, e] = α / (batch·seq·Z_t) · (f_e − (Σ_e' f_e' s_te') / Z_t)
// (f counts choices, so it has no gradient). add_row_sums_f32 (reduce.cu) adds the partial losses,
// in a fixed order, into the caller's accumulator on the device.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void router_bwd_impl(const float* __restrict__ scores, const int* __restrict__ indices, const float* __restrict__ dWeights,
                                                const float* __restrict__ dScores, T* __restrict__ dLogits, int N, int E, int K, int normTopk,
                                                int softmaxScoring, float scaling) {
  extern __shared__ float routerBwdShared[];
  const int warpsPerBlock = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * warpsPerBlock + warp;
  if (n >= N) return;  // the whole warp leaves together; no block-wide barrier follows
  float* ds = routerBwdShared + warp * E;
  const float* s = scores + (i64)n * E;
  for (int e = lane; e < E; e += 32) ds[e] = dScores ? dScores[(i64)n * E + e] : 0.0f;
  __syncwarp();

  int idx = -1;
  float g = 0.0f, sk = 0.0f;
  if (lane < K) {
    idx = indices[(i64)n * K + lane];
    g = dWeights[(i64)n * K + lane];
    if (idx >= 0 && idx < E) sk = s[idx];
    else idx = -1;
  }
  float add;
  if (normTopk) {
    const float S = warp_sum(sk) + 1e-20f;
    const float gs = warp_sum(g * sk);
    add = scaling * (g / S - gs / (S * S));
  } else {
    add = scaling * g;
  }
  if (idx >= 0) ds[idx] += add;
  __syncwarp();

  T* out = dLogits + (i64)n * E;
  if (softmaxScoring) {
    float dot = 0.0f;
    for (int e = lane; e < E; e += 32) dot = fmaf(ds[e], s[e], dot);
    dot = warp_sum(dot);
    for (int e = lane; e < E; e += 32) out[e] = from_float<T>(s[e] * (ds[e] - dot));
  } else {
    for (int e = lane; e < E; e += 32) out[e] = from_float<T>(ds[e] * s[e] * (1.0f - s[e]));
  }
}

#define ROUTER_BWD_ARGS int N, int E, int K, int normTopk, int softmaxScoring, float scaling
#define ROUTER_BWD_PASS N, E, K, normTopk, softmaxScoring, scaling

extern "C" __global__ void router_bwd_bf16(const float* scores, const int* indices, const float* dWeights, const float* dScores, bf16* dLogits, ROUTER_BWD_ARGS) {
  router_bwd_impl(scores, indices, dWeights, dScores, dLogits, ROUTER_BWD_PASS);
}
extern "C" __global__ void router_bwd_f32(const float* scores, const int* indices, const float* dWeights, const float* dScores, float* dLogits, ROUTER_BWD_ARGS) {
  router_bwd_impl(scores, indices, dWeights, dScores, dLogits, ROUTER_BWD_PASS);
}

/** Grid (chunks of seq·K choices, batch); counts [batch, E] zeroed before; dynamic shared memory E ints. */
extern "C" __global__ void balance_counts(const int* indices, int* counts, int seq, int E, int K) {
  extern __shared__ int blockCounts[];
  const int b = blockIdx.y;
  for (int e = threadIdx.x; e < E; e += blockDim.x) blockCounts[e] = 0;
  __syncthreads();
  const i64 choices = (i64)seq * K;
  const int* idx = indices + (i64)b * choices;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < choices; i += (i64)gridDim.x * blockDim.x) {
    const int e = idx[i];
    if (e >= 0 && e < E) atomicAdd(blockCounts + e, 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    if (blockCounts[e] != 0) atomicAdd(counts + (i64)b * E + e, blockCounts[e]);
  }
}

/**
 * Grid (blocks of `tokensPerBlock` tokens, batch); blockDim.x a multiple of 32 (a warp per token);
 * dynamic shared memory E floats. lossPart [batch, gridDim.x].
 */
extern "C" __global__ void sequence_balance_loss(const float* scores, const int* counts, float* dScores, float* lossPart, int batch, int seq, int E, int K,
                                                 int tokensPerBlock, float alpha) {
  extern __shared__ float balanceShared[];
  float* f = balanceShared;
  const int b = blockIdx.y;
  const float fScale = (float)E / ((float)K * (float)seq);
  for (int e = threadIdx.x; e < E; e += blockDim.x) f[e] = fScale * (float)counts[(i64)b * E + e];
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int t0 = blockIdx.x * tokensPerBlock, t1 = min(seq, t0 + tokensPerBlock);
  const i64 n0 = (i64)b * seq;
  float lossSum = 0.0f;
  for (int t = t0 + warp; t < t1; t += warps) {
    const float* s = scores + (n0 + t) * E;
    float z = 0.0f, fs = 0.0f;
    for (int e = lane; e < E; e += 32) {
      z += s[e];
      fs = fmaf(f[e], s[e], fs);
    }
    z = warp_sum(z);
    fs = warp_sum(fs);
    const float fDotHat = fs / z;
    const float c = alpha / ((float)batch * (float)seq * z);
    float* dsr = dScores + (n0 + t) * E;
    for (int e = lane; e < E; e += 32) dsr[e] = c * (f[e] - fDotHat);
    if (lane == 0) lossSum += fDotHat;
  }
  const float total = block_sum(lossSum);
  if (threadIdx.x == 0) lossPart[(i64)b * gridDim.x + blockIdx.x] = alpha * total / ((float)batch * (float)seq);
}
