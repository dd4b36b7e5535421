// AdamW (Backend.adamw, Backend.adamwMany) in place on FP32 master weights p, FP32 (or BF16)
// gradients g and FP32 moments m, v, in the CPU backend's arithmetic order (torch's): with
// c1 = 1 − β1^t, c2 = 1 − β2^t,
//   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²      (each rounded to BF16 when momentsBf16)
//   p ← p·(1 − lr·wd) − lr·(m / c1) / (sqrt(v / c2) + eps)
// The host computes the scalar factors (1 − β, c1, c2, the decay) in FP64 and passes them as floats.
// Every rounding is spelled out (AdamW::step) — FMA or not, which operands — so that no compiler
// contraction choice can differ between the kernels: an element gets the same bits from adamw_f32
// and from adamw_many, in the vector loop or the element-wise one, whatever its chunk.
//
//   adamw_f32   one tensor, a grid-stride loop.
//   adamw_many  many tensors in one launch, over the table of multi-tensor.cuh with 8 i64 per tensor:
//                 [p, element count, first chunk, g, m, v, decay, gradient type]
//               decay = 1 − lr·wd of the tensor as FP32 bits in the low word; gradient type 1 for
//               BF16 (read as is: widening BF16 is exact), 0 for FP32. Blocks stride over the chunks.
//
// Memory-bound (28 bytes per element): when all four arrays are 16-byte aligned (a BF16 gradient:
// 8-byte), a loop over float4 vectors takes two vectors of each array per thread and pass (a stride
// apart), all eight loads issued before any arithmetic: 128 bytes in flight per thread. The few
// elements past the last whole vector, and unaligned arrays, take the element-wise loop.
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
  float lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps;
  int momentsBf16;

  /**
   * One element, in place: m = fma(g, 1−β1, β1·m), v = fma(g, (1−β2)·g, β2·v) (the contractions
   * nvcc made of the source expressions above), p = fma(p, decay, −u) with
   * u = (lr·(m / c1)) / (sqrt(v / c2) + eps), each operation rounded once.
   */
  __device__ __forceinline__ void step(float& p, float g, float& m, float& v) const {
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

// Gradient access by type: vector i (4 elements) and alignment for vector loads.
__device__ __forceinline__ float4 load_grad4(const float* g, i64 i) { return reinterpret_cast<const float4*>(g)[i]; }
__device__ __forceinline__ float4 load_grad4(const bf16* g, i64 i) {
  const uint2 r = reinterpret_cast<const uint2*>(g)[i];
  // BF16 → FP32 is the bit pattern shifted into the high half (what __bfloat162float does)
  return make_float4(__int_as_float((int)(r.x << 16)), __int_as_float((int)(r.x & 0xffff0000u)), __int_as_float((int)(r.y << 16)),
                     __int_as_float((int)(r.y & 0xffff0000u)));
}
__device__ __forceinline__ bool grad_vector_aligned(const float* g) { return aligned16(g); }
__device__ __forceinline__ bool grad_vector_aligned(const bf16* g) { return (reinterpret_cast<u64>(g) & 7) == 0; }

/** AdamW on elements [0, n) of p, g, m, v: thread `tid` of `threads` takes every threads-th vector (or element). */
template <typename G>
__device__ __forceinline__ void adamw_range(const AdamW& h, float* p, const G* g, float* m, float* v, i64 n, i64 tid, i64 threads) {
  i64 scalarFrom = 0;
  if (aligned16(p) && grad_vector_aligned(g) && aligned16(m) && aligned16(v)) {
    const i64 nv = n / 4;
    float4* p4 = reinterpret_cast<float4*>(p);
    float4* m4 = reinterpret_cast<float4*>(m);
    float4* v4 = reinterpret_cast<float4*>(v);
    i64 i = tid;
    for (; i + threads < nv; i += 2 * threads) {
      const i64 j = i + threads;
      float4 ga = load_grad4(g, i), ma = m4[i], va = v4[i], pa = p4[i];
      float4 gb = load_grad4(g, j), mb = m4[j], vb = v4[j], pb = p4[j];
      h.step4(pa, ga, ma, va);
      h.step4(pb, gb, mb, vb);
      m4[i] = ma;
      v4[i] = va;
      p4[i] = pa;
      m4[j] = mb;
      v4[j] = vb;
      p4[j] = pb;
    }
    if (i < nv) {
      float4 ga = load_grad4(g, i), ma = m4[i], va = v4[i], pa = p4[i];
      h.step4(pa, ga, ma, va);
      m4[i] = ma;
      v4[i] = va;
      p4[i] = pa;
    }
    scalarFrom = nv * 4;
  }
  for (i64 i = scalarFrom + tid; i < n; i += threads) h.step(p[i], to_float(g[i]), m[i], v[i]);
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, i64 n, float lr, float beta1, float beta2, float oneMinusBeta1,
                                     float oneMinusBeta2, float c1, float c2, float decay, float eps, int momentsBf16) {
  const AdamW h{lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps, momentsBf16};
  adamw_range(h, p, g, m, v, n, blockIdx.x * (i64)blockDim.x + threadIdx.x, (i64)gridDim.x * blockDim.x);
}

#define ADAMW_TABLE_WORDS 8

extern "C" __global__ void adamw_many(const i64* table, int tensors, int chunks, i64 chunkElems, float lr, float beta1, float beta2, float oneMinusBeta1,
                                      float oneMinusBeta2, float c1, float c2, float eps, int momentsBf16) {
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    const TableChunk k = find_table_chunk<ADAMW_TABLE_WORDS>(table, tensors, c, chunkElems);
    const i64* e = k.entry;
    const float decay = __int_as_float((int)(e[6] & 0xffffffff));
    const AdamW h{lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps, momentsBf16};
    float* p = reinterpret_cast<float*>(e[0]) + k.start;
    float* m = reinterpret_cast<float*>(e[4]) + k.start;
    float* v = reinterpret_cast<float*>(e[5]) + k.start;
    if (e[7]) adamw_range(h, p, reinterpret_cast<const bf16*>(e[3]) + k.start, m, v, k.count, threadIdx.x, blockDim.x);
    else adamw_range(h, p, reinterpret_cast<const float*>(e[3]) + k.start, m, v, k.count, threadIdx.x, blockDim.x);
  }
}
