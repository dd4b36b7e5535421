// Interleaved rotary embedding (Backend.rope): x [N, H, W]; in every head, columns
// [off, off + rot) hold pairs (2i, 2i+1) rotated by the angle whose cosine and sine are
// cos[pos[n]][i], sin[pos[n]][i] (tables [P, rot/2]); the other columns are copied.
//   y[2i]   = x[2i]·cos − x[2i+1]·sin
//   y[2i+1] = x[2i+1]·cos + x[2i]·sin
// sinSign = −1 rotates by the negated angle (the backward pass: the rotation is orthogonal).
// One block per token; a position outside [0, P) yields NaN in the rotated columns.
//
// A token's row of H·W elements is streamed as 16-byte vectors when W is a multiple of the vector
// width, off is even (so no pair straddles two vectors) and both rows are 16-byte aligned: each
// thread loads ROPE_UNROLL vectors before rotating and storing any, so a 256-thread block keeps
// 16 KB in flight. Vectors outside the rotated columns are copied as they are; the cos/sin
// entries come from the token's table row, which every head shares (L1 hits).
// Other shapes take the element-wise loop.
#include "common.cuh"

#define ROPE_UNROLL 4

/** y of one vector of V elements starting at head column col0 (V even, col0 even, off even). */
template <typename T, typename C>
__device__ __forceinline__ uint4 rope_vector(uint4 in, int col0, int off, int rot, const C* __restrict__ cr, const C* __restrict__ sr, bool valid,
                                             float sinSign) {
  constexpr int V = Vec<T>::N;
  if (col0 + V <= off || col0 >= off + rot) return in;  // no rotated column
  uint4 out = in;
  const T* e = reinterpret_cast<const T*>(&in);
  T* o = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int t = 0; t < V / 2; t++) {
    const int rel = col0 + 2 * t - off;  // even
    if (rel < 0 || rel >= rot) continue;
    if (!valid) {
      o[2 * t] = o[2 * t + 1] = from_float<T>(__int_as_float(0x7fc00000));
      continue;
    }
    const int i = rel >> 1;
    const float x0 = to_float(e[2 * t]), x1 = to_float(e[2 * t + 1]);
    const float c = to_float(cr[i]), s = sinSign * to_float(sr[i]);
    o[2 * t] = from_float<T>(x0 * c - x1 * s);
    o[2 * t + 1] = from_float<T>(x1 * c + x0 * s);
  }
  return out;
}

template <typename T, typename C>
__device__ __forceinline__ void rope_impl(const T* __restrict__ x, const C* __restrict__ cosT, const C* __restrict__ sinT, const int* __restrict__ pos,
                                          T* __restrict__ y, int N, int H, int W, int off, int rot, int P, float sinSign) {
  constexpr int V = Vec<T>::N;
  const int half = rot / 2;
  const int row = H * W;
  // Rows are H·W elements apart: with W % V == 0 every row is aligned when the first is. The
  // vector path's layout takes whole warps (the launcher's blocks are multiples of 32 threads).
  const bool vec = W % V == 0 && off % 2 == 0 && aligned16(x) && aligned16(y) && blockDim.x % 32 == 0;
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int p = pos[n];
    const bool valid = p >= 0 && p < P;
    const T* xr = x + (i64)n * row;
    T* yr = y + (i64)n * row;
    if (vec) {
      // The table rows are only read for valid positions.
      const C* cr = cosT + (valid ? (i64)p * half : 0);
      const C* sr = sinT + (valid ? (i64)p * half : 0);
      const int nv = row / V, headVectors = W / V;
      const uint4* x4 = reinterpret_cast<const uint4*>(xr);
      uint4* y4 = reinterpret_cast<uint4*>(yr);
      // Each pass covers ROPE_UNROLL · blockDim.x vectors: warp w the 32·ROPE_UNROLL from
      // 32·ROPE_UNROLL·w, lane l those 32 apart from l (512 contiguous bytes per warp access, one
      // base address for all of a thread's vectors).
      const int lead = (int)(threadIdx.x >> 5) * (32 * ROPE_UNROLL) + (int)(threadIdx.x & 31);
      for (int first = lead; first - lead < nv; first += ROPE_UNROLL * blockDim.x) {
        uint4 v[ROPE_UNROLL];
#pragma unroll
        for (int u = 0; u < ROPE_UNROLL; u++) {
          const int q = first + 32 * u;
          if (q < nv) v[u] = x4[q];
        }
#pragma unroll
        for (int u = 0; u < ROPE_UNROLL; u++) {
          const int q = first + 32 * u;
          if (q < nv) y4[q] = rope_vector<T>(v[u], (q % headVectors) * V, off, rot, cr, sr, valid, sinSign);
        }
      }
    } else {
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
