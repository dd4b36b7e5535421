// RMSNorm backward (Backend.rmsNormBackwardInput / rmsNormBackwardWeight). With
// y = w ∘ x · r, r = (mean(x²) + eps)^-½ over the last dimension d of each row:
//   dx = r · (w ∘ dy) − x · r³ · mean(x ∘ w ∘ dy)          (rmsnorm_bwd_input: one block per row)
//   dw += Σ_rows dy ∘ x · r                                  (three launches, deterministic:)
//     rms_inv                 r of every row               (one block per row)
//     rmsnorm_bwd_weight_partial  partial[chunk, c] = Σ_{rows of the chunk} dy·x·r
//                             (grid: column tiles × row chunks; thread = one column)
//     column_sum_add          dst[c] += Σ_chunk partial[chunk, c], in chunk order
// Activations x, dy, dx in T (bf16 or f32); the weight w in FP32; math in FP32.
// blockDim.x is a multiple of 32 for the per-row kernels (block_sum).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void rmsnorm_bwd_input_impl(const T* __restrict__ x, const float* __restrict__ w, const T* __restrict__ dy, T* __restrict__ dx,
                                                       int rows, int d, float eps) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (i64)row * d;
    const T* gr = dy + (i64)row * d;
    T* dr = dx + (i64)row * d;
    float ss = 0.0f, dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float xv = to_float(xr[i]);
      ss = fmaf(xv, xv, ss);
      dot = fmaf(xv, w[i] * to_float(gr[i]), dot);
    }
    ss = block_sum(ss);
    dot = block_sum(dot);
    const float r = rsqrtf(ss / (float)d + eps);
    const float c = r * r * r * dot / (float)d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dr[i] = from_float<T>(r * w[i] * to_float(gr[i]) - c * to_float(xr[i]));
  }
}

template <typename T>
__device__ __forceinline__ void rms_inv_impl(const T* __restrict__ x, float* __restrict__ rinv, int rows, int d, float eps) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (i64)row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float xv = to_float(xr[i]);
      ss = fmaf(xv, xv, ss);
    }
    ss = block_sum(ss);
    if (threadIdx.x == 0) rinv[row] = rsqrtf(ss / (float)d + eps);
  }
}

/** Grid (ceil(d / blockDim.x), chunks): column c, rows [chunk·rowsPerChunk, …) → partial[chunk·d + c]. */
template <typename T>
__device__ __forceinline__ void rmsnorm_bwd_weight_partial_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ rinv,
                                                                float* __restrict__ partial, int rows, int d, int rowsPerChunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  const int chunk = blockIdx.y;
  const int first = chunk * rowsPerChunk;
  const int end = min(rows, first + rowsPerChunk);
  float s = 0.0f;
  for (int r = first; r < end; r++) s = fmaf(to_float(dy[(i64)r * d + c]) * to_float(x[(i64)r * d + c]), rinv[r], s);
  partial[(i64)chunk * d + c] = s;
}

/** dst[c] += Σ_k partial[k·d + c] for k < chunks, summed in k order. */
template <typename W>
__device__ __forceinline__ void column_sum_add_impl(const float* __restrict__ partial, int chunks, int d, W* __restrict__ dst) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < d; c += gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int k = 0; k < chunks; k++) s += partial[(i64)k * d + c];
    dst[c] = from_float<W>(to_float(dst[c]) + s);
  }
}

extern "C" __global__ void rmsnorm_bwd_input_bf16(const bf16* x, const float* w, const bf16* dy, bf16* dx, int rows, int d, float eps) {
  rmsnorm_bwd_input_impl(x, w, dy, dx, rows, d, eps);
}
extern "C" __global__ void rmsnorm_bwd_input_f32(const float* x, const float* w, const float* dy, float* dx, int rows, int d, float eps) {
  rmsnorm_bwd_input_impl(x, w, dy, dx, rows, d, eps);
}
extern "C" __global__ void rms_inv_bf16(const bf16* x, float* rinv, int rows, int d, float eps) { rms_inv_impl(x, rinv, rows, d, eps); }
extern "C" __global__ void rms_inv_f32(const float* x, float* rinv, int rows, int d, float eps) { rms_inv_impl(x, rinv, rows, d, eps); }
extern "C" __global__ void rmsnorm_bwd_weight_partial_bf16(const bf16* x, const bf16* dy, const float* rinv, float* partial, int rows, int d, int rowsPerChunk) {
  rmsnorm_bwd_weight_partial_impl(x, dy, rinv, partial, rows, d, rowsPerChunk);
}
extern "C" __global__ void rmsnorm_bwd_weight_partial_f32(const float* x, const float* dy, const float* rinv, float* partial, int rows, int d, int rowsPerChunk) {
  rmsnorm_bwd_weight_partial_impl(x, dy, rinv, partial, rows, d, rowsPerChunk);
}
extern "C" __global__ void column_sum_add_f32(const float* partial, int chunks, int d, float* dst) { column_sum_add_impl(partial, chunks, d, dst); }
extern "C" __global__ void column_sum_add_bf16(const float* partial, int chunks, int d, bf16* dst) { column_sum_add_impl(partial, chunks, d, dst); }
