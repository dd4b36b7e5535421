// Shared by the tensor-core attention kernels (flash-attention.cu, flash-attention-backward.cu,
// mla-decode.cu): inline-PTX wrappers for 32-bit shared-memory addresses, cp.async, ldmatrix and
// the m16n8k16 BF16 MMA, BF16 pair packing, and the cp.async row stager. Inline PTX has no host
// meaning, so the CPU emulator of the tests leaves every file that includes this one out.
#pragma once
#include "common.cuh"

typedef unsigned u32;

#define LOG2E_F 1.4426950408889634f

// ---- PTX helpers (shared-memory addresses are 32-bit .shared addresses) ----------------------

__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 a;
  asm("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}\n" : "=r"(a) : "l"(p));
  return a;
}

/** 16 bytes global → shared, asynchronously; `valid` false zero-fills the 16 bytes without reading. */
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}

/** d += a·b for one m16n8k16 tile: a 16×16 BF16 (row), b 16×8 BF16 (col), d 16×8 FP32. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/** Max / sum over the 4 threads of a quad (lane & ~3): the threads holding one row of an m16n8 accumulator. */
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
  return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(FULL_MASK, v, 1);
  return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

/** Two floats as a BF16 pair: `lo` in the low half (the lower column / k index). */
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<u32*>(&v);
}

/**
 * Stage ROWS rows of D (padded) columns into shared memory (row stride SROW elements) from global
 * rows of stride `ld` elements: 16-byte chunks, those of rows ≥ rowsValid or columns ≥ dValid
 * zero-filled. THREADS threads stride over the chunks.
 */
template <int D, int SROW, int ROWS, int THREADS>
__device__ __forceinline__ void load_rows(u32 sAddr, const bf16* src, i64 ld, int rowsValid, int dValid, int tid) {
  constexpr int CH = D / 8;
#pragma unroll 4
  for (int idx = tid; idx < ROWS * CH; idx += THREADS) {
    const int r = idx / CH, c = idx - r * CH;
    const bool ok = r < rowsValid && c * 8 < dValid;
    const bf16* g = ok ? src + r * ld + c * 8 : src;
    cp_async16(sAddr + (u32)((r * SROW + c * 8) * 2), g, ok);
  }
}
