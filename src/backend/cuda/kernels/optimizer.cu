// AdamW (Backend.adamw) in place on FP32 master weights p, FP32 gradients g and FP32 moments
// m, v, in the CPU backend's arithmetic order (torch's): with c1 = 1 − β1^t, c2 = 1 − β2^t,
//   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²      (each rounded to BF16 when momentsBf16)
//   p ← p·(1 − lr·wd) − lr·(m / c1) / (sqrt(v / c2) + eps)
// The host computes the scalar factors (1 − β, c1, c2, the decay) in FP64 and passes them as floats.
//
// Memory-bound (28 bytes per element): when all four arrays are 16-byte aligned, a grid-stride
// loop over float4 vectors takes two vectors of each array per thread and pass (a grid stride
// apart), all eight 16-byte loads issued before any arithmetic: 128 bytes in flight per thread.
// The few elements past the last whole vector, and unaligned arrays, take the element-wise loop.
// Every element gets the same expression as the element-wise loop.
#include "common.cuh"

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

struct AdamW {
  float lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps;
  int momentsBf16;

  /** One element, in place. */
  __device__ __forceinline__ void step(float& p, float g, float& m, float& v) const {
    float mi = beta1 * m + oneMinusBeta1 * g;
    float vi = beta2 * v + oneMinusBeta2 * g * g;
    if (momentsBf16) {
      mi = round_bf16(mi);
      vi = round_bf16(vi);
    }
    m = mi;
    v = vi;
    p = p * decay - (lr * (mi / c1)) / (sqrtf(vi / c2) + eps);
  }

  __device__ __forceinline__ void step4(float4& p, const float4& g, float4& m, float4& v) const {
    step(p.x, g.x, m.x, v.x);
    step(p.y, g.y, m.y, v.y);
    step(p.z, g.z, m.z, v.z);
    step(p.w, g.w, m.w, v.w);
  }
};

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, i64 n, float lr, float beta1, float beta2, float oneMinusBeta1,
                                     float oneMinusBeta2, float c1, float c2, float decay, float eps, int momentsBf16) {
  const AdamW h{lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, c1, c2, decay, eps, momentsBf16};
  const i64 stride = (i64)gridDim.x * blockDim.x;
  const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  i64 scalarFrom = 0;
  if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v)) {
    const i64 nv = n / 4;
    float4* p4 = reinterpret_cast<float4*>(p);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    float4* m4 = reinterpret_cast<float4*>(m);
    float4* v4 = reinterpret_cast<float4*>(v);
    i64 i = tid;
    for (; i + stride < nv; i += 2 * stride) {
      const i64 j = i + stride;
      float4 ga = g4[i], ma = m4[i], va = v4[i], pa = p4[i];
      float4 gb = g4[j], mb = m4[j], vb = v4[j], pb = p4[j];
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
      float4 ga = g4[i], ma = m4[i], va = v4[i], pa = p4[i];
      h.step4(pa, ga, ma, va);
      m4[i] = ma;
      v4[i] = va;
      p4[i] = pa;
    }
    scalarFrom = nv * 4;
  }
  for (i64 i = scalarFrom + tid; i < n; i += stride) h.step(p[i], g[i], m[i], v[i]);
}
