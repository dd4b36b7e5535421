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
// element (div_by_scale), which yields the same float32 bits; the scale amax / 448 itself is one
// Markstein step from a constant reciprocal (div448, checked against the division for every float).
// The finite-scale test that picks the reciprocal route is made once per tile, not per element.
// Inputs stay in registers in their storage type (16 bytes per 8 BF16 values) between the amax
// pass and the quantization pass.
#include "common.cuh"

typedef unsigned char u8;
typedef unsigned int u32;

/**
 * RN(a / 448) for finite a > 1e-12f without a division: q0 = RN(a·Y) with Y = RN(1/448), then one
 * Markstein correction q = RN(q0 − (448·q0 − a)·Y) (the residual exact in one FMA). Checked
 * against float32(double(a) / 448) for every float a in (1e-12f, FLT_MAX] (all 2^31 non-negative
 * patterns through +inf, with the rule around it as fp8_scale_inv applies it): no mismatch. Every
 * operation is an IEEE float operation and nothing is subnormal (a ≥ 2^-40, q ≥ 2^-49, a nonzero
 * residual ≥ 2^-72), so the check holds for the GPU as for the CPU that ran it.
 */
__device__ __forceinline__ float div448(float a) {
  const float Y = __int_as_float(0x3b124925);  // RN(1/448) = 0x1.24924ap-9
  const float q0 = __fmul_rn(a, Y);
  return fmaf(-fmaf(448.0f, q0, -a), Y, q0);
}

/** The dequantization multiplier of a tile whose largest magnitude is amax (fp8ScaleInv in quantize.ts). */
template <bool POW2>
__device__ __forceinline__ float fp8_scale_inv(float amax) {
  // max(amax, 1e-12) as the emulation takes it, on doubles: no float equals 1e-12 and 1e-12f is the
  // float just below it, so amax > 1e-12f exactly when the double amax exceeds the double 1e-12.
  // float32(double(amax) / 448) is the float32 quotient amax / 448: a double quotient rounded again
  // to float equals the directly rounded one (53 ≥ 2·24 + 2 bits), and amax / 448 ≥ 2.2e-15 is
  // normal; div448 gives that quotient (an infinite amax, from an infinite input, stays infinite).
  if (!POW2) return amax > 1e-12f ? (amax < __int_as_float(0x7f800000) ? div448(amax) : amax) : (float)(1e-12 / 448.0);
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
 * normal too). An infinite s (an infinite input) takes the IEEE division, as before; the caller
 * tests `fast` once per tile and quantizes the whole tile one way or the other.
 */
struct Divisor {
  float s, y;
  bool fast;
};

__device__ __forceinline__ Divisor make_divisor(float s) {
  Divisor d;
  d.s = s;
  d.fast = __float_as_uint(s) < 0x7f800000u;  // s > 0: finite
  d.y = __frcp_rn(s);                           // +0 for an infinite s, unused then
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
template <bool FAST, bool TWO_STEPS>
__device__ __forceinline__ float div_by_scale(float x, const Divisor& d) {
  if (!FAST) return __fdiv_rn(x, d.s);
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
  float m[4];
#pragma unroll
  for (int j = 0; j < 4; j++) m[j] = fmaxf(fabsf(v.at(2 * j)), fabsf(v.at(2 * j + 1)));
  return fmaxf(0.0f, fmaxf(fmaxf(m[0], m[1]), fmaxf(m[2], m[3])));
}

// BF16 magnitudes: pairs of magnitudes (sign bits cleared) combine in max.bf16x2, which like fmaxf
// returns the number when one side is NaN (a NaN only when both are); the final pair's halves then
// widen exactly to float. So the amax pass converts nothing per element.
__device__ __forceinline__ u32 max_bf16x2(u32 a, u32 b) {
  const __nv_bfloat162 r = __hmax2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<const u32*>(&r);
}

/** The larger magnitudes of two packed pairs, half by half. */
__device__ __forceinline__ u32 absmax_bf16x2(u32 a, u32 b) { return max_bf16x2(a & 0x7fff7fffu, b & 0x7fff7fffu); }

/** The float max of a word's two BF16 halves and 0: a half that is NaN (all its inputs were) drops out. */
__device__ __forceinline__ float max_halves(u32 w) {
  return fmaxf(0.0f, fmaxf(__int_as_float((int)(w << 16)), __int_as_float((int)(w & 0xffff0000u))));
}

__device__ __forceinline__ float max_abs8(const Chunk<bf16>& v) {
  return max_halves(max_bf16x2(absmax_bf16x2(v.raw.x, v.raw.y), absmax_bf16x2(v.raw.z, v.raw.w)));
}

/** The largest magnitude of sixteen (two chunks), NaNs ignored. */
__device__ __forceinline__ float max_abs16(const Chunk<float>& a, const Chunk<float>& b) { return fmaxf(max_abs8(a), max_abs8(b)); }
__device__ __forceinline__ float max_abs16(const Chunk<bf16>& a, const Chunk<bf16>& b) {
  const u32 x = max_bf16x2(absmax_bf16x2(a.raw.x, a.raw.y), absmax_bf16x2(a.raw.z, a.raw.w));
  const u32 y = max_bf16x2(absmax_bf16x2(b.raw.x, b.raw.y), absmax_bf16x2(b.raw.z, b.raw.w));
  return max_halves(max_bf16x2(x, y));
}

/** Eight consecutive codes of v / s as two little-endian words; FAST: s is finite (Divisor::fast). */
template <bool FAST, typename T>
__device__ __forceinline__ uint2 quantize8(const Chunk<T>& v, const Divisor& d) {
  constexpr bool TWO = sizeof(T) == 4;
  float q[8];
#pragma unroll
  for (int j = 0; j < 8; j++) q[j] = div_by_scale<FAST, TWO>(v.at(j), d);
  uint2 out;
  out.x = e4m3x2(q[0], q[1]) | (e4m3x2(q[2], q[3]) << 16);
  out.y = e4m3x2(q[4], q[5]) | (e4m3x2(q[6], q[7]) << 16);
  return out;
}

__device__ __forceinline__ void store_chunk(u8* row, int c0, int K, bool vec, uint2 codes) {
  if (vec && c0 + 8 <= K) {
    *reinterpret_cast<uint2*>(row + c0) = codes;
  } else {
    const u32 words[2] = {codes.x, codes.y};
    for (int j = 0; j < 8 && c0 + j < K; j++) row[c0 + j] = (u8)(words[j >> 2] >> (8 * (j & 3)));
  }
}

// ---- activations: 1×128 tiles -------------------------------------------------------------
// A warp quantizes a group of ACT_ROWS = 4 tiles at a time: one 128-column tile column of four
// consecutive rows, 8 lanes per tile (row m = m0 + lane / 8) and 16 elements per lane, the chunks
// at columns kb·128 + 8·(lane % 8) and 64 further, so every warp load takes four whole 128-byte
// lines of BF16. The per-tile work — three shuffles, the scale, a reciprocal — is shared by 16
// elements per lane, and a group's four scales are consecutive floats of the M-major scale layout
// (one 16-byte sector).
//
// Interior groups — four rows < M, a whole tile column, rows that allow 16-byte loads — are all but
// the edges. They are numbered band by band (g = band · (K / 128) + kb) and a warp takes g,
// g + warps, …, so neighbouring warps stream neighbouring tile columns of the same rows. Their
// loop is software-pipelined: a warp issues the two 16-byte loads per lane of its next group
// before it reduces and quantizes the current one (two register buffers used in turn), so its
// loads are in flight while it computes, and it has no bounds checks. The edge groups (a last
// partial band, a last partial tile column; every group when rows are unaligned) follow in an
// element-wise loop. Branches depend on the group only, the same for the whole warp, so every
// lane joins every shuffle.
#define ACT_ROWS 4

/** A lane's sixteen inputs of a group: the chunk at its column and the one 64 columns further. */
template <typename T> struct Lane16 {
  Chunk<T> a, b;
};

/** The largest magnitude of a lane's sixteen, reduced over its tile's 8 lanes. */
template <typename T>
__device__ __forceinline__ float tile_amax(const Lane16<T>& v) {
  float amax = max_abs16(v.a, v.b);
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
  return amax;
}

/** An edge group (band first row m0, tile column kb): element-wise loads, zeros past the ends, stores only inside. */
template <typename T, bool POW2>
__device__ __forceinline__ void act_edge_group(const T* __restrict__ x, u8* __restrict__ codes, float* __restrict__ scales, int M, int K, int scaleLd,
                                               bool vec, int m0, int kb) {
  const int lane = threadIdx.x & 31;
  const int m = m0 + (lane >> 3), c0 = kb * 128 + (lane & 7) * 8;
  Lane16<T> v;
  if (m < M) {
    load_chunk(x + (i64)m * K, c0, K, vec, v.a);
    load_chunk(x + (i64)m * K, c0 + 64, K, vec, v.b);
  } else {
    v.a.zero();
    v.b.zero();
  }
  const float amax = tile_amax(v);
  if (m >= M) return;
  const Divisor d = make_divisor(fp8_scale_inv<POW2>(amax));
  if ((lane & 7) == 0) scales[(i64)kb * scaleLd + m] = d.s;
  u8* row = codes + (i64)m * K;
  if (d.fast) {
    if (c0 < K) store_chunk(row, c0, K, vec, quantize8<true>(v.a, d));
    if (c0 + 64 < K) store_chunk(row, c0 + 64, K, vec, quantize8<true>(v.b, d));
  } else {
    if (c0 < K) store_chunk(row, c0, K, vec, quantize8<false>(v.a, d));
    if (c0 + 64 < K) store_chunk(row, c0 + 64, K, vec, quantize8<false>(v.b, d));
  }
}

/** An interior group held in v, the lane's codes at out and its tile's scale at scale (written by the tile's first lane). */
template <typename T, bool POW2>
__device__ __forceinline__ void act_interior_group(const Lane16<T>& v, u8* __restrict__ out, float* __restrict__ scale, bool firstLane) {
  const Divisor d = make_divisor(fp8_scale_inv<POW2>(tile_amax(v)));
  if (firstLane) *scale = d.s;
  if (d.fast) {
    *reinterpret_cast<uint2*>(out) = quantize8<true>(v.a, d);
    *reinterpret_cast<uint2*>(out + 64) = quantize8<true>(v.b, d);
  } else {
    *reinterpret_cast<uint2*>(out) = quantize8<false>(v.a, d);
    *reinterpret_cast<uint2*>(out + 64) = quantize8<false>(v.b, d);
  }
}

/** A lane's place in the interior walk: element offset of its first chunk, and scale index, with the band row and tile column. */
struct ActPos {
  i64 off, sidx;
  int kb;
};

/** The fixed grid stride of the interior walk as increments of an ActPos (a tile column past the last wraps to the next band). */
struct ActStep {
  i64 doff, dsidx, wrapOff, wrapSidx;
  int dk, KB;
  __device__ __forceinline__ void advance(ActPos& p) const {
    p.off += doff;
    p.sidx += dsidx;
    p.kb += dk;
    if (p.kb >= KB) {
      p.kb -= KB;
      p.off += wrapOff;
      p.sidx += wrapSidx;
    }
  }
};

template <typename T>
__device__ __forceinline__ void act_load(const T* __restrict__ x, i64 off, Lane16<T>& v) {
  v.a.load_vector(x + off);
  v.b.load_vector(x + off + 64);
}

template <typename T, bool POW2>
__device__ __forceinline__ void quantize_1x128_impl(const T* __restrict__ x, u8* __restrict__ codes, float* __restrict__ scales, int M, int K,
                                                     int scaleLd) {
  // The launcher guarantees M · ceil(K/128) < 2^31, so group counts < 2^31 too: 32-bit arithmetic.
  const int lane = threadIdx.x & 31;
  const int row = lane >> 3, sub = lane & 7;
  const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int warps = (int)((gridDim.x * blockDim.x) >> 5);
  const bool vec = K % 8 == 0 && aligned16(x) && (reinterpret_cast<u64>(codes) & 7) == 0;
  const int KB = (K + 127) / 128;
  const int bands = vec ? M / ACT_ROWS : 0, KBi = K / 128;  // interior bands and tile columns
  const int interior = bands * KBi;
  if (interior > 0) {
    // Group g: rows ACT_ROWS·(g / KBi) + [0, ACT_ROWS), tile column g % KBi. A lane's position follows
    // g by additions (one division up front, none per group).
    const int dm = warps / KBi * ACT_ROWS, dk = warps % KBi;
    const ActStep st{(i64)dm * K + dk * 128, (i64)dk * scaleLd + dm, (i64)ACT_ROWS * K - (i64)KBi * 128, (i64)ACT_ROWS - (i64)KBi * scaleLd, dk, KBi};
    const int m = warp / KBi * ACT_ROWS + row, kb = warp % KBi;
    ActPos p{(i64)m * K + kb * 128 + sub * 8, (i64)kb * scaleLd + m, kb};
    ActPos pn = p;
    st.advance(pn);
    const bool firstLane = sub == 0;
    Lane16<T> A, B;
    int g = warp;
    if (g < interior) act_load(x, p.off, A);
    // Two buffers in turn: the loads of group g + warps go out before group g is reduced.
    while (g < interior) {
      if (g + warps < interior) act_load(x, pn.off, B);
      act_interior_group<T, POW2>(A, codes + p.off, scales + p.sidx, firstLane);
      g += warps;
      p = pn;
      st.advance(pn);
      if (g >= interior) break;
      if (g + warps < interior) act_load(x, pn.off, A);
      act_interior_group<T, POW2>(B, codes + p.off, scales + p.sidx, firstLane);
      g += warps;
      p = pn;
      st.advance(pn);
    }
  }
  // Edge groups: the last tile column of every interior band when K % 128 ≠ 0, then every tile
  // column of the bands after them (a partial band; all bands when rows are unaligned).
  const int columnEdges = K % 128 != 0 ? bands : 0;
  const int edges = columnEdges + ((M + ACT_ROWS - 1) / ACT_ROWS - bands) * KB;
  for (int e = warp; e < edges; e += warps) {
    if (e < columnEdges) act_edge_group<T, POW2>(x, codes, scales, M, K, scaleLd, vec, e * ACT_ROWS, KBi);
    else act_edge_group<T, POW2>(x, codes, scales, M, K, scaleLd, vec, (bands + (e - columnEdges) / KB) * ACT_ROWS, (e - columnEdges) % KB);
  }
}

// Registers: BF16 kernels hold two groups of 32 bytes per lane, FP32 ones of 64 bytes; with 4 blocks
// per SM the launcher's grid of 32 blocks per SM runs in whole waves.
#define ACT_KERNEL(name, T, POW2, MIN_BLOCKS)                                                                                  \
  extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) name(const T* x, unsigned char* codes, float* scales, int M, int K, int scaleLd) { \
    quantize_1x128_impl<T, POW2>(x, codes, scales, M, K, scaleLd);                                                             \
  }
ACT_KERNEL(quantize_1x128_bf16, bf16, false, 4)
ACT_KERNEL(quantize_1x128_f32, float, false, 4)
ACT_KERNEL(quantize_1x128_pow2_bf16, bf16, true, 4)
ACT_KERNEL(quantize_1x128_pow2_f32, float, true, 2)

// ---- weights: 128×128 blocks --------------------------------------------------------------
// One block of 256 threads per 128×128 block, grid (ceil(K/128), ceil(N/128)). Thread t holds
// chunks t, t+256, … (row chunk/16, columns 8·(chunk%16) …): a warp reads two full 256-byte row
// segments per chunk, every thread issues its 8 loads (128 bytes of BF16) before the block's amax
// reduction, and the tile stays in registers in its storage type (32 registers for BF16) for the
// quantization, so four blocks fit an SM (128 KB of loads in flight) and one block's loads
// overlap another's quantization and stores.
#define BLOCK_THREADS 256
#define CHUNKS_PER_THREAD 8

/** The codes of a thread's chunks of a 128×128 block (rows row0, row0 + 16, …; columns c0 …). */
template <bool FAST, typename T>
__device__ __forceinline__ void store_block(u8* __restrict__ codes, int row0, int c0, int N, int K, bool vec, const Chunk<T> (&v)[CHUNKS_PER_THREAD],
                                            const Divisor& d) {
#pragma unroll
  for (int i = 0; i < CHUNKS_PER_THREAD; i++) {
    const int row = row0 + i * (BLOCK_THREADS / 16);
    if (row < N) store_chunk(codes + (i64)row * K, c0, K, vec, quantize8<FAST>(v[i], d));
  }
}

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
  if (d.fast) store_block<true>(codes, row0, c0, N, K, vec, v, d);
  else store_block<false>(codes, row0, c0, N, K, vec, v, d);
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
