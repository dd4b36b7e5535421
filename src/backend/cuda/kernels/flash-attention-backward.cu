// Flash-style causal attention backward (FlashAttention-2), BF16 operands, FP32 accumulation:
//
//   q [B, Tq, H, Dk], k [B, Tk, H, Dk], v [B, Tk, H, Dv], out, dOut [B, Tq, H, Dv] (BF16),
//   lse [B, H, Tq] (FP32, from flash_attn_fwd) → dq [B, Tq, H, Dk], dk [B, Tk, H, Dk], dv [B, Tk, H, Dv].
//   Query i sits at absolute position qStart + i and sees keys j ≤ qStart + i, j < Tk.
//
// Three kernels:
//   flash_attn_bwd_dot        D_i = Σ_d dOut_id · out_id (FP32 [B, H, Tq]), one warp per row.
//   flash_attn_bwd            one block per BN keys of one (b, h): K, V stay in shared memory while the
//                             block walks the query tiles that see them (64 queries each), recomputing
//                             P = exp(scale·S − lse) and accumulating dV += Pᵀ dO, dK += dSᵀ Q in
//                             registers, with dS = P ∘ (dO Vᵀ − D). dQ += dS K of the tile is added
//                             into an FP32 [B, Tq, H, Dk] buffer with vector atomics (red.global.add.v2.f32):
//                             every key block contributes to the same dQ rows, so dQ's summation order
//                             (and its last bits) varies from run to run; dK and dV are deterministic.
//   flash_attn_bwd_dq_convert the FP32 dQ buffer → BF16 dq (when BF16 gradients are asked for).
//
// flash_attn_bwd: BN = FAB_BN keys a block (64, 96 or 128), 2·BN/16 warps, one block an SM.
// Warp w = (wr = w mod BN/16, wc = w div BN/16):
//   - Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for keys 16wr..16wr+15 × queries 32wc..32wc+31 (mma.sync m16n8k16);
//   - P and dS (BF16) go to shared memory as [key][query], so every warp can read whole rows;
//   - dV, dK for keys 16wr..+15 × the column half wc of Dv, Dk (FP32 accumulators in registers);
//   - dQ for queries 16·(w mod 4)..+15 × the column part w div 4 of Dk (BN/32 parts of Dk; A = dS
//     read transposed by ldmatrix.trans, k = the block's BN keys).
// Every warp holds the same accumulators whatever BN (dK, dV of 16 keys × half the columns: DK/4 +
// DV/4 registers), so BN = 128 halves the dQ atomics and the Q, dO reloads against BN = 64 (each query
// tile is read and its dQ added once per key block) and doubles the warps an SM, within 128 registers
// a thread (65536 / 512): hence Sᵀ and dPᵀ are not live together (P goes to shared memory first and
// dS reads it back), and BN > 64 takes DK + DV ≤ 320 only.
// Query tiles are double-buffered: tile m0 + 64 (Q, dO by cp.async, lse and D) loads while m0
// computes, issued after the one barrier that opens tile m0 (every warp is then done with the
// previous tile, its buffer, Pᵀ and dSᵀ); a second barrier separates writing Pᵀ, dSᵀ from reading them.
// Masking: P = 0 where j > qStart + i, i ≥ Tq or j ≥ Tk (rows past Tq and keys past Tk are also
// zero-filled in shared memory), so those entries add nothing anywhere.
//
// Head dims are compile-time: FAB_DK, FAB_DV are the actual Dk, Dv rounded up (Dv to a multiple of
// 32, Dk to a multiple of 16·BN/32 so that each dQ column part is whole m16n8k16 tile pairs; ≤ 256);
// padding columns are zero-filled and never stored. Dk, Dv multiples of 8, tensors 16-byte aligned.
#include "flash-common.cuh"

#ifndef FAB_DK
#define FAB_DK 192
#endif
#ifndef FAB_DV
#define FAB_DV 128
#endif
#ifndef FAB_BN
#define FAB_BN 128
#endif

static_assert(FAB_DK % 32 == 0 && FAB_DK >= 32 && FAB_DK <= 256, "FAB_DK: a multiple of 32 in [32, 256]");
static_assert(FAB_DV % 32 == 0 && FAB_DV >= 32 && FAB_DV <= 256, "FAB_DV: a multiple of 32 in [32, 256]");

/** *p += (x, y) as one relaxed vector reduction (p 8-byte aligned, global memory). */
__device__ __forceinline__ void red_add_f32x2(float* p, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(x), "f"(y) : "memory");
}

// ---- D = rowsum(dOut ∘ out) ----------------------------------------------------------------------

/** rows = B·Tq·H rows of Dv (even) elements; Dsum [B, H, Tq]. 256 threads, one warp per row. */
extern "C" __global__ void flash_attn_bwd_dot(const bf16* out, const bf16* dOut, float* Dsum, int rows, int Tq, int H, int Dv) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + warp;  // (b·Tq + i)·H + h
  if (row >= rows) return;  // the whole warp leaves together
  const bf16* o = out + row * Dv;
  const bf16* d = dOut + row * Dv;
  float acc = 0.0f;
  for (int c = 2 * lane; c < Dv; c += 64) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + c));
    const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d + c));
    acc = fmaf(x.x, y.x, fmaf(x.y, y.y, acc));
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    const int h = (int)(row % H);
    const i64 bi = row / H;
    const int i = (int)(bi % Tq);
    const i64 b = bi / Tq;
    Dsum[(b * H + h) * Tq + i] = acc;
  }
}

/** dst[i] = bf16(src[i]) for i < n (n even). */
extern "C" __global__ void flash_attn_bwd_dq_convert(const float* src, bf16* dst, i64 n) {
  const i64 pairs = n >> 1;
  for (i64 p = (i64)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += (i64)gridDim.x * blockDim.x) {
    const float2 x = reinterpret_cast<const float2*>(src)[p];
    reinterpret_cast<__nv_bfloat162*>(dst)[p] = __floats2bfloat162_rn(x.x, x.y);
  }
}

// ---- the main backward kernel ----------------------------------------------------------------------

namespace fab {
constexpr int DK = FAB_DK, DV = FAB_DV, BN = FAB_BN, BM = 64;
constexpr int KSLABS = BN / 16;                      // 16-key slabs: warps per query half
constexpr int WARPS = 2 * KSLABS, THREADS = 32 * WARPS;
constexpr int SK = DK + 8, SV = DV + 8, SP = BM + 8;  // shared row strides (elements)
constexpr int DKH = DK / 2, DVH = DV / 2;             // the column half of dK, dV a warp owns
constexpr int DQ_PARTS = WARPS / 4, DKQ = DK / DQ_PARTS;  // dQ: 4 query slabs × DQ_PARTS column parts of DKQ
static_assert(BN == 64 || BN == 96 || BN == 128, "FAB_BN: 64, 96 or 128");
static_assert(DKQ * DQ_PARTS == DK && DKQ % 16 == 0, "FAB_DK: a multiple of 16·FAB_BN/32");
// dK, dV accumulators: DK/4 + DV/4 registers a thread, of the 65536/THREADS (≤ 255) there are.
static_assert(BN == 64 || DK + DV <= 320, "FAB_BN > 64 takes FAB_DK + FAB_DV ≤ 320");
// Shared layout (bytes): two buffers of a query tile (Q, dO, lse, D: the next tile loads while this
// one computes), K, V (the block's keys), Pᵀ, dSᵀ.
constexpr int Q_BYTES = BM * SK * 2, DO_BYTES = BM * SV * 2, ROW_BYTES = BM * 4;
constexpr int OFF_Q = 0;                           // + buffer · Q_BYTES
constexpr int OFF_DO = OFF_Q + 2 * Q_BYTES;        // + buffer · DO_BYTES
constexpr int OFF_K = OFF_DO + 2 * DO_BYTES;
constexpr int OFF_V = OFF_K + BN * SK * 2;
constexpr int OFF_P = OFF_V + BN * SV * 2;
constexpr int OFF_DS = OFF_P + BN * SP * 2;
constexpr int OFF_LSE = OFF_DS + BN * SP * 2;      // + buffer · ROW_BYTES
constexpr int OFF_D = OFF_LSE + 2 * ROW_BYTES;     // + buffer · ROW_BYTES
constexpr int SHARED_BYTES = OFF_D + 2 * ROW_BYTES;
static_assert(SHARED_BYTES <= 227 * 1024, "shared memory beyond Hopper's per-block limit");
}  // namespace fab

/**
 * grid (B·H, ceil(Tk/BN)): x = b·H + h, y = the key block (block 0, the most query tiles, is
 * dispatched first for every head: longest first). 2·BN/16 warps, fab::SHARED_BYTES of dynamic shared memory.
 * dqAcc: FP32 [B, Tq, H, Dk], zeroed by the caller, receives dQ (already multiplied by scale).
 * dk, dv: FP32 when gradF32 != 0, else BF16.
 */
extern "C" __global__ void __launch_bounds__(fab::THREADS, 1)
    flash_attn_bwd(const bf16* q, const bf16* k, const bf16* v, const bf16* dOut, const float* lse, const float* Dsum, float* dqAcc,
                   void* dk, void* dv, int gradF32, int Tq, int Tk, int H, int Dk, int Dv, float scale, int qStart) {
  using namespace fab;
  extern __shared__ __align__(16) unsigned char smem[];
  const u32 sBase = smem_u32(smem);
  const u32 sK = sBase + OFF_K, sV = sBase + OFF_V, sP = sBase + OFF_P, sdS = sBase + OFF_DS;
  bf16* pP = reinterpret_cast<bf16*>(smem + OFF_P);
  bf16* pdS = reinterpret_cast<bf16*>(smem + OFF_DS);

  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int wr = w % KSLABS, wc = w / KSLABS;  // Sᵀ, dPᵀ, dK, dV: key slab, query / column half
  const int qr = w & 3, qc = w >> 2;           // dQ: query slab, column part
  const int n0 = blockIdx.y * BN;
  const int h = (int)(blockIdx.x % H), b = (int)(blockIdx.x / H);
  const i64 qLd = (i64)H * Dk, vLd = (i64)H * Dv;  // token strides of q, k (and dq, dk) and of v, dOut (and dv)
  const bf16* qB = q + (i64)b * Tq * qLd + (i64)h * Dk;
  const bf16* dOB = dOut + (i64)b * Tq * vLd + (i64)h * Dv;
  const float* lseB = lse + ((i64)b * H + h) * Tq;
  const float* DB = Dsum + ((i64)b * H + h) * Tq;
  const float sl2 = scale * LOG2E_F;

  load_rows<DK, SK, BN, THREADS>(sK, k + ((i64)b * Tk + n0) * qLd + (i64)h * Dk, qLd, Tk - n0, Dk, tid);
  load_rows<DV, SV, BN, THREADS>(sV, v + ((i64)b * Tk + n0) * vLd + (i64)h * Dv, vLd, Tk - n0, Dv, tid);

  float dkAcc[DKH / 8][4], dvAcc[DVH / 8][4];
#pragma unroll
  for (int i = 0; i < DKH / 8; i++) dkAcc[i][0] = dkAcc[i][1] = dkAcc[i][2] = dkAcc[i][3] = 0.0f;
#pragma unroll
  for (int i = 0; i < DVH / 8; i++) dvAcc[i][0] = dvAcc[i][1] = dvAcc[i][2] = dvAcc[i][3] = 0.0f;

  // ldmatrix per-lane byte offsets (see flash-attention.cu for the fragment mapping).
  // A, row-major rows 16wr.. of K / V / Pᵀ / dSᵀ:
  const u32 aKOff = (u32)(((wr * 16 + (lane & 15)) * SK + (lane >> 4) * 8) * 2);
  const u32 aVOff = (u32)(((wr * 16 + (lane & 15)) * SV + (lane >> 4) * 8) * 2);
  const u32 aPOff = (u32)(((wr * 16 + (lane & 15)) * SP + (lane >> 4) * 8) * 2);
  // B with n = query (Qᵀ, dOᵀ): rows 32wc.. of Q / dO, pairs of n-tiles.
  const u32 bQOff = (u32)(((wc * 32 + (lane >> 4) * 8 + (lane & 7)) * SK + ((lane >> 3) & 1) * 8) * 2);
  const u32 bOOff = (u32)(((wc * 32 + (lane >> 4) * 8 + (lane & 7)) * SV + ((lane >> 3) & 1) * 8) * 2);
  // B with k = query or key rows and n = columns (dO, Q of the half wc; K of the dQ part qc),
  // transposed: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) → b0, b1
  // of n-tile 2dp and of n-tile 2dp+1 (ldmatrix.trans of [k][n] rows gives thread (g, tig) the k pair
  // 2tig, 2tig+1 of column g: the B layout).
  const int bRow = ((lane >> 3) & 1) * 8 + (lane & 7), bCol = (lane >> 4) * 8;
  const u32 bOtOff = (u32)((bRow * SV + wc * DVH + bCol) * 2);
  const u32 bQtOff = (u32)((bRow * SK + wc * DKH + bCol) * 2);
  const u32 bKtOff = (u32)((bRow * SK + qc * DKQ + bCol) * 2);
  // A = dS (query rows 16qr.., k = key) read transposed from dSᵀ [key][query]: matrices (queries 0-7,
  // keys 0-7), (queries 8-15, keys 0-7), (queries 0-7, keys 8-15), (queries 8-15, keys 8-15) → a0..a3;
  // lane l gives key row ((l >> 4) & 1)·8 + (l & 7) at query column ((l >> 3) & 1)·8.
  const u32 aStOff = (u32)((((lane >> 4) * 8 + (lane & 7)) * SP + qr * 16 + ((lane >> 3) & 1) * 8) * 2);

  // Stage query tile m0 into buffer `buf`: Q and dO by cp.async, lse (log2 units) and D by plain stores.
  auto loadTile = [&](int m0, int buf) {
    load_rows<DK, SK, BM, THREADS>(sBase + OFF_Q + buf * Q_BYTES, qB + m0 * qLd, qLd, Tq - m0, Dk, tid);
    load_rows<DV, SV, BM, THREADS>(sBase + OFF_DO + buf * DO_BYTES, dOB + m0 * vLd, vLd, Tq - m0, Dv, tid);
    float* lseS = reinterpret_cast<float*>(smem + OFF_LSE + buf * ROW_BYTES);
    float* dSum = reinterpret_cast<float*>(smem + OFF_D + buf * ROW_BYTES);
    for (int i = tid; i < BM; i += THREADS) {
      const int qi = m0 + i;
      lseS[i] = qi < Tq ? lseB[qi] * LOG2E_F : 0.0f;
      dSum[i] = qi < Tq ? DB[qi] : 0.0f;
    }
  };

  const int iFirst = max(0, n0 - qStart);  // the first query that sees key n0
  const int mFirst = (iFirst / BM) * BM;
  if (mFirst < Tq) loadTile(mFirst, 0);
  cp_async_commit();  // K, V and the first query tile
  for (int m0 = mFirst, it = 0; m0 < Tq; m0 += BM, it++) {
    const int cur = it & 1;
    // One barrier opens the tile: it is in (every thread waited for its own copies), and every warp
    // is done with the previous tile, so its buffer, Pᵀ and dSᵀ may be overwritten.
    cp_async_wait<0>();
    __syncthreads();
    if (m0 + BM < Tq) loadTile(m0 + BM, cur ^ 1);
    cp_async_commit();
    const u32 sQ = sBase + OFF_Q + cur * Q_BYTES, sdO = sBase + OFF_DO + cur * DO_BYTES;
    const float* pLse = reinterpret_cast<const float*>(smem + OFF_LSE + cur * ROW_BYTES);
    const float* pD = reinterpret_cast<const float*>(smem + OFF_D + cur * ROW_BYTES);

    // Sᵀ = K Qᵀ: keys 16wr.. × queries 32wc.. (4 n-tiles).
    float st[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++) st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DK / 16; kk++) {
      u32 a[4];
      ldsm_x4(a, sK + aKOff + kk * 32);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        u32 bq[4];
        ldsm_x4(bq, sQ + bQOff + (u32)((np * 16 * SK + kk * 16) * 2));
        mma_bf16(st[2 * np], a, bq[0], bq[1]);
        mma_bf16(st[2 * np + 1], a, bq[2], bq[3]);
      }
    }

    // P = exp(scale·s − lse), masked, to shared memory as [key][query] BF16. Thread (g, tig) holds
    // keys kl = 16wr + g (+8) × queries il = 32wc + 8nt + 2tig (+1).
    const int kl0 = wr * 16 + g, il0 = wc * 32 + tig * 2;
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int j = n0 + kl0 + hh * 8;
        float pv[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int il = il0 + nt * 8 + e, qi = m0 + il;
          const bool ok = qi < Tq && j < Tk && j <= qStart + qi;
          pv[e] = ok ? exp2f(fmaf(st[nt][2 * hh + e], sl2, -pLse[il])) : 0.0f;
        }
        *reinterpret_cast<u32*>(pP + (kl0 + hh * 8) * SP + il0 + nt * 8) = pack_bf16(pv[0], pv[1]);
      }
    }

    // dPᵀ = V dOᵀ for the same keys × queries. Sᵀ is dead by now: only 16 accumulators live at a time
    // beside dK, dV (the register budget of 16 warps).
    float dpt[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++) dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DV / 16; kk++) {
      u32 a[4];
      ldsm_x4(a, sV + aVOff + kk * 32);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        u32 bo[4];
        ldsm_x4(bo, sdO + bOOff + (u32)((np * 16 * SV + kk * 16) * 2));
        mma_bf16(dpt[2 * np], a, bo[0], bo[1]);
        mma_bf16(dpt[2 * np + 1], a, bo[2], bo[3]);
      }
    }

    // dS = P (dP − D) to shared memory as [key][query] BF16, with P read back as this thread stored it
    // (its own writes: no barrier needed). P is the BF16 operand of dV as well; its rounding adds as much
    // error to dS as dS's own rounding to BF16.
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int at = (kl0 + hh * 8) * SP + il0 + nt * 8, il = il0 + nt * 8;
        const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(pP + at));
        *reinterpret_cast<u32*>(pdS + at) = pack_bf16(p.x * (dpt[nt][2 * hh] - pD[il]), p.y * (dpt[nt][2 * hh + 1] - pD[il + 1]));
      }
    }
    __syncthreads();

    // dV += Pᵀ dO and dK += dSᵀ Q for keys 16wr.., columns of half wc.
#pragma unroll
    for (int kk = 0; kk < BM / 16; kk++) {
      u32 ap[4], ads[4];
      ldsm_x4(ap, sP + aPOff + kk * 32);
      ldsm_x4(ads, sdS + aPOff + kk * 32);
#pragma unroll
      for (int dp = 0; dp < DVH / 16; dp++) {
        u32 bo[4];
        ldsm_x4_t(bo, sdO + bOtOff + (u32)((kk * 16 * SV + dp * 16) * 2));
        mma_bf16(dvAcc[2 * dp], ap, bo[0], bo[1]);
        mma_bf16(dvAcc[2 * dp + 1], ap, bo[2], bo[3]);
      }
#pragma unroll
      for (int dp = 0; dp < DKH / 16; dp++) {
        u32 bq[4];
        ldsm_x4_t(bq, sQ + bQtOff + (u32)((kk * 16 * SK + dp * 16) * 2));
        mma_bf16(dkAcc[2 * dp], ads, bq[0], bq[1]);
        mma_bf16(dkAcc[2 * dp + 1], ads, bq[2], bq[3]);
      }
    }

    // dQ += scale · dS K for queries 16qr.., columns of part qc; atomically into dqAcc.
    {
      float dq[DKQ / 8][4];
#pragma unroll
      for (int i = 0; i < DKQ / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        u32 a[4];
        ldsm_x4_t(a, sdS + aStOff + (u32)(kk * 16 * SP * 2));
#pragma unroll
        for (int dp = 0; dp < DKQ / 16; dp++) {
          u32 bk[4];
          ldsm_x4_t(bk, sK + bKtOff + (u32)((kk * 16 * SK + dp * 16) * 2));
          mma_bf16(dq[2 * dp], a, bk[0], bk[1]);
          mma_bf16(dq[2 * dp + 1], a, bk[2], bk[3]);
        }
      }
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int qi = m0 + qr * 16 + g + hh * 8;
        if (qi >= Tq) continue;
        float* row = dqAcc + (((i64)b * Tq + qi) * H + h) * Dk;
#pragma unroll
        for (int nt = 0; nt < DKQ / 8; nt++) {
          const int col = qc * DKQ + nt * 8 + tig * 2;
          if (col < Dk) red_add_f32x2(row + col, dq[nt][2 * hh] * scale, dq[nt][2 * hh + 1] * scale);
        }
      }
    }
  }
  cp_async_wait<0>();  // K and V when no query tile saw these keys

  // Store dK (times scale) and dV for keys 16wr.. (rows g, g+8), columns of half wc.
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int j = n0 + wr * 16 + g + hh * 8;
    if (j >= Tk) continue;
    const i64 kRow = (((i64)b * Tk + j) * H + h) * Dk;
    const i64 vRow = (((i64)b * Tk + j) * H + h) * Dv;
#pragma unroll
    for (int nt = 0; nt < DKH / 8; nt++) {
      const int col = wc * DKH + nt * 8 + tig * 2;
      if (col >= Dk) continue;
      const float x = dkAcc[nt][2 * hh] * scale, y = dkAcc[nt][2 * hh + 1] * scale;
      if (gradF32) *reinterpret_cast<float2*>(static_cast<float*>(dk) + kRow + col) = make_float2(x, y);
      else *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(dk) + kRow + col) = __floats2bfloat162_rn(x, y);
    }
#pragma unroll
    for (int nt = 0; nt < DVH / 8; nt++) {
      const int col = wc * DVH + nt * 8 + tig * 2;
      if (col >= Dv) continue;
      const float x = dvAcc[nt][2 * hh], y = dvAcc[nt][2 * hh + 1];
      if (gradF32) *reinterpret_cast<float2*>(static_cast<float*>(dv) + vRow + col) = make_float2(x, y);
      else *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(dv) + vRow + col) = __floats2bfloat162_rn(x, y);
    }
  }
}
