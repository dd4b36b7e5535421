// DeepSeekMoE router (SPEC §3, Backend.routerTopK). One warp per token:
//   s      = sigmoid(logits) or softmax(logits)             (FP32; written to `scores`)
//   choice = s + bias                                       (selection only)
//   groups : group score = sum of the two best `choice` in the group (or the best one);
//            keep the topkGroup best groups when group-limited
//   idx    = top-K of choice among kept experts (ties: lower index first, like the CPU backend)
//   w      = s[idx]; if normTopk: w /= Σw + 1e-20; w *= scaling
// Limits (checked by the host): E ≤ 1024, K ≤ 32, nGroup ≤ 32, E % nGroup == 0.
// Dynamic shared memory: 2·E floats per warp (scores, choice).
#include "common.cuh"

/** Warp-wide argmax of (value, index): larger value wins, equal values go to the lower index. */
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, v, o);
    const int oi = __shfl_xor_sync(FULL_MASK, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

template <typename L, typename B>
__device__ __forceinline__ void router_impl(const L* __restrict__ logits, const B* __restrict__ bias, float* __restrict__ scores, int* __restrict__ indices,
                                            float* __restrict__ weights, int N, int E, int K, int nGroup, int topkGroup, int softmaxScoring,
                                            int groupLimited, int groupTop2, int normTopk, float scaling) {
  extern __shared__ float smem[];
  const int warpsPerBlock = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * warpsPerBlock + warp;
  if (n >= N) return;  // the whole warp leaves together; no block-wide barrier follows
  float* s = smem + warp * 2 * E;
  float* choice = s + E;
  const L* lg = logits + (i64)n * E;
  float* sc = scores + (i64)n * E;

  if (softmaxScoring) {
    float m = NEG_INF;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, to_float(lg[e]));
    m = warp_max(m);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) sum += expf(to_float(lg[e]) - m);
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += 32) s[e] = expf(to_float(lg[e]) - m) / sum;
  } else {
    for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-to_float(lg[e])));
  }
  for (int e = lane; e < E; e += 32) {
    sc[e] = s[e];
    choice[e] = s[e] + (bias ? to_float(bias[e]) : 0.0f);
  }
  __syncwarp();

  // Bit g of keptGroups: group g may supply experts.
  unsigned keptGroups = FULL_MASK;
  const int perGroup = E / nGroup;
  if (groupLimited && nGroup > 1) {
    float gs = NEG_INF;
    if (lane < nGroup) {
      float b1 = NEG_INF, b2 = NEG_INF;
      for (int j = 0; j < perGroup; j++) {
        const float v = choice[lane * perGroup + j];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      gs = groupTop2 ? b1 + b2 : b1;
    }
    keptGroups = 0;
    for (int t = 0; t < topkGroup; t++) {
      const bool candidate = lane < nGroup && !((keptGroups >> lane) & 1u);
      float v = candidate ? gs : NEG_INF;
      int i = candidate ? lane : INT_MAX_VALUE;
      warp_argmax(v, i);
      if (i < nGroup) keptGroups |= 1u << i;
    }
  }

  // Lane l owns experts l, l+32, l+64…; bit j of `taken` marks expert l + 32j as chosen.
  unsigned taken = 0;
  int myIndex = 0;
  float myWeight = 0.0f;
  for (int k = 0; k < K; k++) {
    float v = NEG_INF;
    int i = INT_MAX_VALUE;
    for (int e = lane, j = 0; e < E; e += 32, j++) {
      if ((taken >> j) & 1u) continue;
      if (!((keptGroups >> (e / perGroup)) & 1u)) continue;
      const float c = choice[e];
      if (c > v || (c == v && e < i)) {
        v = c;
        i = e;
      }
    }
    warp_argmax(v, i);
    if (i >= E) i = 0;  // only when fewer than K experts are selectable (NaN logits): keep the index valid
    if ((i & 31) == lane) taken |= 1u << (i >> 5);
    if (lane == k) {
      myIndex = i;
      myWeight = s[i];
    }
  }
  const float total = warp_sum(lane < K ? myWeight : 0.0f);
  const float norm = normTopk ? 1.0f / (total + 1e-20f) : 1.0f;
  if (lane < K) {
    indices[(i64)n * K + lane] = myIndex;
    weights[(i64)n * K + lane] = myWeight * norm * scaling;
  }
}

#define ROUTER_ARGS int N, int E, int K, int nGroup, int topkGroup, int softmaxScoring, int groupLimited, int groupTop2, int normTopk, float scaling
#define ROUTER_PASS N, E, K, nGroup, topkGroup, softmaxScoring, groupLimited, groupTop2, normTopk, scaling

extern "C" __global__ void router_topk_f32_f32(const float* logits, const float* bias, float* scores, int* indices, float* weights, ROUTER_ARGS) {
  router_impl(logits, bias, scores, indices, weights, ROUTER_PASS);
}
extern "C" __global__ void router_topk_f32_bf16(const float* logits, const bf16* bias, float* scores, int* indices, float* weights, ROUTER_ARGS) {
  router_impl(logits, bias, scores, indices, weights, ROUTER_PASS);
}
extern "C" __global__ void router_topk_bf16_f32(const bf16* logits, const float* bias, float* scores, int* indices, float* weights, ROUTER_ARGS) {
  router_impl(logits, bias, scores, indices, weights, ROUTER_PASS);
}
extern "C" __global__ void router_topk_bf16_bf16(const bf16* logits, const bf16* bias, float* scores, int* indices, float* weights, ROUTER_ARGS) {
  router_impl(logits, bias, scores, indices, weights, ROUTER_PASS);
}
