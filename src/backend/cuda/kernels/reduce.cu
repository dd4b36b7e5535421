// Reductions whose answer goes to the host as one number, accumulated in FP64 and in a fixed
// order (the same inputs give the same bits every run):
//   sum_squares_{bf16,f32}  partial[block] = Σ x² over a grid-stride share of x (FP64)
//   sum_f64                 out[0] = Σ_{i<n} x[i] (FP64 in), one block
//   sum_rows_f32_to_f64     out[r] = Σ_{c<cols} x[r·cols + c] (FP32 in, FP64 sums), one block per row
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

extern "C" __global__ void sum_f64(const double* x, int n, double* out) {
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = block_sum_f64(s);
  if (threadIdx.x == 0) out[0] = s;
}

extern "C" __global__ void sum_rows_f32_to_f64(const float* x, int rows, i64 cols, double* out) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + (i64)r * cols;
    double s = 0.0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += (double)xr[c];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) out[r] = s;
  }
}
