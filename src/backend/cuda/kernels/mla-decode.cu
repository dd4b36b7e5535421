// Absorbed MLA attention over the latent cache on tensor cores (Backend.mlaLatentAttention):
//
//   qLat [B, Tq, H, C], qPe [B, Tq, H, R], ckv [B, S, C], kpe [B, S, R] (BF16; first kvLen of S valid)
//   score(i, j) = (qLat_i·ckv_j + qPe_i·kpe_j)·scale, causal (token t of batch row b sits at
//   positions[b·Tq + t] when `positions` is given, else at qStart + t, and sees positions j up to
//   its own, j < kvLen), out_i = Σ_j p_ij ckv_j → out [B, Tq, H, C] (BF16).
// Positions read on the device let a captured decode step run unchanged at every position: the
// host then passes kvLen = S, and the splits past a row's position find nothing to do.
//
// Every head attends to the same latent rows, so the (token, head) pairs of one batch row form a
// [Tq·H, ·] matrix of queries against one shared key/value matrix (multi-query attention with key
// width C + R and value width C). A block takes 16·MLA_MT of those rows and reads each cache row once
// for all of them: the key tile [ckv ; kpe] (64 positions × (C + R)) is staged in shared memory
// (double-buffered with cp.async) and its first C columns serve as the value tile too.
//
// 8 warps (256 threads) per block:
//   - S = Q Kᵀ: warp w scores positions 8w..8w+7 of the tile for all rows (mma.sync m16n8k16);
//   - the row max is reduced across warps through shared memory, every warp then applies the same
//     online-softmax update, writes its P columns (BF16) to shared memory and keeps its share of the
//     row sums;
//   - O += P V: warp w accumulates output column pairs w, w + 8, … (16 columns each) over the tile.
// Split-K (flash-decoding): grid.y splits the visible positions into ranges of `tilesPerSplit` tiles.
// With one split the block normalises and writes `out` itself; with several it writes its normalised
// partial output (FP32) and log2-sum-exp, and mla_decode_combine merges them.
//
// Compile-time sizes: MLA_C (multiple of 16), MLA_R (multiple of 8), MLA_MT ∈ {1, 2} (m16 row tiles per
// block); the host compiles one module per (C, R, MT) (flash-attention.ts passes the -D options).
#include "flash-common.cuh"

#ifndef MLA_C
#define MLA_C 512
#endif
#ifndef MLA_R
#define MLA_R 64
#endif
#ifndef MLA_MT
#define MLA_MT 1
#endif

static_assert(MLA_C % 16 == 0 && MLA_C >= 16, "MLA_C: a multiple of 16");
static_assert(MLA_R % 8 == 0 && MLA_R >= 0, "MLA_R: a multiple of 8");
static_assert(MLA_MT >= 1 && MLA_MT <= 2, "MLA_MT: 1 or 2");

/** Two 8×8 matrices (ldmatrix .x2), the b0, b1 of one m16n8k16 B fragment. */
__device__ __forceinline__ void ldsm_x2(u32 (&r)[2], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
}

namespace mla {
constexpr int C = MLA_C, R = MLA_R, MT = MLA_MT;
constexpr int DK = (C + R + 15) / 16 * 16;  // score width, padded with zero columns
constexpr int SK = DK + 8;                  // shared row stride (elements)
constexpr int MR = 16 * MT;                 // query rows per block
constexpr int BN = 64, WARPS = 8, THREADS = 32 * WARPS;
constexpr int SP = BN + 8;
constexpr int CP = C / 16;                       // output column pairs (16 columns)
constexpr int CPW = (CP + WARPS - 1) / WARPS;    // column pairs per warp (at most)
// Shared layout (bytes): Q, two K tiles, P, per-warp row maxima, per-warp row sums.
constexpr int OFF_Q = 0;
constexpr int OFF_K = OFF_Q + MR * SK * 2;
constexpr int OFF_P = OFF_K + 2 * BN * SK * 2;
constexpr int OFF_MAX = OFF_P + MR * SP * 2;
constexpr int OFF_SUM = OFF_MAX + WARPS * MR * 4;
constexpr int SHARED_BYTES = OFF_SUM + WARPS * MR * 4;
static_assert(SHARED_BYTES <= 227 * 1024, "shared memory beyond Hopper's per-block limit");
static_assert(BN == 8 * WARPS, "one key n-tile per warp");
}  // namespace mla

/** The position of token t of batch row b. */
__device__ __forceinline__ int query_position(const int* positions, int b, int Tq, int t, int qStart) {
  return positions ? positions[(i64)b * Tq + t] : qStart + t;
}

/**
 * Stage ROWS rows [a (C columns) ; p (R columns) ; 0 …] into shared rows of mla::SK elements:
 * rows ≥ rowsValid are zero-filled.
 */
template <int ROWS>
__device__ __forceinline__ void load_cat(u32 sAddr, const bf16* a, const bf16* p, int rowsValid, int tid) {
  using namespace mla;
  constexpr int CHA = C / 8, CHR = R / 8, CH = DK / 8;
#pragma unroll 4
  for (int idx = tid; idx < ROWS * CH; idx += THREADS) {
    const int r = idx / CH, c = idx - r * CH;
    const bf16* src = a;
    bool ok = r < rowsValid;
    if (c < CHA) src = a + (i64)r * C + c * 8;
    else if (c < CHA + CHR) src = p + (i64)r * R + (c - CHA) * 8;
    else ok = false;
    cp_async16(sAddr + (u32)((r * SK + c * 8) * 2), ok ? src : a, ok);
  }
}

/**
 * grid (ceil(Tq·H / (16·MLA_MT)), splits, B), 256 threads, mla::SHARED_BYTES of dynamic shared memory;
 * positions [B·Tq] i32 or null (then token t sits at qStart + t).
 * One split (gridDim.y == 1): writes out. Several: oPart [splits, B·Tq·H, C] FP32 (normalised
 * partial outputs) and lsePart [splits, B·Tq·H] (log2 of the partial sums of 2^(scale·log2e·s)),
 * −inf where the split saw no position; mla_decode_combine then writes out.
 */
extern "C" __global__ void mla_decode(const bf16* qLat, const bf16* qPe, const bf16* ckv, const bf16* kpe, const int* positions, bf16* out,
                                      float* oPart, float* lsePart, int Tq, int H, int S, int kvLen, int qStart, int tilesPerSplit, float scale) {
  using namespace mla;
  extern __shared__ __align__(16) unsigned char smem[];
  const u32 sBase = smem_u32(smem);
  const u32 sQ = sBase + OFF_Q, sK0 = sBase + OFF_K, sP = sBase + OFF_P;
  bf16* pP = reinterpret_cast<bf16*>(smem + OFF_P);
  float* pMax = reinterpret_cast<float*>(smem + OFF_MAX);
  float* pSum = reinterpret_cast<float*>(smem + OFF_SUM);

  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int rows = Tq * H;
  const int r0 = blockIdx.x * MR, split = blockIdx.y, b = blockIdx.z;
  const int splits = gridDim.y, B = gridDim.z;
  int seen = 0;  // positions any row of the block sees
  for (int t = r0 / H; t <= (min(rows, r0 + MR) - 1) / H; t++) seen = max(seen, query_position(positions, b, Tq, t, qStart) + 1);
  const int blockEnd = min(kvLen, seen);
  const int kBeg = split * tilesPerSplit * BN;
  const int kEnd = min(blockEnd, kBeg + tilesPerSplit * BN);
  const int nTiles = kEnd > kBeg ? (kEnd - kBeg + BN - 1) / BN : 0;
  const bf16* ckvB = ckv + (i64)b * S * C;
  const bf16* kpeB = kpe + (i64)b * S * R;

  load_cat<MR>(sQ, qLat + ((i64)b * rows + r0) * C, qPe + ((i64)b * rows + r0) * R, rows - r0, tid);
  if (nTiles > 0) load_cat<BN>(sK0, ckvB + (i64)kBeg * C, kpeB + (i64)kBeg * R, kEnd - kBeg, tid);
  cp_async_commit();

  float o[MT][2 * CPW][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int i = 0; i < 2 * CPW; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
  float mr[MT][2], lr[MT][2];
  int lastKey[MT][2];  // the last position row (mt, g + 8hh) sees
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      mr[mt][hh] = NEG_INF;
      lr[mt][hh] = 0.0f;
      lastKey[mt][hh] = query_position(positions, b, Tq, min((r0 + mt * 16 + g + hh * 8) / H, Tq - 1), qStart);
    }
  const float sl2 = scale * LOG2E_F;

  // ldmatrix per-lane byte offsets.
  const u32 aQOff = (u32)(((lane & 15) * SK + (lane >> 4) * 8) * 2);                         // A: Q rows
  const u32 bKOff = (u32)(((w * 8 + (lane & 7)) * SK + ((lane >> 3) & 1) * 8) * 2);          // B: keys 8w.. (x2)
  const u32 aPOff = (u32)(((lane & 15) * SP + (lane >> 4) * 8) * 2);                         // A: P rows
  const u32 bVOff = (u32)(((((lane >> 3) & 1) * 8 + (lane & 7)) * SK + (lane >> 4) * 8) * 2);  // B: V, transposed

  for (int t = 0; t < nTiles; t++) {
    const int k0 = kBeg + t * BN;
    if (t + 1 < nTiles) {
      const int k1 = k0 + BN;
      load_cat<BN>(sK0 + (u32)((t + 1) & 1) * (BN * SK * 2), ckvB + (i64)k1 * C, kpeB + (i64)k1 * R, kEnd - k1, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const u32 cK = sK0 + (u32)(t & 1) * (BN * SK * 2);

    // S for all rows × positions 8w..8w+7 of the tile.
    float s[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.0f;
#pragma unroll 4
    for (int kk = 0; kk < DK / 16; kk++) {
      u32 bk[2];
      ldsm_x2(bk, cK + bKOff + kk * 32);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        u32 a[4];
        ldsm_x4(a, sQ + aQOff + (u32)(mt * 16 * SK * 2) + kk * 32);
        mma_bf16(s[mt], a, bk[0], bk[1]);
      }
    }

    // Mask, scale to the log2 domain, per-warp row maxima → shared memory.
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int j = k0 + w * 8 + tig * 2 + e;
          const bool ok = j < kEnd && j <= lastKey[mt][hh];
          s[mt][2 * hh + e] = ok ? s[mt][2 * hh + e] * sl2 : NEG_INF;
        }
        const float mx = quad_max(fmaxf(s[mt][2 * hh], s[mt][2 * hh + 1]));
        if (tig == 0) pMax[w * MR + mt * 16 + g + hh * 8] = mx;
      }
    }
    __syncthreads();

    // The same online-softmax update in every warp; P (BF16) → shared memory.
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int row = mt * 16 + g + hh * 8;
        float mx = mr[mt][hh];
#pragma unroll
        for (int ww = 0; ww < WARPS; ww++) mx = fmaxf(mx, pMax[ww * MR + row]);
        const float mUse = mx == NEG_INF ? 0.0f : mx;
        const float alpha = exp2f(mr[mt][hh] - mUse);
        mr[mt][hh] = mx;
        const float p0 = exp2f(s[mt][2 * hh] - mUse), p1 = exp2f(s[mt][2 * hh + 1] - mUse);
        lr[mt][hh] = lr[mt][hh] * alpha + p0 + p1;
#pragma unroll
        for (int i = 0; i < 2 * CPW; i++) {
          o[mt][i][2 * hh] *= alpha;
          o[mt][i][2 * hh + 1] *= alpha;
        }
        *reinterpret_cast<u32*>(pP + row * SP + w * 8 + tig * 2) = pack_bf16(p0, p1);
      }
    }
    __syncthreads();

    // O += P V over the tile's 64 positions, output column pairs w, w + 8, ….
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      u32 a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) ldsm_x4(a[mt], sP + aPOff + (u32)(mt * 16 * SP * 2) + kk * 32);
#pragma unroll
      for (int i = 0; i < CPW; i++) {
        const int cp = w + i * WARPS;
        if (cp < CP) {
          u32 bv[4];
          ldsm_x4_t(bv, cK + bVOff + (u32)((kk * 16 * SK + cp * 16) * 2));
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma_bf16(o[mt][2 * i], a[mt], bv[0], bv[1]);
            mma_bf16(o[mt][2 * i + 1], a[mt], bv[2], bv[3]);
          }
        }
      }
    }
    __syncthreads();  // the next tile overwrites this K buffer, P and the maxima
  }
  cp_async_wait<0>();

  // Row sums: quad, then across warps.
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const float l = quad_sum(lr[mt][hh]);
      if (tig == 0) pSum[w * MR + mt * 16 + g + hh * 8] = l;
    }
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int row = mt * 16 + g + hh * 8;
      const int r = r0 + row;
      if (r >= rows) continue;
      float l = 0.0f;
#pragma unroll
      for (int ww = 0; ww < WARPS; ww++) l += pSum[ww * MR + row];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const i64 orow = (i64)b * rows + r;
#pragma unroll
      for (int i = 0; i < CPW; i++) {
        const int cp = w + i * WARPS;
        if (cp >= CP) continue;
#pragma unroll
        for (int n = 0; n < 2; n++) {
          const int col = cp * 16 + n * 8 + tig * 2;
          const float x = o[mt][2 * i + n][2 * hh] * inv, y = o[mt][2 * i + n][2 * hh + 1] * inv;
          if (splits == 1) *reinterpret_cast<__nv_bfloat162*>(out + orow * C + col) = __floats2bfloat162_rn(x, y);
          else *reinterpret_cast<float2*>(oPart + ((i64)split * B * rows + orow) * C + col) = make_float2(x, y);
        }
      }
      if (splits > 1 && w == 0 && tig == 0) lsePart[(i64)split * B * rows + orow] = l > 0.0f ? mr[mt][hh] + log2f(l) : NEG_INF;
    }
  }
}

/**
 * out[row] = Σ_s 2^(lse_s − M) · oPart[s][row] / Σ_s 2^(lse_s − M), M = max_s lse_s, for rowsTotal rows
 * of C columns (0 where no split saw a position). One block per row.
 */
extern "C" __global__ void mla_decode_combine(const float* oPart, const float* lsePart, bf16* out, int splits, int rowsTotal, int C) {
  const i64 row = blockIdx.x;
  float M = NEG_INF;
  for (int s = 0; s < splits; s++) M = fmaxf(M, lsePart[(i64)s * rowsTotal + row]);
  float wsum = 0.0f;
  if (M != NEG_INF)
    for (int s = 0; s < splits; s++) wsum += exp2f(lsePart[(i64)s * rowsTotal + row] - M);
  const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    if (M != NEG_INF) {
      for (int s = 0; s < splits; s++) {
        const float ls = lsePart[(i64)s * rowsTotal + row];
        if (ls != NEG_INF) acc = fmaf(exp2f(ls - M), oPart[((i64)s * rowsTotal + row) * C + c], acc);
      }
    }
    out[row * C + c] = __float2bfloat16_rn(acc * inv);
  }
}
