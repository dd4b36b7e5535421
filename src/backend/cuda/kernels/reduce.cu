// Reductions accumulated in FP64 and in a fixed order (the same inputs give the same bits every
// run), whose answer goes to the host or stays on the device for a later kernel:
//   sum_squares_{bf16,f32}  partial[block] = Σ x² over a grid-stride share of x (FP64)
//   sum_f64                 out[0] = Σ_{i<n} x[i] (FP64 in), one block
//   grad_norm_clip          from the partial sums of squares of the gradients (FP64, n of them):
//                           norm = sqrt(Σ partial), out[0] = norm, out[1] = maxNorm / norm when
//                           maxNorm > 0 and norm > maxNorm, else 1 (FP64, each rounded to FP32:
//                           AdamW's gradient scale), skip[0] = 1 when out[0] is NaN or infinite,
//                           else 0 (skip may be null); one block
//   add_row_sums_f32        out[r] += Σ_{c<cols} x[r·cols + c] (FP32 in and out, summed in FP64, one
//                           rounding into out), one block per row: losses accumulated on the device
// blockDim.x is a multiple of 32 (at most 1024).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void sum_squares_impl(const T* __restrict__ x, i64 n, double* __restrict__ partial) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  double s = 0.0;
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = (double)to_float(x[i]);
    s += v * v;
  }
  s = block_sum_f64(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sum_squares_bf16(const bf16* x, i64 n, double* partial) { sum_squares_impl(x, n, partial); }
extern "C" __global__ void sum_squares_f32(const float* x, i64 n, double* partial) { sum_squares_impl(x, n, partial); }

/** Σ_{i<n} x[i] (FP64) by one block in a fixed order; every thread gets the total. */
__device__ __forceinline__ double block_sum_of(const double* x, int n) {
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  return block_sum_f64(s);
}

extern "C" __global__ void sum_f64(const double* x, int n, double* out) {
  const double s = block_sum_of(x, n);
  if (threadIdx.x == 0) out[0] = s;
}

extern "C" __global__ void grad_norm_clip(const double* partial, int n, double maxNorm, float* out, int* skip) {
  const double norm = sqrt(block_sum_of(partial, n));
  if (threadIdx.x == 0) {
    const float norm32 = (float)norm;
    out[0] = norm32;
    out[1] = (float)(maxNorm > 0.0 && norm > maxNorm ? maxNorm / norm : 1.0);
    if (skip) skip[0] = norm32 - norm32 == 0.0f ? 0 : 1;  // x − x is NaN for NaN and ±Inf, else 0
  }
}

extern "C" __global__ void add_row_sums_f32(const float* x, int rows, i64 cols, float* out) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + (i64)r * cols;
    double s = 0.0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += (double)xr[c];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) out[r] = (float)((double)out[r] + s);
  }
}
