// Interleaved rotary embedding (Backend.rope): x [N, H, W]; in every head, columns
// [off, off + rot) hold pairs (2i, 2i+1) rotated by the angle whose cosine and sine are
// cos[pos[n]][i], sin[pos[n]][i] (tables [P, rot/2]); the other columns are copied.
//   y[2i]   = x[2i]·cos − x[2i+1]·sin
//   y[2i+1] = x[2i+1]·cos + x[2i]·sin
// sinSign = −1 rotates by the negated angle (the backward pass: the rotation is orthogonal).
// One block per token; a position outside [0, P) yields NaN in the rotated columns.
#include "common.cuh"

template <typename T, typename C>
__device__ __forceinline__ void rope_impl(const T* __restrict__ x, const C* __restrict__ cosT, const C* __restrict__ sinT, const int* __restrict__ pos,
                                          T* __restrict__ y, int N, int H, int W, int off, int rot, int P, float sinSign) {
  const int half = rot / 2;
  const int row = H * W;
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int p = pos[n];
    const bool valid = p >= 0 && p < P;
    const T* xr = x + (i64)n * row;
    T* yr = y + (i64)n * row;
    for (int j = threadIdx.x; j < row; j += blockDim.x) {
      const int rel = j % W - off;
      if (rel >= 0 && rel < rot) {
        if (!valid) {
          yr[j] = from_float<T>(__int_as_float(0x7fc00000));
          continue;
        }
        const int i = rel >> 1;
        const int base = j - (rel & 1);
        const float x0 = to_float(xr[base]), x1 = to_float(xr[base + 1]);
        const float c = to_float(cosT[(i64)p * half + i]), s = sinSign * to_float(sinT[(i64)p * half + i]);
        yr[j] = from_float<T>((rel & 1) ? x1 * c + x0 * s : x0 * c - x1 * s);
      } else {
        yr[j] = xr[j];
      }
    }
  }
}

extern "C" __global__ void rope_bf16(const bf16* x, const bf16* cosT, const bf16* sinT, const int* pos, bf16* y, int N, int H, int W, int off, int rot, int P, float sinSign) {
  rope_impl(x, cosT, sinT, pos, y, N, H, W, off, rot, P, sinSign);
}
extern "C" __global__ void rope_bf16_f32tab(const bf16* x, const float* cosT, const float* sinT, const int* pos, bf16* y, int N, int H, int W, int off, int rot, int P, float sinSign) {
  rope_impl(x, cosT, sinT, pos, y, N, H, W, off, rot, P, sinSign);
}
extern "C" __global__ void rope_f32(const float* x, const float* cosT, const float* sinT, const int* pos, float* y, int N, int H, int W, int off, int rot, int P, float sinSign) {
  rope_impl(x, cosT, sinT, pos, y, N, H, W, off, rot, P, sinSign);
}
