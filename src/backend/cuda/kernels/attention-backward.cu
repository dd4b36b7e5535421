// Causal attention backward (Backend.attentionBackward): a plain kernel, correct first; the
// tensor-core flash backward replaces it. With s_j = scale·q·k_j over the visible keys
// j ≤ min(Tk − 1, qStart + i), p = softmax(s), D = Σ_d dO·O:
//   dp_j = dO·v_j,  ds_j = p_j (dp_j − D)
//   dq  = scale · Σ_j ds_j k_j          (this row's own output, kept in registers)
//   dk_j += scale · ds_j q,  dv_j += p_j dO   (shared by every query row of the head: atomicAdd)
// Layouts (contiguous): q, dq [B,Tq,H,Dk]; k [B,Tk,H,Dk]; v [B,Tk,H,Dv]; out, dOut [B,Tq,H,Dv];
// dk [B,Tk,H,Dk] and dv [B,Tk,H,Dv] in FP32, zeroed by the caller.
//
// One warp per query row (b, i, h). The probabilities are recomputed like the forward does:
// pass 1 finds the row's max m and sum l of exp(s − m) (online, 32 keys at a time, lane l scoring
// key j0 + l); pass 2 scores the keys again, forms p and ds per lane, then walks the 32 keys one
// by one with each lane owning dims d = lane + 32t. FP32 math; Dk, Dv ≤ 32·16 (512).
// Dynamic shared memory: (Dk + Dv) floats per warp (this row's q and dO).
#include "common.cuh"

#define ATT_BWD_VPL 16

template <typename T>
__device__ __forceinline__ float dot_shared(const float* __restrict__ a, const T* __restrict__ b, int D) {
  float s = 0.0f;
  for (int d = 0; d < D; d++) s = fmaf(a[d], to_float(b[d]), s);
  return s;
}

template <typename T>
__device__ __forceinline__ void attention_bwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ out,
                                                   const T* __restrict__ dOut, T* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                                                   int B, int Tq, int Tk, int H, int Dk, int Dv, float scale, int qStart) {
  extern __shared__ float attBwdShared[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
  const i64 row = (i64)blockIdx.x * warpsPerBlock + warp;  // (b·Tq + i)·H + h
  if (row >= (i64)B * Tq * H) return;  // the whole warp leaves; no block barrier follows
  const int h = (int)(row % H);
  const i64 bi = row / H;
  const int i = (int)(bi % Tq);
  const int b = (int)(bi / Tq);

  float* qs = attBwdShared + warp * (Dk + Dv);
  float* dos = qs + Dk;
  const T* qr = q + row * Dk;
  const T* outr = out + row * Dv;
  const T* dor = dOut + row * Dv;
  float dPart = 0.0f;
  for (int d = lane; d < Dk; d += 32) qs[d] = to_float(qr[d]);
  for (int d = lane; d < Dv; d += 32) {
    const float g = to_float(dor[d]);
    dos[d] = g;
    dPart = fmaf(g, to_float(outr[d]), dPart);
  }
  const float rowDot = warp_sum(dPart);
  __syncwarp();

  // Key j of this (b, h) is row keyRow0 + j·H of k [B·Tk·H, Dk] and v [B·Tk·H, Dv].
  const i64 keyRow0 = (i64)b * Tk * H + h;
  const int last = min(Tk - 1, qStart + i);

  float m = NEG_INF, l = 0.0f;
  for (int j0 = 0; j0 <= last; j0 += 32) {
    const int j = j0 + lane;
    const float s = j <= last ? scale * dot_shared(qs, k + (keyRow0 + (i64)j * H) * Dk, Dk) : NEG_INF;
    const float mNew = fmaxf(m, warp_max(s));  // finite: key j0 is always visible
    l = l * expf(m - mNew) + warp_sum(j <= last ? expf(s - mNew) : 0.0f);
    m = mNew;
  }
  const float invL = l > 0.0f ? 1.0f / l : 0.0f;

  float dqAcc[ATT_BWD_VPL];
#pragma unroll
  for (int t = 0; t < ATT_BWD_VPL; t++) dqAcc[t] = 0.0f;

  for (int j0 = 0; j0 <= last; j0 += 32) {
    const int j = j0 + lane;
    float p = 0.0f, ds = 0.0f;
    if (j <= last) {
      const i64 kr = keyRow0 + (i64)j * H;
      p = expf(scale * dot_shared(qs, k + kr * Dk, Dk) - m) * invL;
      ds = p * (dot_shared(dos, v + kr * Dv, Dv) - rowDot);
    }
    const int count = min(32, last - j0 + 1);
    for (int jj = 0; jj < count; jj++) {
      const float pj = __shfl_sync(FULL_MASK, p, jj);
      const float dsj = __shfl_sync(FULL_MASK, ds, jj);
      const i64 kr = keyRow0 + (i64)(j0 + jj) * H;
      const T* krow = k + kr * Dk;
      float* dkrow = dk + kr * Dk;
      float* dvrow = dv + kr * Dv;
#pragma unroll
      for (int t = 0; t < ATT_BWD_VPL; t++) {
        const int d = lane + 32 * t;
        if (d < Dk) {
          dqAcc[t] = fmaf(dsj, to_float(krow[d]), dqAcc[t]);
          atomicAdd(dkrow + d, scale * dsj * qs[d]);
        }
        if (d < Dv) atomicAdd(dvrow + d, pj * dos[d]);
      }
    }
  }

  T* dqr = dq + row * Dk;
#pragma unroll
  for (int t = 0; t < ATT_BWD_VPL; t++) {
    const int d = lane + 32 * t;
    if (d < Dk) dqr[d] = from_float<T>(scale * dqAcc[t]);
  }
}

#define ATTENTION_BWD_ARGS int B, int Tq, int Tk, int H, int Dk, int Dv, float scale, int qStart
#define ATTENTION_BWD_PASS B, Tq, Tk, H, Dk, Dv, scale, qStart

extern "C" __global__ void attention_bwd_bf16(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const bf16* dOut, bf16* dq, float* dk, float* dv,
                                              ATTENTION_BWD_ARGS) {
  attention_bwd_impl(q, k, v, out, dOut, dq, dk, dv, ATTENTION_BWD_PASS);
}
extern "C" __global__ void attention_bwd_f32(const float* q, const float* k, const float* v, const float* out, const float* dOut, float* dq, float* dk, float* dv,
                                             ATTENTION_BWD_ARGS) {
  attention_bwd_impl(q, k, v, out, dOut, dq, dk, dv, ATTENTION_BWD_PASS);
}
