// Backward of the column ops (Backend.addToCols, sumHeads):
//   add_to_cols  dst[r, start + c] += src[r, c]      dst [M, C], src [M, W]   (backward of sliceCols)
//   sum_heads    y[n, c] = Σ_h x[n, h, c]            x [N, H, C] → y [N, C]   (backward of concatHeads'
//                                                                             broadcast of one head)
// Grid-stride loops over the output elements; sums in FP32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void add_to_cols_impl(T* __restrict__ dst, const T* __restrict__ src, int M, int C, int W, int start) {
  const i64 n = (i64)M * W;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
    const i64 r = i / W;
    const int c = (int)(i - r * W);
    T* d = dst + r * C + start + c;
    *d = from_float<T>(to_float(*d) + to_float(src[i]));
  }
}

template <typename T>
__device__ __forceinline__ void sum_heads_impl(const T* __restrict__ x, T* __restrict__ y, int N, int H, int C) {
  const i64 n = (i64)N * C;
  const i64 stride = (i64)gridDim.x * blockDim.x;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
    const i64 t = i / C;
    const int c = (int)(i - t * C);
    const T* xr = x + t * H * C + c;
    float s = 0.0f;
    for (int h = 0; h < H; h++) s += to_float(xr[(i64)h * C]);
    y[i] = from_float<T>(s);
  }
}

extern "C" __global__ void add_to_cols_bf16(bf16* dst, const bf16* src, int M, int C, int W, int start) { add_to_cols_impl(dst, src, M, C, W, start); }
extern "C" __global__ void add_to_cols_f32(float* dst, const float* src, int M, int C, int W, int start) { add_to_cols_impl(dst, src, M, C, W, start); }
extern "C" __global__ void sum_heads_bf16(const bf16* x, bf16* y, int N, int H, int C) { sum_heads_impl(x, y, N, H, C); }
extern "C" __global__ void sum_heads_f32(const float* x, float* y, int N, int H, int C) { sum_heads_impl(x, y, N, H, C); }
