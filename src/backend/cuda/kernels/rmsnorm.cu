// RMSNorm over the last dimension: y = x · w / sqrt(mean(x²) + eps), statistics in FP32.
// A block per row (ops.ts's launch); the weight may be stored in another type than x (FP32
// master weights beside BF16 activations).
//
// The row is read from memory once: when d is a multiple of the 16-byte vector width and the
// pointers are aligned (always true for d % 8 == 0 on pool allocations), warps load the row's
// vectors into registers, up to ROW_VECTORS per thread, every load issued before the sum of
// squares, and scale them from registers afterwards; the weight's matching slice comes with
// vector loads (it stays in L1/L2: every row reads it). A block holds as many rows at once as its
// warps allow (rmsnorm_rows_in_registers), so the bytes in flight per SM do not depend on how wide
// the launcher makes the blocks: with blocks of one thread per vector (896 threads for BF16 rows
// of 7168), 4 rows per block and 2 blocks per SM; with blocks of one thread per ROW_VECTORS
// vectors (224 threads), 1 row per block and 9 blocks per SM. Rows longer than the block can hold,
// unaligned rows, d % vector width ≠ 0 and grids smaller than the row count take a two-pass loop
// (x read twice, the second time mostly from L1/L2).
#include "common.cuh"

#define ROW_VECTORS 4

// At most 32 registers per thread, so that two blocks of up to 1024 threads share an SM (the
// launcher's blocks are up to 1024 threads wide); ptxas then spills one register (4 bytes) and
// no more. Only for the CUDA compilers: the CPU emulator compiles this file as host C++.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define RMSNORM_BOUNDS __launch_bounds__(1024, 2)
#else
#define RMSNORM_BOUNDS
#endif

/** The V weights w[i·V …] as floats: 16- or 32-byte vector loads when w is 16-byte aligned. */
template <typename W, int V>
__device__ __forceinline__ void load_weights(const W* __restrict__ w, int i, bool wvec, float* out) {
  const W* p = w + (i64)i * V;
  if (wvec) {
    constexpr int PER = 16 / sizeof(W);  // elements of W per 16-byte load
    static_assert(V % PER == 0, "the weight slice of a vector must be whole 16-byte loads");
#pragma unroll
    for (int k = 0; k < V / PER; k++) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[k];
      const W* e = reinterpret_cast<const W*>(&raw);
#pragma unroll
      for (int j = 0; j < PER; j++) out[k * PER + j] = to_float(e[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) out[j] = to_float(p[j]);
  }
}

/**
 * ss + the squares of a vector's elements, in order. BF16 is widened by bit operations here and by
 * __bfloat162float (cvt) in the scaling pass: two different expressions, so that the compiler does
 * not keep the widened floats (twice the registers) alive across the reduction in place of the
 * raw vector.
 */
__device__ __forceinline__ float add_squares(const uint4& raw, float ss, const float*) {
  const float e[4] = {__int_as_float((int)raw.x), __int_as_float((int)raw.y), __int_as_float((int)raw.z), __int_as_float((int)raw.w)};
#pragma unroll
  for (int j = 0; j < 4; j++) ss = fmaf(e[j], e[j], ss);
  return ss;
}

__device__ __forceinline__ float add_squares(const uint4& raw, float ss, const bf16*) {
  const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float lo = __int_as_float((int)(words[j] << 16)), hi = __int_as_float((int)(words[j] & 0xffff0000u));
    ss = fmaf(lo, lo, ss);
    ss = fmaf(hi, hi, ss);
  }
  return ss;
}

/**
 * Rows held in registers, R vectors per thread, when a row needs at most all the block's warps:
 * a row takes `rowWarps` = ceil(d / (32·V·R)) warps, and a block whose blockDim holds G =
 * ⌊warps / rowWarps⌋ such groups normalises G consecutive rows at once. The launch gives one block
 * per row, so only every G-th block works (on the G rows from its index) and the others return
 * at once; this is what puts G rows per block in flight when the launcher's blocks are wider than
 * a row needs (one thread per vector). Within a row, warp w takes the 32·R consecutive vectors from
 * 32·R·w, lane l those 32 apart from l: every warp access covers 512 contiguous bytes, and one
 * base address per array serves all R vectors (constant offsets), which keeps the kernel within
 * 32 registers. Sum of squares: per thread in vector order, per warp by butterfly shuffles, then
 * the row's warps in order through shared memory.
 */
template <int R, typename T, typename W>
__device__ __forceinline__ void rmsnorm_rows_in_registers(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y, int rows, int d, float eps,
                                                          bool wvec) {
  constexpr int V = Vec<T>::N;
  __shared__ float warpSums[32];
  const int nv = d / V;
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const int rowWarps = (nv + 32 * R - 1) / (32 * R);
  const int G = (int)(blockDim.x >> 5) / rowWarps;          // rows per block (≥ 1: the caller checks)
  if (blockIdx.x % G != 0) return;                          // uniform over the block
  const int slot = warp / rowWarps;                          // this warp's row in the group (≥ G: idle)
  const int first = (warp - slot * rowWarps) * (32 * R) + lane;
  const unsigned row = (blockIdx.x / G) * G + slot;         // a block per row: row < rows + 32 ≤ 2^32
  const bool active = slot < G && row < (unsigned)rows;
  const uint4* x4 = reinterpret_cast<const uint4*>(x + (i64)row * d);
  uint4 raw[R];
#pragma unroll
  for (int k = 0; k < R; k++) {
    const int i = first + 32 * k;
    if (active && i < nv) raw[k] = x4[i];
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < R; k++) {
    const int i = first + 32 * k;
    if (active && i < nv) ss = add_squares(raw[k], ss, x);
  }
  ss = warp_sum(ss);
  if (lane == 0) warpSums[warp] = ss;
  __syncthreads();
  if (!active) return;
  float total = 0.0f;
  for (int k = 0; k < rowWarps; k++) total += warpSums[slot * rowWarps + k];
  const float r = rsqrtf(total / (float)d + eps);
  uint4* y4 = reinterpret_cast<uint4*>(y + (i64)row * d);
#pragma unroll
  for (int k = 0; k < R; k++) {
    const int i = first + 32 * k;
    if (i < nv) {
      float wv[V];
      load_weights<W, V>(w, i, wvec, wv);
      const T* e = reinterpret_cast<const T*>(&raw[k]);
      uint4 out;
      T* o = reinterpret_cast<T*>(&out);
#pragma unroll
      for (int j = 0; j < V; j++) o[j] = from_float<T>(to_float(e[j]) * r * wv[j]);
      y4[i] = out;
    }
  }
}

/** Any row: the sum of squares in one pass over x, the scaling in a second (vectors when vec). */
template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_row_two_pass(const T* __restrict__ xr, const W* __restrict__ w, T* __restrict__ yr, int d, float eps, bool vec,
                                                     bool wvec) {
  constexpr int V = Vec<T>::N;
  float ss = 0.0f;
  if (vec) {
    for (int i = threadIdx.x; i < d / V; i += blockDim.x) {
      uint4 vx = reinterpret_cast<const uint4*>(xr)[i];
      const T* ex = reinterpret_cast<const T*>(&vx);
#pragma unroll
      for (int j = 0; j < V; j++) {
        const float v = to_float(ex[j]);
        ss = fmaf(v, v, ss);
      }
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(xr[i]);
      ss = fmaf(v, v, ss);
    }
  }
  const float r = rsqrtf(block_sum(ss) / (float)d + eps);
  if (vec) {
    for (int i = threadIdx.x; i < d / V; i += blockDim.x) {
      uint4 vx = reinterpret_cast<const uint4*>(xr)[i];
      float wv[V];
      load_weights<W, V>(w, i, wvec, wv);
      uint4 vy;
      const T* ex = reinterpret_cast<const T*>(&vx);
      T* ey = reinterpret_cast<T*>(&vy);
#pragma unroll
      for (int j = 0; j < V; j++) ey[j] = from_float<T>(to_float(ex[j]) * r * wv[j]);
      reinterpret_cast<uint4*>(yr)[i] = vy;
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<T>(to_float(xr[i]) * r * to_float(w[i]));
  }
}

template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_impl(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y, int rows, int d, float eps) {
  constexpr int V = Vec<T>::N;
  const int nv = d / V;
  const bool wvec = aligned16(w);
  // Rows start d elements apart, so either every row is vector-aligned or none is. The path is
  // uniform over the block (both reduce over the block with __syncthreads).
  const bool vec = d % V == 0 && aligned16(x) && aligned16(y);
  // The register path serves a block per row (ops.ts's launch, whole warps; G rows per block); a
  // smaller grid takes the grid-stride two-pass loop.
  if (vec && blockDim.x % 32 == 0 && nv <= ROW_VECTORS * (int)blockDim.x && gridDim.x >= (unsigned)rows) {
    rmsnorm_rows_in_registers<ROW_VECTORS>(x, w, y, rows, d, eps, wvec);
  } else {
    for (int row = blockIdx.x; row < rows; row += gridDim.x) rmsnorm_row_two_pass(x + (i64)row * d, w, y + (i64)row * d, d, eps, vec, wvec);
  }
}

// The launch bounds sit on declarations, so that the definitions keep the plain form (no
// attribute between `void` and the name) that the kernel-table test parses.
extern "C" __global__ void RMSNORM_BOUNDS rmsnorm_bf16(const bf16* x, const bf16* w, bf16* y, int rows, int d, float eps);
extern "C" __global__ void RMSNORM_BOUNDS rmsnorm_f32(const float* x, const float* w, float* y, int rows, int d, float eps);
extern "C" __global__ void RMSNORM_BOUNDS rmsnorm_bf16_f32w(const bf16* x, const float* w, bf16* y, int rows, int d, float eps);

extern "C" __global__ void rmsnorm_bf16(const bf16* x, const bf16* w, bf16* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
extern "C" __global__ void rmsnorm_f32(const float* x, const float* w, float* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
extern "C" __global__ void rmsnorm_bf16_f32w(const bf16* x, const float* w, bf16* y, int rows, int d, float eps) { rmsnorm_impl(x, w, y, rows, d, eps); }
