// AdamW (Backend.adamw, Backend.adamwMany) in place on FP32 master weights p, FP32 (or BF16)
// gradients g and FP32 (or BF16) moments m, v, in the CPU backend's arithmetic order (torch's):
// with c1 = 1 − β1^t, c2 = 1 − β2^t and s the gradient scale (global-norm clipping),
//   g ← s·g                                               (in registers: the gradient is not written)
//   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²      (each rounded to BF16 when momentsBf16)
//   p ← p·(1 − lr·wd) − lr·(m / c1) / (sqrt(v / c2) + eps)
// Moments stored in BF16 come with momentsBf16, so storing them is exact: the same values as FP32
// moments rounded to BF16. Where p has a BF16 copy (the backend's copy of a weight for BF16 GEMMs),
// bf16(p) (round to nearest even, what a cast afterwards would give) is written to it as well, so
// the copy is up to date without a pass of its own.
//
// What changes from step to step comes from device memory, so that a captured step replays with
// the values written before each replay: hyper = [lr, c1, c2] (FP32; the host computes c1 and c2
// in FP64), gradScale (FP32; null: 1) and skip (i32; null: none — when non-zero the kernel writes
// nothing). The host passes what stays fixed: β1, β2, 1 − β1, 1 − β2 (FP64, rounded to FP32) and
// eps. The decay factor is computed here as fma(−lr, wd, 1): 1 − lr·wd of the FP32 lr and wd,
// rounded once. (It used to come from the host, 1 − lr·wd in FP64 rounded to FP32: the bits can
// differ in the last place where lr or wd has more than FP32's precision.)
// Every rounding is spelled out (AdamW::step) — FMA or not, which operands — so that no compiler
// contraction choice can differ between the kernels: an element gets the same bits from adamw_f32
// and from adamw_many, in the vector loop or the element-wise one, whatever its chunk.
//
//   adamw_f32   one tensor with an FP32 gradient, a grid-stride loop.
//   adamw_many  many tensors in one launch, over the table of multi-tensor.cuh with 10 i64 per tensor:
//                 [p, element count, first chunk, g, m, v, wd, gradient type, moment type, copy]
//               wd = the tensor's weight decay as FP32 bits in the low word; gradient and moment
//               types 1 for BF16 (read as is: widening BF16 is exact), 0 for FP32; copy the address
//               of p's BF16 copy, or 0 for none, written only when the launch's writeCopies is set
//               (a captured launch leaves the copies alone, with the eager launch's table).
//               Blocks stride over the chunks.
//
// Memory-bound: per element p, g, m, v read and p, m, v written, 28 bytes with FP32 moments and
// gradient, 20 with BF16 moments, 2 more with a BF16 copy written, 2 fewer with a BF16 gradient.
// When every array allows vectors of 4 elements (FP32: 16-byte aligned, BF16: 8-byte), a loop over
// such vectors takes two of each array per thread and pass (a stride apart), all eight loads issued
// before any arithmetic. The few elements past the last whole vector, and unaligned arrays, take
// the element-wise loop.
#include "multi-tensor.cuh"

// IEEE operations that the compiler must neither fuse nor reorder. The CPU emulator compiles this
// file as host C++ (x86-64 without FMA contraction), where the plain operators are the same operations.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
#else
inline float mul_rn(float a, float b) { return a * b; }
inline float add_rn(float a, float b) { return a + b; }
inline float div_rn(float a, float b) { return a / b; }
inline float sqrt_rn(float a) { return sqrtf(a); }
#endif

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

struct AdamW {
  float lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps, gradScale;
  int momentsBf16;

  /** The scalars of a step: hyper = [lr, c1, c2] and the gradient scale (null: 1) from device memory, the fixed ones from the host; no decay yet. */
  static __device__ __forceinline__ AdamW load(const float* hyper, const float* gradScale, float beta1, float beta2, float oneMinusBeta1,
                                               float oneMinusBeta2, float eps, int momentsBf16) {
    return {hyper[0], beta1, beta2, oneMinusBeta1, oneMinusBeta2, hyper[1], hyper[2], 1.0f, eps, gradScale ? *gradScale : 1.0f, momentsBf16};
  }

  /** This step for a tensor of weight decay wd: decay = fma(−lr, wd, 1), 1 − lr·wd rounded once. */
  __device__ __forceinline__ AdamW with_decay(float wd) const {
    AdamW h = *this;
    h.decay = fmaf(-lr, wd, 1.0f);
    return h;
  }

  /**
   * One element, in place: g = s·g0, m = fma(g, 1−β1, β1·m), v = fma(g, (1−β2)·g, β2·v) (the
   * contractions nvcc made of the source expressions above), p = fma(p, decay, −u) with
   * u = (lr·(m / c1)) / (sqrt(v / c2) + eps), each operation rounded once.
   */
  __device__ __forceinline__ void step(float& p, float g0, float& m, float& v) const {
    const float g = mul_rn(g0, gradScale);
    float mi = fmaf(g, oneMinusBeta1, mul_rn(beta1, m));
    float vi = fmaf(g, mul_rn(oneMinusBeta2, g), mul_rn(beta2, v));
    if (momentsBf16) {
      mi = round_bf16(mi);
      vi = round_bf16(vi);
    }
    m = mi;
    v = vi;
    const float u = div_rn(mul_rn(lr, div_rn(mi, c1)), add_rn(sqrt_rn(div_rn(vi, c2)), eps));
    p = fmaf(p, decay, -u);
  }

  __device__ __forceinline__ void step4(float4& p, const float4& g, float4& m, float4& v) const {
    step(p.x, g.x, m.x, v.x);
    step(p.y, g.y, m.y, v.y);
    step(p.z, g.z, m.z, v.z);
    step(p.w, g.w, m.w, v.w);
  }
};

// Access by storage type: vector i (4 elements) as FP32, and whether an array allows such vectors.
__device__ __forceinline__ float4 load4(const float* x, i64 i) { return reinterpret_cast<const float4*>(x)[i]; }
__device__ __forceinline__ float4 load4(const bf16* x, i64 i) {
  const uint2 r = reinterpret_cast<const uint2*>(x)[i];
  // BF16 → FP32 is the bit pattern shifted into the high half (what __bfloat162float does)
  return make_float4(__int_as_float((int)(r.x << 16)), __int_as_float((int)(r.x & 0xffff0000u)), __int_as_float((int)(r.y << 16)),
                     __int_as_float((int)(r.y & 0xffff0000u)));
}
__device__ __forceinline__ void store4(float* x, i64 i, const float4& y) { reinterpret_cast<float4*>(x)[i] = y; }
/** bf16(lo) in the low half, bf16(hi) in the high half (round to nearest even, like __float2bfloat16_rn everywhere). */
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
  return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
__device__ __forceinline__ void store4(bf16* x, i64 i, const float4& y) { reinterpret_cast<uint2*>(x)[i] = make_uint2(bf16_pair(y.x, y.y), bf16_pair(y.z, y.w)); }
__device__ __forceinline__ bool vector_aligned(const float* x) { return aligned16(x); }
__device__ __forceinline__ bool vector_aligned(const bf16* x) { return (reinterpret_cast<u64>(x) & 7) == 0; }

/** Write back vector i of p, m, v, and of p's BF16 copy unless it is null. */
template <typename M>
__device__ __forceinline__ void store_step4(float* p, M* m, M* v, bf16* copy, i64 i, const float4& pi, const float4& mi, const float4& vi) {
  store4(m, i, mi);
  store4(v, i, vi);
  store4(p, i, pi);
  if (copy) store4(copy, i, pi);
}

/**
 * AdamW on elements [0, n) of p, g, m, v and of p's BF16 copy (null: none): thread `tid` of
 * `threads` takes every threads-th vector (or element).
 */
template <typename G, typename M>
__device__ __forceinline__ void adamw_range(const AdamW& h, float* p, const G* g, M* m, M* v, bf16* copy, i64 n, i64 tid, i64 threads) {
  i64 scalarFrom = 0;
  if (vector_aligned(p) && vector_aligned(g) && vector_aligned(m) && vector_aligned(v) && (!copy || vector_aligned(copy))) {
    const i64 nv = n / 4;
    i64 i = tid;
    for (; i + threads < nv; i += 2 * threads) {
      const i64 j = i + threads;
      float4 ga = load4(g, i), ma = load4(m, i), va = load4(v, i), pa = load4(p, i);
      float4 gb = load4(g, j), mb = load4(m, j), vb = load4(v, j), pb = load4(p, j);
      h.step4(pa, ga, ma, va);
      h.step4(pb, gb, mb, vb);
      store_step4(p, m, v, copy, i, pa, ma, va);
      store_step4(p, m, v, copy, j, pb, mb, vb);
    }
    if (i < nv) {
      float4 ga = load4(g, i), ma = load4(m, i), va = load4(v, i), pa = load4(p, i);
      h.step4(pa, ga, ma, va);
      store_step4(p, m, v, copy, i, pa, ma, va);
    }
    scalarFrom = nv * 4;
  }
  for (i64 i = scalarFrom + tid; i < n; i += threads) {
    float pi = p[i], mi = to_float(m[i]), vi = to_float(v[i]);
    h.step(pi, to_float(g[i]), mi, vi);
    m[i] = from_float<M>(mi);
    v[i] = from_float<M>(vi);
    p[i] = pi;
    if (copy) copy[i] = from_float<bf16>(pi);
  }
}

/** adamw_range on elements [start, start + n) of one tensor, its moments of the type given at run time (1: BF16, 0: FP32). */
template <typename G>
__device__ __forceinline__ void adamw_tensor(const AdamW& h, float* p, const G* g, void* m, void* v, i64 momentType, bf16* copy, i64 start, i64 n,
                                             i64 tid, i64 threads) {
  p += start;
  g += start;
  if (copy) copy += start;
  if (momentType) adamw_range(h, p, g, static_cast<bf16*>(m) + start, static_cast<bf16*>(v) + start, copy, n, tid, threads);
  else adamw_range(h, p, g, static_cast<float*>(m) + start, static_cast<float*>(v) + start, copy, n, tid, threads);
}

// hyper, gradScale, skip: the step's scalars in device memory (see the top of this file)
#define ADAMW_SCALAR_ARGS const float *hyper, const float *gradScale, const int *skip, float beta1, float beta2, float oneMinusBeta1, float oneMinusBeta2

extern "C" __global__ void adamw_f32(float* p, const float* g, void* m, void* v, bf16* copy, i64 n, ADAMW_SCALAR_ARGS, float wd, float eps,
                                     int momentsBf16, int momentType) {
  if (skip && *skip) return;
  const AdamW h = AdamW::load(hyper, gradScale, beta1, beta2, oneMinusBeta1, oneMinusBeta2, eps, momentsBf16).with_decay(wd);
  adamw_tensor(h, p, g, m, v, momentType, copy, 0, n, blockIdx.x * (i64)blockDim.x + threadIdx.x, (i64)gridDim.x * blockDim.x);
}

#define ADAMW_TABLE_WORDS 10

extern "C" __global__ void adamw_many(const i64* table, int tensors, int chunks, i64 chunkElems, ADAMW_SCALAR_ARGS, float eps, int momentsBf16,
                                      int writeCopies) {
  if (skip && *skip) return;
  const AdamW step = AdamW::load(hyper, gradScale, beta1, beta2, oneMinusBeta1, oneMinusBeta2, eps, momentsBf16);
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const TableChunk k = find_table_chunk<ADAMW_TABLE_WORDS>(table, tensors, c, chunkElems);
    const i64* e = k.entry;
    const AdamW h = step.with_decay(__int_as_float((int)(e[6] & 0xffffffff)));
    float* p = reinterpret_cast<float*>(e[0]);
    void* m = reinterpret_cast<void*>(e[4]);
    void* v = reinterpret_cast<void*>(e[5]);
    bf16* copy = writeCopies ? reinterpret_cast<bf16*>(e[9]) : nullptr;
    if (e[7]) adamw_tensor(h, p, reinterpret_cast<const bf16*>(e[3]), m, v, e[8], copy, k.start, k.count, threadIdx.x, blockDim.x);
    else adamw_tensor(h, p, reinterpret_cast<const float*>(e[3]), m, v, e[8], copy, k.start, k.count, threadIdx.x, blockDim.x);
  }
}
