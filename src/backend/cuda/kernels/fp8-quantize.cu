// FP8 E4M3 quantization with DeepSeek-V3's fine-grained scales (SPEC §5), bit-exact with the CPU
// emulation in src/fp8/quantize.ts:
//   scaleInv = float32(max(amax, 1e-12) / 448)    (max and quotient in double, as the emulation's JS numbers)
//            or the smallest 2^e with 448 · 2^e ≥ max(amax, 1e-12)   (the *_pow2_* kernels)
//   code     = e4m3(x / scaleInv)   x / scaleInv rounded to float32, then to E4M3 nearest-even, saturating at ±448
// The scales are written where cuBLASLt's block-scaled FP8 GEMM reads them (fp8-matmul.ts):
//   activations, 1×128 tiles (VEC128_32F):  scales[kb · scaleLd + m], M-major, scaleLd ≥ M (roundup(M, 4))
//   weights, 128×128 blocks (BLK128x128_32F): scales[nb · scaleLd + kb], K-major, scaleLd = roundup(ceil(K/128), 4)
// Inputs are row-major BF16 or FP32 [rows, K]; codes are row-major bytes [rows, K]. NaN inputs are
// not supported (the emulation spreads a NaN over its whole tile; here the tile's scale ignores it).
//
// Speed: both kernels stream at memory bandwidth, so the per-element work is kept small. The
// quotient x / scaleInv is not an IEEE division per element (a MUFU reciprocal, a refinement and a
// range check each) but one correctly rounded reciprocal per tile and a Markstein correction per
// element (div_by_scale), which yields the same float32 bits. Inputs stay in registers in their
// storage type (16 bytes per 8 BF16 values) between the amax pass and the quantization pass.
#include "common.cuh"

typedef unsigned char u8;
typedef unsigned int u32;

/** The dequantization multiplier of a tile whose largest magnitude is amax (fp8ScaleInv in quantize.ts). */
template <bool POW2>
__device__ __forceinline__ float fp8_scale_inv(float amax) {
  // max(amax, 1e-12) as the emulation takes it, on doubles: no float equals 1e-12 and 1e-12f is the
  // float just below it, so amax > 1e-12f exactly when the double amax exceeds the double 1e-12.
  // float32(double(amax) / 448) is the float32 quotient amax / 448: a double quotient rounded again
  // to float equals the directly rounded one (53 ≥ 2·24 + 2 bits), and amax / 448 ≥ 2.2e-15 is
  // normal; the float division is the cheaper of the two.
  if (!POW2) return amax > 1e-12f ? __fdiv_rn(amax, 448.0f) : (float)(1e-12 / 448.0);
  const double bounded = amax > 1e-12f ? (double)amax : 1e-12;
  if (bounded > 3.5e38) return (float)(bounded / 448.0);
  // The smallest 2^e with 448 · 2^e ≥ bounded; log2 only guesses, the exact products decide.
  int e = (int)ceil(log2(bounded / 448.0));
  while (448.0 * ldexp(1.0, e - 1) >= bounded) e--;
  while (448.0 * ldexp(1.0, e) < bounded) e++;
  return (float)ldexp(1.0, e);
}

/**
 * A tile's divisor s = scaleInv with what div_by_scale needs: y = 1/s correctly rounded, and whether
 * the reciprocal route applies (s finite; s is then a normal float in [2.2e-15, 7.6e35], so y is
 * normal too). An infinite s (an infinite input) takes the IEEE division, as before.
 */
struct Divisor {
  float s, y;
  bool fast;
};

__device__ __forceinline__ Divisor make_divisor(float s) {
  Divisor d;
  d.s = s;
  d.fast = __float_as_uint(s) < 0x7f800000u;  // s > 0: finite
  d.y = d.fast ? __frcp_rn(s) : 0.0f;
  return d;
}

/**
 * x / s rounded to float32 (what __fdiv_rn gives) from y = RN(1/s): q0 = RN(x·y) and the exact
 * residual s·q0 − x (one FMA) give q = RN(q0 − (s·q0 − x)·y), the correctly rounded quotient
 * (Markstein's correction). TWO_STEPS repeats the correction from q, which is then within one ulp
 * of x / s, the case Markstein's theorem covers; one step was checked exhaustively for every BF16
 * significand against every float32 divisor significand (and on 9·10^9 FP32 pairs), so the BF16
 * kernels take one step and the FP32 kernels two. Scaling x and s by powers of two scales every
 * intermediate alike, so significands cover all exponents as long as nothing is subnormal: with
 * s ≥ 2.2e-15, a quotient of at least 2^-11 (the smallest that can give a nonzero code) has a
 * residual ≈ |x|·2^-24 ≥ 2^-83, normal, and quotients below that give the code ±0 either way.
 * The residual is formed negated (s·q0 − x) so that x = −0 keeps its sign: q = −0, code 0x80.
 */
template <bool TWO_STEPS>
__device__ __forceinline__ float div_by_scale(float x, const Divisor& d) {
  if (!d.fast) return __fdiv_rn(x, d.s);
  const float q0 = __fmul_rn(x, d.y);
  float q = fmaf(-fmaf(d.s, q0, -x), d.y, q0);
  if (TWO_STEPS) q = fmaf(-fmaf(d.s, q, -x), d.y, q);
  return q;
}

/** E4M3 code of a float: nearest, ties to even, finite values beyond ±448 saturate (float32ToE4M3Bits). */
__device__ __forceinline__ u32 e4m3_code_soft(float x) {
  const u32 bits = __float_as_uint(x);
  const u32 sign = (bits >> 24) & 0x80u;
  const float a = fabsf(x);
  if (a != a) return 0x7fu;
  if (a >= 448.0f) return sign | 0x7eu;
  // code = (binade + 6) · 8 + round(a / 2^(binade − 3)); a carry into 16 moves to the next binade
  const int exponent = (int)((bits >> 23) & 0xffu) - 127;
  const int binade = exponent < -6 ? -6 : exponent;
  const float units = rintf(ldexpf(a, 3 - binade));
  const u32 code = (u32)((binade + 6) * 8) + (u32)units;
  return sign | (code < 0x7eu ? code : 0x7eu);
}

/** Two E4M3 codes in the low 16 bits: lo in bits 0–7, hi in bits 8–15 (byte order in memory). */
__device__ __forceinline__ u32 e4m3x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short r;
  // The first source lands in the upper byte.
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return (u32)r;
#else
  return e4m3_code_soft(lo) | (e4m3_code_soft(hi) << 8);
#endif
}

// ---- eight consecutive inputs, kept in their storage type ---------------------------------

/** Eight inputs as loaded: one 16-byte vector of BF16, two of FP32. */
template <typename T> struct Chunk;
template <> struct Chunk<bf16> {
  uint4 raw;
  __device__ __forceinline__ float at(int j) const { return __bfloat162float(reinterpret_cast<const bf16*>(&raw)[j]); }
  __device__ __forceinline__ void zero() { raw = make_uint4(0u, 0u, 0u, 0u); }
  __device__ __forceinline__ void load_vector(const bf16* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void set(int j, bf16 v) { reinterpret_cast<bf16*>(&raw)[j] = v; }
};
template <> struct Chunk<float> {
  float4 lo, hi;
  __device__ __forceinline__ float at(int j) const { return j < 4 ? (&lo.x)[j] : (&hi.x)[j - 4]; }
  __device__ __forceinline__ void zero() { lo = hi = make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
  __device__ __forceinline__ void load_vector(const float* p) {
    lo = reinterpret_cast<const float4*>(p)[0];
    hi = reinterpret_cast<const float4*>(p)[1];
  }
  __device__ __forceinline__ void set(int j, float v) {
    if (j < 4) (&lo.x)[j] = v;
    else (&hi.x)[j - 4] = v;
  }
};

/** The eight elements starting at column c0 of a row of K (zeros past the end); vec: 16-byte loads are safe. */
template <typename T>
__device__ __forceinline__ void load_chunk(const T* row, int c0, int K, bool vec, Chunk<T>& v) {
  if (vec && c0 + 8 <= K) {
    v.load_vector(row + c0);
  } else {
    v.zero();
#pragma unroll
    for (int j = 0; j < 8; j++) {
      if (c0 + j < K) v.set(j, row[c0 + j]);
    }
  }
}

/** The largest magnitude of the eight (NaNs ignored, as fmaxf does). */
__device__ __forceinline__ float max_abs8(const Chunk<float>& v) {
  float m = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(v.at(j)));
  return m;
}

// BF16 magnitudes compare as integers (sign bit cleared, NaN patterns above 0x7f80 dropped), so the
// amax pass converts nothing to float and the quantization pass alone does.
__device__ __forceinline__ float max_abs8(const Chunk<bf16>& v) {
  const u32 words[4] = {v.raw.x, v.raw.y, v.raw.z, v.raw.w};
  u32 m = 0u;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const u32 lo = words[i] & 0x7fffu, hi = (words[i] >> 16) & 0x7fffu;
    if (lo <= 0x7f80u && lo > m) m = lo;
    if (hi <= 0x7f80u && hi > m) m = hi;
  }
  return __int_as_float((int)(m << 16));
}

/** Eight consecutive codes of v / s as two little-endian words. */
template <typename T>
__device__ __forceinline__ uint2 quantize8(const Chunk<T>& v, const Divisor& d) {
  constexpr bool TWO = sizeof(T) == 4;
  float q[8];
#pragma unroll
  for (int j = 0; j < 8; j++) q[j] = div_by_scale<TWO>(v.at(j), d);
  uint2 out;
  out.x = e4m3x2(q[0], q[1]) | (e4m3x2(q[2], q[3]) << 16);
  out.y = e4m3x2(q[4], q[5]) | (e4m3x2(q[6], q[7]) << 16);
  return out;
}

__device__ __forceinline__ void store_chunk(u8* row, int c0, int K, bool vec, uint2 codes) {
  if (vec && c0 + 8 <= K) {
    *reinterpret_cast<uint2*>(row + c0) = codes;
  } else {
    const u8* bytes = reinterpret_cast<const u8*>(&codes);
    for (int j = 0; j < 8 && c0 + j < K; j++) row[c0 + j] = bytes[j];
  }
}

// ---- activations: 1×128 tiles -------------------------------------------------------------
// Half a warp per tile (16 lanes × 8 elements); tiles in row-major order, so a warp streams 512
// contiguous input bytes per tile pair. Each pass of a warp takes ACT_UNROLL tile pairs (a grid
// stride apart), issuing all their loads before any reduction: 4 × 16 bytes in flight per thread
// for BF16. A warp's two halves always run the same passes and every lane joins every shuffle
// (inactive tiles reduce zeros), which keeps the full-mask shuffles legal at any tile count.
#define ACT_UNROLL 4

template <typename T, bool POW2>
__device__ __forceinline__ void quantize_1x128_impl(const T* __restrict__ x, u8* __restrict__ codes, float* __restrict__ scales, int M, int K,
                                                     int scaleLd) {
  // The launcher guarantees M · ceil(K/128) < 2^31: 32-bit tile arithmetic.
  const int KB = (K + 127) / 128;
  const int tiles = M * KB;
  const int pairs = (tiles + 1) / 2;
  const int lane = threadIdx.x & 31;
  const int half = lane >> 4, sub = lane & 15;
  const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int warps = (int)((gridDim.x * blockDim.x) >> 5);
  const bool vec = K % 8 == 0 && aligned16(x) && (reinterpret_cast<u64>(codes) & 7) == 0;
  // This half-warp's tiles are t, t + step, t + 2·step, … (step = 2 · warps); its row m and tile
  // column kb follow t by additions (one division up front, none per tile).
  const u32 step = 2u * (u32)warps;
  const int dm = (int)(step / (u32)KB), dk = (int)(step % (u32)KB);
  u32 t = 2u * (u32)warp + (u32)half;  // unsigned: t may pass tiles (< 2^31) by a few steps
  int m = (int)(t / (u32)KB), kb = (int)(t % (u32)KB);
  for (int base = warp; base < pairs; base += ACT_UNROLL * warps) {
    Chunk<T> v[ACT_UNROLL];
    int mu[ACT_UNROLL], c0[ACT_UNROLL];
    bool active[ACT_UNROLL];
#pragma unroll
    for (int u = 0; u < ACT_UNROLL; u++) {
      active[u] = t < (u32)tiles;
      mu[u] = m;
      c0[u] = kb * 128 + sub * 8;
      if (active[u]) load_chunk(x + (i64)m * K, c0[u], K, vec, v[u]);
      else v[u].zero();
      t += step;
      m += dm;
      kb += dk;
      if (kb >= KB) {
        kb -= KB;
        m++;
      }
    }
    float amax[ACT_UNROLL];
#pragma unroll
    for (int u = 0; u < ACT_UNROLL; u++) amax[u] = max_abs8(v[u]);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
#pragma unroll
      for (int u = 0; u < ACT_UNROLL; u++) amax[u] = fmaxf(amax[u], __shfl_xor_sync(FULL_MASK, amax[u], o));
    }
#pragma unroll
    for (int u = 0; u < ACT_UNROLL; u++) {
      if (!active[u]) continue;
      const Divisor d = make_divisor(fp8_scale_inv<POW2>(amax[u]));
      if (sub == 0) scales[(i64)(c0[u] >> 7) * scaleLd + mu[u]] = d.s;
      if (c0[u] < K) store_chunk(codes + (i64)mu[u] * K, c0[u], K, vec, quantize8(v[u], d));
    }
  }
}

// Separate kernels for the power-of-two rule: its double-precision search costs registers that
// the plain rule's kernels, which must stream at full bandwidth, should not pay for.
#define ACT_KERNEL(name, T, POW2)                                                                                     \
  extern "C" __global__ void __launch_bounds__(256) name(const T* x, unsigned char* codes, float* scales, int M, int K, int scaleLd) { \
    quantize_1x128_impl<T, POW2>(x, codes, scales, M, K, scaleLd);                                                    \
  }
ACT_KERNEL(quantize_1x128_bf16, bf16, false)
ACT_KERNEL(quantize_1x128_f32, float, false)
ACT_KERNEL(quantize_1x128_pow2_bf16, bf16, true)
ACT_KERNEL(quantize_1x128_pow2_f32, float, true)

// ---- weights: 128×128 blocks --------------------------------------------------------------
// One block of 256 threads per 128×128 block, grid (ceil(K/128), ceil(N/128)). Thread t holds
// chunks t, t+256, … (row chunk/16, columns 8·(chunk%16) …): a warp reads two full 256-byte row
// segments per chunk, every thread issues its 8 loads (128 bytes of BF16) before the block's amax
// reduction, and the tile stays in registers in its storage type (32 registers for BF16) for the
// quantization, so four blocks fit an SM (128 KB of loads in flight) and one block's loads
// overlap another's quantization and stores.
#define BLOCK_THREADS 256
#define CHUNKS_PER_THREAD 8

template <typename T, bool POW2>
__device__ __forceinline__ void quantize_128x128_impl(const T* __restrict__ w, u8* __restrict__ codes, float* __restrict__ scales, int N, int K,
                                                       int scaleLd) {
  __shared__ float warpMax[BLOCK_THREADS / 32];
  const int kb = blockIdx.x, nb = blockIdx.y;
  const bool vec = K % 8 == 0 && aligned16(w) && (reinterpret_cast<u64>(codes) & 7) == 0;
  const int c0 = kb * 128 + (threadIdx.x & 15) * 8;
  const int row0 = nb * 128 + (threadIdx.x >> 4);
  Chunk<T> v[CHUNKS_PER_THREAD];
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) {
    const int row = row0 + i * (BLOCK_THREADS / 16);
    if (row < N) load_chunk(w + (i64)row * K, c0, K, vec, v[i]);
    else v[i].zero();
  }
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) amax = fmaxf(amax, max_abs8(v[i]));
  amax = warp_max(amax);
  if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warpMax[0];
#pragma unroll
  for (int i = 1; i < BLOCK_THREADS / 32; i++) amax = fmaxf(amax, warpMax[i]);
  const Divisor d = make_divisor(fp8_scale_inv<POW2>(amax));
  if (threadIdx.x == 0) scales[(i64)nb * scaleLd + kb] = d.s;
  if (c0 >= K) return;
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) {
    const int row = row0 + i * (BLOCK_THREADS / 16);
    if (row < N) store_chunk(codes + (i64)row * K, c0, K, vec, quantize8(v[i], d));
  }
}

// BF16 tiles (32 registers of data) are held to 64 registers per thread: four blocks per SM.
#define WEIGHT_KERNEL(name, T, POW2, MIN_BLOCKS)                                                                                              \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) name(const T* w, unsigned char* codes, float* scales, int N, int K, int scaleLd) { \
    quantize_128x128_impl<T, POW2>(w, codes, scales, N, K, scaleLd);                                                                           \
  }
WEIGHT_KERNEL(quantize_128x128_bf16, bf16, false, 4)
WEIGHT_KERNEL(quantize_128x128_f32, float, false, 2)
WEIGHT_KERNEL(quantize_128x128_pow2_bf16, bf16, true, 4)
WEIGHT_KERNEL(quantize_128x128_pow2_f32, float, true, 2)
