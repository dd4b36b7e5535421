// Flash-style causal attention forward on tensor cores (Backend.attention for training shapes):
//
//   q [B, Tq, H, Dk], k [B, Skv, H, Dk], v [B, Skv, H, Dv] (the first Tk of Skv positions used)
//   out [B, Tq, H, Dv] (BF16), lse [B, H, Tq] (FP32, natural log of Σ_j exp(scale·q_i·k_j)),
//   query i sits at absolute position qStart + i and sees keys j ≤ qStart + i, j < Tk.
//
// The [Tq, Tk] scores never reach memory: a block owns BM query rows of one (b, h) and walks the
// visible keys 64 at a time with an online softmax (running max m and sum l per row, the output
// accumulator rescaled by exp(m_old − m_new) whenever the max grows). FP32 accumulation; P is
// rounded to BF16 for the P·V product, as in FlashAttention-2.
//
// Layout of the work:
//   - BM = FA_BM (64 or 128) query rows, BM/16 warps; warp w owns query rows 16w..16w+15 of the
//     block's BM. 128 rows read each K/V tile into shared memory for twice the rows (half the
//     traffic from L2 per query) with the same registers per thread; 64 rows make twice the blocks,
//     for short sequences.
//   - S = Q Kᵀ and O += P V with mma.sync.m16n8k16 (BF16 in, FP32 out), operands fetched from
//     shared memory with ldmatrix (V with .trans). P goes from the S accumulators straight into
//     A fragments (the C layout of two n8 tiles is the A layout of one k16 step).
//   - Q is staged once; K/V tiles are double-buffered with cp.async (tile t+1 loads while tile t
//     computes), with one barrier a tile: tile t+1's copy is issued after the barrier that opens
//     tile t, when every warp is done with tile t−1 and so with its buffer. Shared rows are padded
//     by 8 elements so ldmatrix is bank-conflict free.
//   - Q fragments stay in registers when they fit beside the output accumulator (Dk = 192, Dv = 128:
//     48 + 64 registers), else they are re-read from shared memory each tile.
//   - Causal mask and tails: scores of tiles that reach past a row's last key or past Tk get
//     `j ≤ qStart + i && j < Tk` (else −inf); rows past Tq and keys past the block's last visible
//     key are zero-filled by cp.async and never stored. A fully masked row keeps m = −inf and
//     contributes nothing (the exp uses 0 in place of −inf). A warp skips the tiles none of its
//     rows sees (the last ones of a 128-row block) and a block tail's warps past Tq.
//   - Blocks are dispatched (b, h) fastest and query blocks last-first, so the longest (most keys)
//     start first across all heads.
//
// Head dims are compile-time (padded): FA_DK, FA_DV are the actual Dk, Dv rounded up to multiples
// of 16 (≤ 256); the padding columns are zero-filled on load and never stored. The host compiles one
// module per padded pair (flash-attention.ts passes -DFA_DK=… -DFA_DV=…). Dk, Dv must be multiples
// of 8 and the tensors 16-byte aligned (16-byte cp.async chunks).
#include "flash-common.cuh"

#ifndef FA_DK
#define FA_DK 192
#endif
#ifndef FA_DV
#define FA_DV 128
#endif
#ifndef FA_BM
#define FA_BM 128
#endif

static_assert(FA_DK % 16 == 0 && FA_DK >= 16 && FA_DK <= 256, "FA_DK: a multiple of 16 in [16, 256]");
static_assert(FA_DV % 16 == 0 && FA_DV >= 16 && FA_DV <= 256, "FA_DV: a multiple of 16 in [16, 256]");

#define LN2_F 0.6931471805599453f

// ---- the forward kernel -------------------------------------------------------------------------

namespace fa {
constexpr int DK = FA_DK, DV = FA_DV;
constexpr int BM = FA_BM, BN = 64, WARPS = BM / 16, THREADS = 32 * WARPS;
static_assert(BM == 64 || BM == 128, "FA_BM: 64 or 128");
constexpr int SK = DK + 8, SV = DV + 8;  // shared row strides (elements)
constexpr int KSTEPS = DK / 16;
/** Q's A fragments in registers when they fit beside the output accumulator. */
constexpr bool Q_IN_REGS = KSTEPS * 4 + (DV / 8) * 4 <= 112;
/** Dynamic shared memory: Q, two K tiles, two V tiles. */
constexpr int SHARED_BYTES = (BM * SK + 2 * BN * SK + 2 * BN * SV) * 2;
static_assert(SHARED_BYTES <= 227 * 1024, "shared memory beyond Hopper's per-block limit");
}  // namespace fa

template <bool QREG>
__device__ __forceinline__ void flash_fwd_impl(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                               bf16* __restrict__ out, float* __restrict__ lse, int Tq, int Tk, int Skv, int H, int Dk,
                                               int Dv, float scale, int qStart) {
  using namespace fa;
  extern __shared__ __align__(16) unsigned char smem[];
  const u32 sQ = smem_u32(smem);
  const u32 sK0 = sQ + BM * SK * 2;
  const u32 sV0 = sK0 + 2 * BN * SK * 2;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int m0 = (int)(gridDim.y - 1 - blockIdx.y) * BM;
  const int h = (int)(blockIdx.x % H), b = (int)(blockIdx.x / H);
  const i64 qLd = (i64)H * Dk, kLd = (i64)H * Dk, vLd = (i64)H * Dv, oLd = (i64)H * Dv;
  const bf16* qB = q + ((i64)b * Tq + m0) * qLd + (i64)h * Dk;
  const bf16* kB = k + (i64)b * Skv * kLd + (i64)h * Dk;
  const bf16* vB = v + (i64)b * Skv * vLd + (i64)h * Dv;
  // Keys any row of this block may see: [0, kvEnd).
  const int kvEnd = min(Tk, qStart + m0 + BM);
  const int nTiles = kvEnd > 0 ? (kvEnd + BN - 1) / BN : 0;

  load_rows<DK, SK, BM, THREADS>(sQ, qB, qLd, Tq - m0, Dk, tid);
  if (nTiles > 0) {
    load_rows<DK, SK, BN, THREADS>(sK0, kB, kLd, kvEnd, Dk, tid);
    load_rows<DV, SV, BN, THREADS>(sV0, vB, vLd, kvEnd, Dv, tid);
  }
  cp_async_commit();

  float o[DV / 8][4];
#pragma unroll
  for (int i = 0; i < DV / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mr[2] = {NEG_INF, NEG_INF};  // running max of scale·log2(e)·s, rows g and g+8 of the warp
  float lr[2] = {0.0f, 0.0f};        // this thread's share of the running sum (its 2 columns per n-tile)
  u32 qf[QREG ? KSTEPS : 1][4];
  const float sl2 = scale * LOG2E_F;
  const int qi0 = m0 + warp * 16 + g;  // this thread's query rows: qi0 and qi0 + 8
  const int last0 = qStart + qi0;      // the last key row qi0 sees (row qi0 + 8: last0 + 8)
  // The warp's rows see keys up to qStart + m0 + 16·warp + 15 and exist below Tq.
  const int warpLast = qStart + m0 + warp * 16 + 15;
  const bool warpRows = m0 + warp * 16 < Tq;
  // Tiles that end at or before this key need no mask for any row of the block: [0, fullEnd).
  const int fullEnd = min(Tk, qStart + m0 + 1);

  // Per-lane byte offsets of the ldmatrix row addresses.
  // A (Q rows of this warp): matrices (rows 0-7 | 8-15) × (cols 0-7 | 8-15) → a0..a3.
  const u32 aOff = (u32)(((warp * 16 + (lane & 15)) * SK + (lane >> 4) * 8) * 2);
  // B from K (n = key, k = dim): matrices (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, …)
  // → b0, b1 of key n-tile 2np and b0, b1 of n-tile 2np+1.
  const u32 kOff = (u32)((((lane >> 4) * 8 + (lane & 7)) * SK + ((lane >> 3) & 1) * 8) * 2);
  // B from V (k = key, n = dim), transposed: (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7,
  // dims 8-15), (keys 8-15, dims 8-15) → b0, b1 of dim n-tile 2dp and of n-tile 2dp+1.
  const u32 vOff = (u32)(((((lane >> 3) & 1) * 8 + (lane & 7)) * SV + (lane >> 4) * 8) * 2);

  for (int t = 0; t < nTiles; t++) {
    const int n0 = t * BN;
    cp_async_wait<0>();  // Q and tile t are in (this thread's copies; the barrier makes them everyone's)
    __syncthreads();     // ... and every warp is done with tile t − 1, whose buffer tile t + 1 takes
    if (t + 1 < nTiles) {
      const int n1 = n0 + BN;
      const u32 buf = (u32)((t + 1) & 1);
      load_rows<DK, SK, BN, THREADS>(sK0 + buf * (BN * SK * 2), kB + n1 * kLd, kLd, kvEnd - n1, Dk, tid);
      load_rows<DV, SV, BN, THREADS>(sV0 + buf * (BN * SV * 2), vB + n1 * vLd, vLd, kvEnd - n1, Dv, tid);
    }
    cp_async_commit();
    if constexpr (QREG) {
      if (t == 0) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) ldsm_x4(qf[kk], sQ + aOff + kk * 32);
      }
    }
    if (!warpRows || n0 > warpLast) continue;  // warp-uniform: none of the warp's rows sees this tile
    const u32 cK = sK0 + (u32)(t & 1) * (BN * SK * 2);
    const u32 cV = sV0 + (u32)(t & 1) * (BN * SV * 2);

    // S = Q Kᵀ for this warp's 16 rows × 64 keys.
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
      u32 a[4];
      if constexpr (QREG) {
        a[0] = qf[kk][0];
        a[1] = qf[kk][1];
        a[2] = qf[kk][2];
        a[3] = qf[kk][3];
      } else {
        ldsm_x4(a, sQ + aOff + kk * 32);
      }
#pragma unroll
      for (int np = 0; np < BN / 16; np++) {
        u32 bk[4];
        ldsm_x4(bk, cK + kOff + (u32)((np * 16 * SK + kk * 16) * 2));
        mma_bf16(s[2 * np], a, bk[0], bk[1]);
        mma_bf16(s[2 * np + 1], a, bk[2], bk[3]);
      }
    }

    // Mask (causal and the key tail) where the tile reaches past the first row's last key or Tk.
    if (n0 + BN > fullEnd) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int j = n0 + nt * 8 + tig * 2 + (e & 1);
          if (!(j <= last0 + (e >> 1) * 8 && j < Tk)) s[nt][e] = NEG_INF;
        }
      }
    }

    // Online softmax: rows g (r = 0) and g + 8 (r = 1); a row's 64 columns live in the 4 threads of a
    // quad. The max is taken on the raw scores (scale > 0 keeps the order) and scaled once; each
    // p = 2^(s·scale·log2 e − m) is one FMA and one exp2.
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = NEG_INF;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mr[r], quad_max(mx) * sl2);
      const float mUse = mx == NEG_INF ? 0.0f : mx;
      const float alpha = exp2f(mr[r] - mUse);
      mr[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
        const float p0 = exp2f(fmaf(s[nt][2 * r], sl2, -mUse)), p1 = exp2f(fmaf(s[nt][2 * r + 1], sl2, -mUse));
        s[nt][2 * r] = p0;
        s[nt][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      lr[r] = lr[r] * alpha + sum;
#pragma unroll
      for (int dt = 0; dt < DV / 8; dt++) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
    }

    // O += P V: the accumulators of key n-tiles 2kk, 2kk+1 are the A fragment of key step kk.
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      u32 a[4];
      a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < DV / 16; dp++) {
        u32 bv[4];
        ldsm_x4_t(bv, cV + vOff + (u32)((kk * 16 * SV + dp * 16) * 2));
        mma_bf16(o[2 * dp], a, bv[0], bv[1]);
        mma_bf16(o[2 * dp + 1], a, bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Normalise and store; lse = ln Σ exp(scale·s) = ln2 · (m + log2 l).
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const float l = quad_sum(lr[r]);
    const int qi = qi0 + r * 8;
    if (qi >= Tq) continue;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    bf16* orow = out + ((i64)b * Tq + qi) * oLd + (i64)h * Dv;
#pragma unroll
    for (int dt = 0; dt < DV / 8; dt++) {
      const int col = dt * 8 + tig * 2;
      if (col < Dv) *reinterpret_cast<__nv_bfloat162*>(orow + col) = __floats2bfloat162_rn(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
    if (lse != nullptr && tig == 0) lse[((i64)b * H + h) * Tq + qi] = l > 0.0f ? (mr[r] + log2f(l)) * LN2_F : NEG_INF;
  }
}

/**
 * grid (B·H, ceil(Tq/BM)): x = b·H + h, y = the query block counted from the last (longest first).
 * BM/16 warps, fa::SHARED_BYTES of dynamic shared memory. lse may be null (inference: no log-sum-exp kept).
 */
extern "C" __global__ void __launch_bounds__(fa::THREADS) flash_attn_fwd(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse,
                                                                         int Tq, int Tk, int Skv, int H, int Dk, int Dv, float scale,
                                                                         int qStart) {
  flash_fwd_impl<fa::Q_IN_REGS>(q, k, v, out, lse, Tq, Tk, Skv, H, Dk, Dv, scale, qStart);
}
