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
#include "common.cuh"

typedef unsigned char u8;
typedef unsigned int u32;

/** The dequantization multiplier of a tile whose largest magnitude is amax (fp8ScaleInv in quantize.ts). */
template <bool POW2>
__device__ __forceinline__ float fp8_scale_inv(float amax) {
  // max(amax, 1e-12) as the emulation takes it, on doubles: no float equals 1e-12 and 1e-12f is the
  // float just below it, so amax > 1e-12f exactly when the double amax exceeds the double 1e-12.
  if (!POW2) return amax > 1e-12f ? (float)((double)amax / 448.0) : (float)(1e-12 / 448.0);
  const double bounded = amax > 1e-12f ? (double)amax : 1e-12;
  if (bounded > 3.5e38) return (float)(bounded / 448.0);
  // The smallest 2^e with 448 · 2^e ≥ bounded; log2 only guesses, the exact products decide.
  int e = (int)ceil(log2(bounded / 448.0));
  while (448.0 * ldexp(1.0, e - 1) >= bounded) e--;
  while (448.0 * ldexp(1.0, e) < bounded) e++;
  return (float)ldexp(1.0, e);
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

/** Eight consecutive codes of v / s as two little-endian words. */
__device__ __forceinline__ uint2 quantize8(const float* v, float s) {
  uint2 out;
  out.x = e4m3x2(__fdiv_rn(v[0], s), __fdiv_rn(v[1], s)) | (e4m3x2(__fdiv_rn(v[2], s), __fdiv_rn(v[3], s)) << 16);
  out.y = e4m3x2(__fdiv_rn(v[4], s), __fdiv_rn(v[5], s)) | (e4m3x2(__fdiv_rn(v[6], s), __fdiv_rn(v[7], s)) << 16);
  return out;
}

__device__ __forceinline__ void load8(const bf16* p, float* v) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const bf16* e = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; j++) v[j] = __bfloat162float(e[j]);
}

__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

/** Eight elements starting at column c0 of a row of K (zeros past the end); vec: 16-byte loads are safe. */
template <typename T>
__device__ __forceinline__ void load_chunk(const T* row, int c0, int K, bool vec, float* v) {
  if (vec && c0 + 8 <= K) {
    load8(row + c0, v);
  } else {
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = c0 + j < K ? to_float(row[c0 + j]) : 0.0f;
  }
}

__device__ __forceinline__ void store_chunk(u8* row, int c0, int K, bool vec, uint2 codes) {
  if (vec && c0 + 8 <= K) {
    *reinterpret_cast<uint2*>(row + c0) = codes;
  } else {
    const u8* bytes = reinterpret_cast<const u8*>(&codes);
    for (int j = 0; j < 8 && c0 + j < K; j++) row[c0 + j] = bytes[j];
  }
}

__device__ __forceinline__ float max_abs8(const float* v) {
  float m = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(v[j]));
  return m;
}

// ---- activations: 1×128 tiles -------------------------------------------------------------
// Half a warp per tile (16 lanes × 8 elements); tiles in row-major order, so a warp streams 512
// contiguous input bytes. A warp's two halves always run the same number of iterations, which keeps
// the full-mask shuffles legal when the tile count is odd.
template <typename T, bool POW2>
__device__ __forceinline__ void quantize_1x128_impl(const T* __restrict__ x, u8* __restrict__ codes, float* __restrict__ scales, int M, int K,
                                                     int scaleLd) {
  // The launcher guarantees M · ceil(K/128) < 2^31: 32-bit tile arithmetic.
  const int KB = (K + 127) / 128;
  const int tiles = M * KB;
  const int lane = threadIdx.x & 31;
  const int half = lane >> 4, sub = lane & 15;
  const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int warps = (int)((gridDim.x * blockDim.x) >> 5);
  const bool vec = K % 8 == 0 && aligned16(x) && (reinterpret_cast<u64>(codes) & 7) == 0;
  for (int pair = warp; pair < (tiles + 1) / 2; pair += warps) {
    const int t = pair * 2 + half;
    const bool active = t < tiles;
    const int m = active ? t / KB : 0;
    const int kb = active ? t - m * KB : 0;
    const int c0 = kb * 128 + sub * 8;
    float v[8];
    if (active) {
      load_chunk(x + (i64)m * K, c0, K, vec, v);
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] = 0.0f;
    }
    float amax = max_abs8(v);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
    if (!active) continue;
    const float s = fp8_scale_inv<POW2>(amax);
    if (sub == 0) scales[(i64)kb * scaleLd + m] = s;
    if (c0 < K) store_chunk(codes + (i64)m * K, c0, K, vec, quantize8(v, s));
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
// chunks t, t+256, … (row chunk/16, columns 8·(chunk%16) …): 64 values in registers, read once.
#define BLOCK_THREADS 256
#define CHUNKS_PER_THREAD 8

template <typename T, bool POW2>
__device__ __forceinline__ void quantize_128x128_impl(const T* __restrict__ w, u8* __restrict__ codes, float* __restrict__ scales, int N, int K,
                                                       int scaleLd) {
  __shared__ float warpMax[BLOCK_THREADS / 32];
  const int kb = blockIdx.x, nb = blockIdx.y;
  const bool vec = K % 8 == 0 && aligned16(w) && (reinterpret_cast<u64>(codes) & 7) == 0;
  float v[CHUNKS_PER_THREAD][8];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) {
    const int chunk = threadIdx.x + i * BLOCK_THREADS;
    const int row = nb * 128 + (chunk >> 4);
    const int c0 = kb * 128 + (chunk & 15) * 8;
    if (row < N) {
      load_chunk(w + (i64)row * K, c0, K, vec, v[i]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) v[i][j] = 0.0f;
    }
    amax = fmaxf(amax, max_abs8(v[i]));
  }
  amax = warp_max(amax);
  if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warpMax[0];
#pragma unroll
  for (int i = 1; i < BLOCK_THREADS / 32; i++) amax = fmaxf(amax, warpMax[i]);
  const float s = fp8_scale_inv<POW2>(amax);
  if (threadIdx.x == 0) scales[(i64)nb * scaleLd + kb] = s;
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) {
    const int chunk = threadIdx.x + i * BLOCK_THREADS;
    const int row = nb * 128 + (chunk >> 4);
    const int c0 = kb * 128 + (chunk & 15) * 8;
    if (row < N && c0 < K) store_chunk(codes + (i64)row * K, c0, K, vec, quantize8(v[i], s));
  }
}

#define WEIGHT_KERNEL(name, T, POW2)                                                                                          \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) name(const T* w, unsigned char* codes, float* scales, int N, int K, int scaleLd) { \
    quantize_128x128_impl<T, POW2>(w, codes, scales, N, K, scaleLd);                                                              \
  }
WEIGHT_KERNEL(quantize_128x128_bf16, bf16, false)
WEIGHT_KERNEL(quantize_128x128_f32, float, false)
WEIGHT_KERNEL(quantize_128x128_pow2_bf16, bf16, true)
WEIGHT_KERNEL(quantize_128x128_pow2_f32, float, true)
