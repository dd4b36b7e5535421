// The CPU emulator's runtime (see emulator.ts): device memory with guard bytes and poisoned
// (NaN-filled) fresh and freed memory, kernel launches that run every CUDA thread of a block as a
// fiber with __syncthreads, warp shuffles and ballots as barriers, and a reference GEMM with
// cuBLASLt's row-major semantics (FP32 accumulation, C not read when beta = 0).
// Blocks run one after another on the calling thread, so atomics and shared memory need no locks.
// Fibers switch with a six-register stack swap on x86-64 (glibc's swapcontext makes a system call
// per switch to save the signal mask, which dominated the run time) and with ucontext elsewhere.
#include "cuda-shim.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <string>
#include <vector>

uint3 emu_threadIdx, emu_blockIdx;
dim3 emu_blockDim, emu_gridDim;

namespace {

std::string lastError;

bool fail(const std::string& message) {
  if (lastError.empty()) lastError = message;
  return false;
}

// ---- memory ------------------------------------------------------------------------------

constexpr size_t GUARD = 64;
constexpr unsigned char GUARD_BYTE = 0xA5;
constexpr size_t QUARANTINE_BYTES = size_t(512) << 20;

struct Allocation {
  size_t bytes;
  bool freed;
  unsigned char* raw;
};

std::map<uint64_t, Allocation> allocations;  // base address → allocation (freed ones stay in quarantine)
std::deque<uint64_t> quarantine;
size_t quarantined = 0, liveBytes = 0;

bool guardsIntact(uint64_t base, const Allocation& a) {
  for (size_t i = 0; i < GUARD; i++) {
    if (a.raw[i] != GUARD_BYTE || a.raw[GUARD + a.bytes + i] != GUARD_BYTE) return false;
  }
  return true;
}

/** The allocation holding [p, p + bytes), or null (with the reason in lastError). */
const Allocation* findRange(uint64_t p, size_t bytes, const char* what) {
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) {
    fail(std::string(what) + ": address " + std::to_string(p) + " is not device memory");
    return nullptr;
  }
  --it;
  const Allocation& a = it->second;
  if (p + bytes > it->first + a.bytes) {
    fail(std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " + std::to_string(p - it->first) + " run past an allocation of " +
         std::to_string(a.bytes));
    return nullptr;
  }
  if (a.freed) {
    fail(std::string(what) + ": memory at offset " + std::to_string(p - it->first) + " of a freed allocation of " + std::to_string(a.bytes) + " bytes");
    return nullptr;
  }
  return &a;
}

bool checkGuards(const char* after) {
  for (const auto& [base, a] : allocations) {
    if (!a.freed && !guardsIntact(base, a)) {
      return fail(std::string("after ") + after + ": a write past the end (or before the start) of an allocation of " + std::to_string(a.bytes) + " bytes");
    }
  }
  return true;
}

// ---- fibers ------------------------------------------------------------------------------

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr int MAX_THREADS = 1024;

struct Barrier {
  int expected = 0;
  int arrived = 0;
  unsigned generation = 0;
};

struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  char* stack = nullptr;
  bool done = false;
  Barrier* waitingOn = nullptr;
  unsigned waitingGeneration = 0;
  uint3 index;
  int linear = 0;
};

#if defined(__x86_64__)
void* schedulerSp = nullptr;
#else
ucontext_t scheduler;
#endif
Fiber fibers[MAX_THREADS];
int fiberCount = 0, current = 0;
Barrier blockBarrier;
std::vector<Barrier> warpBarriers;
std::vector<uint64_t> warpSlots;
std::vector<unsigned> liveLanes;
void (*kernelThunk)(void**) = nullptr;
void** kernelParams = nullptr;

}  // namespace

#if defined(__x86_64__)
// void emu_switch(void** save, void* to): push the callee-saved registers, store the stack pointer
// in *save, load `to`, pop the registers saved there and return into that fiber.
extern "C" void emu_switch(void** save, void* to);
asm(R"(
  .text
  .globl emu_switch
  .hidden emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");
#endif

namespace {

void yieldToScheduler() {
#if defined(__x86_64__)
  emu_switch(&fibers[current].sp, schedulerSp);
#else
  swapcontext(&fibers[current].context, &scheduler);
#endif
}

void arrive(Barrier& b) {
  const unsigned generation = b.generation;
  if (++b.arrived >= b.expected) {
    b.arrived = 0;
    b.generation++;
    return;
  }
  Fiber& f = fibers[current];
  f.waitingOn = &b;
  f.waitingGeneration = generation;
  yieldToScheduler();
  f.waitingOn = nullptr;
}

void leave(Barrier& b) {
  b.expected--;
  if (b.arrived > 0 && b.arrived >= b.expected) {
    b.arrived = 0;
    b.generation++;
  }
}

void fiberMain() {
  kernelThunk(kernelParams);
  Fiber& f = fibers[current];
  f.done = true;
  leave(blockBarrier);
  const int warp = f.linear >> 5;
  leave(warpBarriers[warp]);
  liveLanes[warp] &= ~(1u << (f.linear & 31));
#if defined(__x86_64__)
  yieldToScheduler();  // never resumed
  std::abort();
#endif
  // (ucontext) returning resumes uc_link: the scheduler
}

/** Prepare fiber f to start in fiberMain. */
void startFiber(Fiber& f) {
#if defined(__x86_64__)
  // Stack top, 16-byte aligned: [top − 8] a dummy return address for fiberMain, [top − 16] fiberMain
  // (popped by emu_switch's ret), then the six registers emu_switch pops. fiberMain then starts
  // with rsp ≡ 8 (mod 16), as after a call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + STACK_BYTES) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&fiberMain);
  for (int i = 0; i < 6; i++) *--sp = nullptr;
  f.sp = sp;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = STACK_BYTES;
  f.context.uc_link = &scheduler;
  makecontext(&f.context, fiberMain, 0);
#endif
}

bool runBlock(const char* name) {
  const int n = fiberCount;
  const int warps = (n + 31) / 32;
  blockBarrier = Barrier{n, 0, 0};
  warpBarriers.assign(warps, Barrier{});
  liveLanes.assign(warps, 0);
  warpSlots.assign(size_t(warps) * 32, 0);
  for (int i = 0; i < n; i++) {
    warpBarriers[i >> 5].expected++;
    liveLanes[i >> 5] |= 1u << (i & 31);
  }
  for (int i = 0; i < n; i++) {
    Fiber& f = fibers[i];
    f.done = false;
    f.waitingOn = nullptr;
    f.linear = i;
    f.index.x = i % emu_blockDim.x;
    f.index.y = (i / emu_blockDim.x) % emu_blockDim.y;
    f.index.z = i / (emu_blockDim.x * emu_blockDim.y);
    startFiber(f);
  }
  int remaining = n;
  while (remaining > 0) {
    bool progress = false;
    for (int i = 0; i < n; i++) {
      Fiber& f = fibers[i];
      if (f.done || (f.waitingOn && f.waitingOn->generation == f.waitingGeneration)) continue;
      current = i;
      emu_threadIdx = f.index;
#if defined(__x86_64__)
      emu_switch(&schedulerSp, f.sp);
#else
      swapcontext(&scheduler, &f.context);
#endif
      progress = true;
      if (f.done) remaining--;
    }
    if (!progress) return fail(std::string(name) + ": deadlock (threads wait at a barrier that the others never reach)");
  }
  return true;
}

// ---- kernels -----------------------------------------------------------------------------

struct KernelEntry {
  void (*thunk)(void**);
  std::vector<std::pair<void*, size_t>>* dynamicShared;
};

std::map<std::string, KernelEntry>& registry() {
  static std::map<std::string, KernelEntry> r;
  return r;
}

}  // namespace

void emu_syncthreads() { arrive(blockBarrier); }
void emu_syncwarp() { arrive(warpBarriers[fibers[current].linear >> 5]); }
int emu_lane() { return fibers[current].linear & 31; }

uint64_t emu_warp_exchange(uint64_t mine, int src) {
  const int linear = fibers[current].linear;
  const int warp = linear >> 5;
  warpSlots[size_t(warp) * 32 + (linear & 31)] = mine;
  arrive(warpBarriers[warp]);
  const uint64_t got = warpSlots[size_t(warp) * 32 + src];
  arrive(warpBarriers[warp]);
  return got;
}

unsigned emu_warp_ballot(int pred) {
  const int linear = fibers[current].linear;
  const int warp = linear >> 5;
  warpSlots[size_t(warp) * 32 + (linear & 31)] = pred ? 1 : 0;
  arrive(warpBarriers[warp]);
  unsigned mask = 0;
  for (int l = 0; l < 32; l++) {
    if (((liveLanes[warp] >> l) & 1u) && warpSlots[size_t(warp) * 32 + l]) mask |= 1u << l;
  }
  arrive(warpBarriers[warp]);
  return mask;
}

void emu_register_kernel(const char* name, void (*thunk)(void**), std::vector<std::pair<void*, size_t>>* dynamicShared) {
  registry()[name] = KernelEntry{thunk, dynamicShared};
}

extern "C" {

const char* emu_last_error() { return lastError.c_str(); }
void emu_clear_error() { lastError.clear(); }

uint64_t emu_alloc(uint64_t bytes) {
  unsigned char* raw = static_cast<unsigned char*>(std::malloc(bytes + 2 * GUARD));
  if (!raw) return 0;
  std::memset(raw, GUARD_BYTE, GUARD);
  std::memset(raw + GUARD + bytes, GUARD_BYTE, GUARD);
  std::memset(raw + GUARD, 0xFF, bytes);  // NaN in every float format: reading unwritten memory shows
  const uint64_t base = reinterpret_cast<uint64_t>(raw + GUARD);
  allocations[base] = Allocation{bytes, false, raw};
  liveBytes += bytes;
  return base;
}

int emu_free(uint64_t base) {
  auto it = allocations.find(base);
  if (it == allocations.end()) return fail("free: " + std::to_string(base) + " is not the start of an allocation"), 1;
  Allocation& a = it->second;
  if (a.freed) return fail("free: allocation of " + std::to_string(a.bytes) + " bytes freed twice"), 1;
  if (!guardsIntact(base, a)) return fail("free: a write past the end of an allocation of " + std::to_string(a.bytes) + " bytes"), 1;
  std::memset(a.raw + GUARD, 0xFF, a.bytes);
  a.freed = true;
  liveBytes -= a.bytes;
  quarantine.push_back(base);
  quarantined += a.bytes;
  while (quarantined > QUARANTINE_BYTES) {
    const uint64_t old = quarantine.front();
    quarantine.pop_front();
    auto o = allocations.find(old);
    quarantined -= o->second.bytes;
    std::free(o->second.raw);
    allocations.erase(o);
  }
  return 0;
}

uint64_t emu_live_bytes() { return liveBytes; }

int emu_h2d(uint64_t dst, const void* src, uint64_t bytes) {
  if (bytes == 0) return 0;
  if (!findRange(dst, bytes, "copy to device")) return 1;
  std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
  return 0;
}

int emu_d2h(void* dst, uint64_t src, uint64_t bytes) {
  if (bytes == 0) return 0;
  if (!findRange(src, bytes, "copy to host")) return 1;
  std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
  return 0;
}

int emu_d2d(uint64_t dst, uint64_t src, uint64_t bytes) {
  if (bytes == 0) return 0;
  if (!findRange(dst, bytes, "device copy destination") || !findRange(src, bytes, "device copy source")) return 1;
  std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
  return 0;
}

int emu_memset8(uint64_t dst, int value, uint64_t bytes) {
  if (bytes == 0) return 0;
  if (!findRange(dst, bytes, "memset8")) return 1;
  std::memset(reinterpret_cast<void*>(dst), value, bytes);
  return 0;
}

int emu_memset32(uint64_t dst, uint32_t value, uint64_t count) {
  if (count == 0) return 0;
  if (!findRange(dst, 4 * count, "memset32")) return 1;
  uint32_t* p = reinterpret_cast<uint32_t*>(dst);
  for (uint64_t i = 0; i < count; i++) p[i] = value;
  return 0;
}

/**
 * Launch kernel `name` with cuLaunchKernel's argument array `params` (slot addresses); `types`
 * holds one letter per argument ('p' pointer, else a scalar) so pointer arguments are checked
 * to lie in live device memory (or be null).
 */
int emu_launch(const char* name, const char* types, uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by, uint32_t bz, uint32_t sharedBytes,
               uint32_t maxSharedBytes, void** params) {
  auto it = registry().find(name);
  if (it == registry().end()) return fail(std::string("launch: no kernel named ") + name), 1;
  const uint64_t threads = uint64_t(bx) * by * bz;
  if (threads == 0 || threads > MAX_THREADS || bx > 1024 || by > 1024 || bz > 64) {
    return fail(std::string(name) + ": block " + std::to_string(bx) + "x" + std::to_string(by) + "x" + std::to_string(bz) + " is not a valid CUDA block"), 1;
  }
  if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535) {
    return fail(std::string(name) + ": grid " + std::to_string(gx) + "x" + std::to_string(gy) + "x" + std::to_string(gz) + " is not a valid CUDA grid"), 1;
  }
  if (sharedBytes > maxSharedBytes) {
    return fail(std::string(name) + ": " + std::to_string(sharedBytes) + " bytes of dynamic shared memory, more than the " + std::to_string(maxSharedBytes) + " allowed"), 1;
  }
  for (int i = 0; types[i]; i++) {
    if (types[i] != 'p') continue;
    uint64_t p;
    std::memcpy(&p, params[i], 8);
    if (p != 0 && !findRange(p, 0, (std::string(name) + " argument " + std::to_string(i)).c_str())) return 1;
  }
  static bool stacksReady = false;
  if (!stacksReady) {
    for (int i = 0; i < MAX_THREADS; i++) {
      void* s = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s == MAP_FAILED) return fail("emulator: cannot map fiber stacks"), 1;
      fibers[i].stack = static_cast<char*>(s);
    }
    stacksReady = true;
  }
  kernelThunk = it->second.thunk;
  kernelParams = params;
  fiberCount = int(threads);
  emu_blockDim = dim3(bx, by, bz);
  emu_gridDim = dim3(gx, gy, gz);
  for (uint32_t z = 0; z < gz; z++) {
    for (uint32_t y = 0; y < gy; y++) {
      for (uint32_t x = 0; x < gx; x++) {
        for (auto& [ptr, bytes] : *it->second.dynamicShared) std::memset(ptr, 0xFF, bytes);
        emu_blockIdx.x = x;
        emu_blockIdx.y = y;
        emu_blockIdx.z = z;
        if (!runBlock(name)) return 1;
      }
    }
  }
  return checkGuards(name) ? 0 : 1;
}

/**
 * Row-major C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b] (the RowMajorGemm of matmul.ts), types
 * 0 = BF16, 1 = FP32; products summed in FP32 in k order; C is not read when beta = 0.
 */
int emu_gemm(int m, int n, int k, int abType, int cType, int transA, int transB, int64_t lda, int64_t ldb, int64_t ldc, int batch, int64_t strideA,
             int64_t strideB, int64_t strideC, uint64_t a, uint64_t b, uint64_t c, float alpha, float beta) {
  const size_t ab = abType == 0 ? 2 : 4, cb = cType == 0 ? 2 : 4;
  const auto extent = [](int64_t rows, int64_t cols, int64_t ld, int batches, int64_t stride) { return uint64_t((batches - 1) * stride + (rows - 1) * ld + cols); };
  if (!findRange(a, ab * extent(transA ? k : m, transA ? m : k, lda, batch, strideA), "gemm A")) return 1;
  if (!findRange(b, ab * extent(transB ? n : k, transB ? k : n, ldb, batch, strideB), "gemm B")) return 1;
  if (!findRange(c, cb * extent(m, n, ldc, batch, strideC), "gemm C")) return 1;
  const auto load = [](uint64_t base, size_t bytes, int64_t i) -> float {
    if (bytes == 2) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
    return reinterpret_cast<const float*>(base)[i];
  };
  for (int bt = 0; bt < batch; bt++) {
    for (int i = 0; i < m; i++) {
      for (int j = 0; j < n; j++) {
        float acc = 0.0f;
        for (int kk = 0; kk < k; kk++) {
          const float av = load(a, ab, bt * strideA + (transA ? int64_t(kk) * lda + i : int64_t(i) * lda + kk));
          const float bv = load(b, ab, bt * strideB + (transB ? int64_t(j) * ldb + kk : int64_t(kk) * ldb + j));
          acc = std::fma(av, bv, acc);
        }
        const int64_t ci = bt * strideC + int64_t(i) * ldc + j;
        float out = alpha * acc;
        if (beta != 0.0f) out += beta * load(c, cb, ci);
        if (cb == 2) reinterpret_cast<__nv_bfloat16*>(c)[ci] = __float2bfloat16_rn(out);
        else reinterpret_cast<float*>(c)[ci] = out;
      }
    }
  }
  return 0;
}

}  // extern "C"
