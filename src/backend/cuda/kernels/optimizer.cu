// AdamW (Backend.adamw) in place on FP32 master weights p, FP32 gradients g and FP32 moments
// m, v, in the CPU backend's arithmetic order (torch's): with c1 = 1 − β1^t, c2 = 1 − β2^t,
//   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²      (each rounded to BF16 when momentsBf16)
//   p ← p·(1 − lr·wd) − lr·(m / c1) / (sqrt(v / c2) + eps)
// The host computes the scalar factors (1 − β, c1, c2, the decay) in FP64 and passes them as floats.
#include "common.cuh"

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, i64 n, float lr, float beta1, float beta2, float oneMinusBeta1,
                                     float oneMinusBeta2, float c1, float c2, float decay, float eps, int momentsBf16) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gi = g[i];
    float mi = beta1 * m[i] + oneMinusBeta1 * gi;
    float vi = beta2 * v[i] + oneMinusBeta2 * gi * gi;
    if (momentsBf16) {
      mi = round_bf16(mi);
      vi = round_bf16(vi);
    }
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - (lr * (mi / c1)) / (sqrtf(vi / c2) + eps);
  }
}
