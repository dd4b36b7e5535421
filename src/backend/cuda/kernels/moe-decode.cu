// The routed experts of a few tokens straight from the routing (Backend.moeExpertsDirect): no
// permutation, so no per-expert counts on the host, and a decode step stays capturable.
//
//   moe_direct_up    act[s] = silu(W_gate[e] · x[s / K]) · (W_up[e] · x[s / K])   [N·K, I]
//   moe_direct_down  out[s] = W_down[e] · act[s]                                  [N·K, d]
// for every slot s = n·K + k with e = indices[s]; moe_combine (moe.cu, through moeUnpermute with the
// slots in their own order) then sums each token's K rows weighted, in slot order.
//
// grid (min(E, N·K), ceil(rows / rowsPerBlock)): block x serves the x-th smallest expert that any
// slot chose (blocks past the number of chosen experts leave at once), and rows
// [y·rowsPerBlock, (y + 1)·rowsPerBlock) of its output. It lists the slots that chose its expert in
// shared memory; each warp then takes output rows and reads each weight row once for up to
// SLOT_CHUNK of those slots at a time (lanes over the columns, FP32 sums, a warp reduction).
// Weights: per projection a table of E device addresses (u64) of row-major matrices of type W.
// BF16 activations with FP32 weights (master weights) round each weight to BF16 as it is read, as
// the permuted path's GEMM reads their BF16 copies; gate and up are rounded to the activation type
// before the SwiGLU, as the permuted path stores them. Dynamic shared memory: (E + N·K) ints.
#include "common.cuh"

namespace moe_direct {
constexpr int WARPS = 8;
constexpr int SLOT_CHUNK = 8;
}  // namespace moe_direct

/** A weight w stored as W, as the GEMM of activation type T sees it: FP32 weights rounded to BF16 for BF16 activations. */
template <typename T, typename W> __device__ __forceinline__ float as_weight(float w) { return w; }
template <> __device__ __forceinline__ float as_weight<bf16, float>(float w) { return __bfloat162float(__float2bfloat16_rn(w)); }

/** Eight consecutive elements at a 16-byte aligned address, as floats. */
__device__ __forceinline__ void load8(const bf16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const bf16* e = reinterpret_cast<const bf16*>(&u);
#pragma unroll
  for (int j = 0; j < 8; j++) v[j] = to_float(e[j]);
}
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

/**
 * The expert of this block — the blockIdx.x-th smallest one that some of the `slots` entries of
 * `indices` chose, or −1 when fewer were chosen — with the slots that chose it in `slotList` and
 * their number in `count`. Shared scratch: flags [E], slotList [slots]. Every thread gets the same.
 */
__device__ __forceinline__ int block_expert(const int* __restrict__ indices, int slots, int E, int* flags, int* slotList, int& count) {
  __shared__ int chosen, listed;
  for (int e = threadIdx.x; e < E; e += blockDim.x) flags[e] = 0;
  if (threadIdx.x == 0) chosen = -1, listed = 0;
  __syncthreads();
  for (int s = threadIdx.x; s < slots; s += blockDim.x) {
    const int e = indices[s];
    if (e >= 0 && e < E) flags[e] = 1;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    // warp 0 walks the flags 32 at a time, counting the chosen experts before this block's
    const int lane = threadIdx.x;
    int before = blockIdx.x;
    for (int base = 0; base < E; base += 32) {
      const bool set = base + lane < E && flags[base + lane];
      const unsigned ballot = __ballot_sync(FULL_MASK, set);
      if (before < __popc(ballot)) {
        if (set && __popc(ballot & ((1u << lane) - 1u)) == before) chosen = base + lane;
        break;
      }
      before -= __popc(ballot);
    }
  }
  __syncthreads();
  const int e = chosen;
  if (e >= 0) {
    // the order of the list does not matter: each slot's output is computed on its own
    for (int s = threadIdx.x; s < slots; s += blockDim.x) {
      if (indices[s] == e) slotList[atomicAdd(&listed, 1)] = s;
    }
  }
  __syncthreads();
  count = listed;
  return e;
}

/**
 * out[s, r] for the slots s of this block's expert and its rows r: the dot products of row r of
 * matrix A (and of B when GATED) [rows, cols] with the input row in[s / inDiv] [cols]; GATED writes
 * silu(A·x) · (B·x), else A·x.
 */
template <typename T, typename W, bool GATED>
__device__ __forceinline__ void moe_direct_impl(const T* __restrict__ in, int inDiv, const int* __restrict__ indices, int slots, int E,
                                                const u64* __restrict__ tableA, const u64* __restrict__ tableB, T* __restrict__ out, int rows,
                                                int cols, int rowsPerBlock) {
  using namespace moe_direct;
  extern __shared__ int moeDirectShared[];
  int m;
  const int e = block_expert(indices, slots, E, moeDirectShared, moeDirectShared + E, m);
  if (e < 0) return;  // the whole block: fewer experts were chosen
  const int* slotList = moeDirectShared + E;
  const W* A = reinterpret_cast<const W*>(tableA[e]);
  const W* B = GATED ? reinterpret_cast<const W*>(tableB[e]) : A;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool vec = cols % 8 == 0 && aligned16(A) && aligned16(B) && aligned16(in);
  const int rowEnd = min(rows, (blockIdx.y + 1) * rowsPerBlock);
  for (int r = blockIdx.y * rowsPerBlock + warp; r < rowEnd; r += WARPS) {
    const W* a = A + (i64)r * cols;
    const W* b = B + (i64)r * cols;
    for (int c0 = 0; c0 < m; c0 += SLOT_CHUNK) {
      const int mc = min(SLOT_CHUNK, m - c0);
      const T* x[SLOT_CHUNK];
      float sa[SLOT_CHUNK], sb[SLOT_CHUNK];
#pragma unroll
      for (int j = 0; j < SLOT_CHUNK; j++) {
        x[j] = in + (i64)(slotList[c0 + min(j, mc - 1)] / inDiv) * cols;
        sa[j] = sb[j] = 0.0f;
      }
      if (vec) {
        for (int c = lane * 8; c < cols; c += 32 * 8) {
          float wa[8], wb[8], xv[8];
          load8(a + c, wa);
          if (GATED) load8(b + c, wb);
#pragma unroll
          for (int q = 0; q < 8; q++) {
            wa[q] = as_weight<T, W>(wa[q]);
            if (GATED) wb[q] = as_weight<T, W>(wb[q]);
          }
#pragma unroll
          for (int j = 0; j < SLOT_CHUNK; j++) {
            if (j >= mc) break;
            load8(x[j] + c, xv);
#pragma unroll
            for (int q = 0; q < 8; q++) {
              sa[j] = fmaf(wa[q], xv[q], sa[j]);
              if (GATED) sb[j] = fmaf(wb[q], xv[q], sb[j]);
            }
          }
        }
      } else {
        for (int c = lane; c < cols; c += 32) {
          const float wa = as_weight<T, W>(to_float(a[c])), wb = GATED ? as_weight<T, W>(to_float(b[c])) : 0.0f;
#pragma unroll
          for (int j = 0; j < SLOT_CHUNK; j++) {
            if (j >= mc) break;
            const float xv = to_float(x[j][c]);
            sa[j] = fmaf(wa, xv, sa[j]);
            if (GATED) sb[j] = fmaf(wb, xv, sb[j]);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < SLOT_CHUNK; j++) {
        if (j >= mc) break;
        const float va = warp_sum(sa[j]);
        const float vb = GATED ? warp_sum(sb[j]) : 0.0f;
        if (lane == 0) {
          float y = va;
          if (GATED) {
            const float g = to_float(from_float<T>(va)), u = to_float(from_float<T>(vb));
            y = g / (1.0f + expf(-g)) * u;
          }
          out[(i64)slotList[c0 + j] * rows + r] = from_float<T>(y);
        }
      }
    }
  }
}

// x [N, d], indices [N·K], gate and up tables (E addresses of [I, d]) → act [N·K, I]
extern "C" __global__ void moe_direct_up_bf16_bf16w(const bf16* x, const int* indices, const u64* gateTable, const u64* upTable, bf16* act, int slots,
                                                    int K, int E, int I, int d, int rowsPerBlock) {
  moe_direct_impl<bf16, bf16, true>(x, K, indices, slots, E, gateTable, upTable, act, I, d, rowsPerBlock);
}
extern "C" __global__ void moe_direct_up_bf16_f32w(const bf16* x, const int* indices, const u64* gateTable, const u64* upTable, bf16* act, int slots,
                                                   int K, int E, int I, int d, int rowsPerBlock) {
  moe_direct_impl<bf16, float, true>(x, K, indices, slots, E, gateTable, upTable, act, I, d, rowsPerBlock);
}
extern "C" __global__ void moe_direct_up_f32_f32w(const float* x, const int* indices, const u64* gateTable, const u64* upTable, float* act, int slots,
                                                  int K, int E, int I, int d, int rowsPerBlock) {
  moe_direct_impl<float, float, true>(x, K, indices, slots, E, gateTable, upTable, act, I, d, rowsPerBlock);
}

// act [N·K, I], indices [N·K], down table (E addresses of [d, I]) → out [N·K, d]
extern "C" __global__ void moe_direct_down_bf16_bf16w(const bf16* act, const int* indices, const u64* downTable, bf16* out, int slots, int E, int d,
                                                      int I, int rowsPerBlock) {
  moe_direct_impl<bf16, bf16, false>(act, 1, indices, slots, E, downTable, downTable, out, d, I, rowsPerBlock);
}
extern "C" __global__ void moe_direct_down_bf16_f32w(const bf16* act, const int* indices, const u64* downTable, bf16* out, int slots, int E, int d,
                                                     int I, int rowsPerBlock) {
  moe_direct_impl<bf16, float, false>(act, 1, indices, slots, E, downTable, downTable, out, d, I, rowsPerBlock);
}
extern "C" __global__ void moe_direct_down_f32_f32w(const float* act, const int* indices, const u64* downTable, float* out, int slots, int E, int d,
                                                    int I, int rowsPerBlock) {
  moe_direct_impl<float, float, false>(act, 1, indices, slots, E, downTable, downTable, out, d, I, rowsPerBlock);
}
