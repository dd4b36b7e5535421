// Causal attention with an online softmax (Backend.attention and mlaLatentAttention), and the
// latent cache's writes (Backend.writeCache).
//
// Scores are split in two parts so one kernel serves both ops:
//   score(i, j) = (q1_i·k1_j + q2_i·k2_j) · scale,   out_i = Σ_j p_ij v_j
// - attention:          q1 = q [B,Tq,H,Dk], k1 = k [B,Tk,H,Dk], D2 = 0, v [B,Tk,H,Dv], Hk = H
// - mlaLatentAttention: q1 = qLat [B,Tq,H,C], k1 = v = ckv [B,S,C], q2 = qPe [B,Tq,H,R],
//                       k2 = kpe [B,S,R], Hk = 1 (one latent "head" shared by all heads)
// Query i of batch row b sits at position positions[b·Tq + i] when `positions` is given (read on
// the device: a captured decode step's positions change between replays), else at qStart + i; it
// sees keys j up to its position (and j < Tk).
// Layouts (contiguous): q1 [B,Tq,H,D1], q2 [B,Tq,H,D2], k1 [B,S,Hk,D1], k2 [B,S,Hk,D2],
// v [B,S,Hk,Dv], out [B,Tq,H,Dv]; S is the key tensors' capacity (S ≥ Tk).
//
// One warp per query row (b, i, h). Keys go 32 at a time: lane l scores key j0 + l against q
// (held in shared memory, pre-multiplied by the scale), the warp updates the running max and
// sum, then each lane accumulates its own output dims d = lane + 32t over those 32 value rows.
// FP32 math throughout; Dv ≤ 32·VPL (512). Dynamic shared memory: (D1 + D2) floats per warp.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ float dot_row(const float* __restrict__ q, const T* __restrict__ k, int D) {
  constexpr int V = Vec<T>::N;
  float dot = 0.0f;
  int d = 0;
  if (aligned16(k)) {
    for (; d + V <= D; d += V) {
      uint4 vk = *reinterpret_cast<const uint4*>(k + d);
      const T* ek = reinterpret_cast<const T*>(&vk);
#pragma unroll
      for (int j = 0; j < V; j++) dot = fmaf(q[d + j], to_float(ek[j]), dot);
    }
  }
  for (; d < D; d++) dot = fmaf(q[d], to_float(k[d]), dot);
  return dot;
}

template <typename T, int VPL>
__device__ __forceinline__ void attention_impl(const T* __restrict__ q1, const T* __restrict__ q2, const T* __restrict__ k1, const T* __restrict__ k2,
                                               const T* __restrict__ v, T* __restrict__ out, int B, int Tq, int Tk, int S, int H, int Hk, int D1, int D2,
                                               int Dv, float scale, int qStart, const int* __restrict__ positions) {
  extern __shared__ float qShared[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
  const i64 row = (i64)blockIdx.x * warpsPerBlock + warp;  // (b·Tq + i)·H + h
  if (row >= (i64)B * Tq * H) return;  // the whole warp leaves; no block barrier follows
  const int h = (int)(row % H);
  const i64 bi = row / H;
  const int i = (int)(bi % Tq);
  const int b = (int)(bi / Tq);
  const int D = D1 + D2;
  float* q = qShared + warp * D;
  for (int d = lane; d < D1; d += 32) q[d] = to_float(q1[row * D1 + d]) * scale;
  for (int d = lane; d < D2; d += 32) q[D1 + d] = to_float(q2[row * D2 + d]) * scale;
  __syncwarp();

  const int hk = Hk == 1 ? 0 : h;
  const T* k1b = k1 + ((i64)b * S * Hk + hk) * D1;
  const T* k2b = k2 + ((i64)b * S * Hk + hk) * D2;
  const T* vb = v + ((i64)b * S * Hk + hk) * Dv;
  const i64 k1Step = (i64)Hk * D1, k2Step = (i64)Hk * D2, vStep = (i64)Hk * Dv;
  const int last = min(Tk - 1, positions ? positions[bi] : qStart + i);

  float m = NEG_INF, l = 0.0f;
  float acc[VPL];
#pragma unroll
  for (int t = 0; t < VPL; t++) acc[t] = 0.0f;

  for (int j0 = 0; j0 <= last; j0 += 32) {
    const int j = j0 + lane;
    float s = NEG_INF;
    if (j <= last) {
      s = dot_row(q, k1b + j * k1Step, D1);
      if (D2 > 0) s += dot_row(q + D1, k2b + j * k2Step, D2);
    }
    const float mNew = fmaxf(m, warp_max(s));  // finite: key j0 is always visible
    const float p = j <= last ? expf(s - mNew) : 0.0f;
    const float correction = expf(m - mNew);
    l = l * correction + warp_sum(p);
#pragma unroll
    for (int t = 0; t < VPL; t++) acc[t] *= correction;
    const int count = min(32, last - j0 + 1);
    for (int jj = 0; jj < count; jj++) {
      const float pj = __shfl_sync(FULL_MASK, p, jj);
      const T* vr = vb + (j0 + jj) * vStep;
#pragma unroll
      for (int t = 0; t < VPL; t++) {
        const int d = lane + 32 * t;
        if (d < Dv) acc[t] = fmaf(pj, to_float(vr[d]), acc[t]);
      }
    }
    m = mNew;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* o = out + row * Dv;
#pragma unroll
  for (int t = 0; t < VPL; t++) {
    const int d = lane + 32 * t;
    if (d < Dv) o[d] = from_float<T>(acc[t] * inv);
  }
}

#define ATTENTION_ARGS int B, int Tq, int Tk, int S, int H, int Hk, int D1, int D2, int Dv, float scale, int qStart, const int* positions
#define ATTENTION_PASS B, Tq, Tk, S, H, Hk, D1, D2, Dv, scale, qStart, positions

extern "C" __global__ void attention_fwd_bf16(const bf16* q1, const bf16* q2, const bf16* k1, const bf16* k2, const bf16* v, bf16* out, ATTENTION_ARGS) {
  attention_impl<bf16, 16>(q1, q2, k1, k2, v, out, ATTENTION_PASS);
}
extern "C" __global__ void attention_fwd_f32(const float* q1, const float* q2, const float* k1, const float* k2, const float* v, float* out, ATTENTION_ARGS) {
  attention_impl<float, 16>(q1, q2, k1, k2, v, out, ATTENTION_PASS);
}

/**
 * dst [B, S, C] row positions[b·T + t] of batch row b ← src [B, T, C] row t, for the rows·C elements
 * (rows = B·T) moved as raw 2- or 4-byte words. One block per source row; a row whose position lies
 * outside [0, S) is left out (the host cannot check positions that only the device holds).
 */
template <typename E>
__device__ __forceinline__ void cache_write_impl(const E* __restrict__ src, const int* __restrict__ positions, E* __restrict__ dst, int rows, int T,
                                                 int S, int C) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int p = positions[r];
    if (p < 0 || p >= S) continue;
    block_copy_row(src + (i64)r * C, dst + ((i64)(r / T) * S + p) * C, C);
  }
}

extern "C" __global__ void cache_write_b16(const unsigned short* src, const int* positions, unsigned short* dst, int rows, int T, int S, int C) {
  cache_write_impl(src, positions, dst, rows, T, S, C);
}
extern "C" __global__ void cache_write_b32(const unsigned int* src, const int* positions, unsigned int* dst, int rows, int T, int S, int C) {
  cache_write_impl(src, positions, dst, rows, T, S, C);
}
