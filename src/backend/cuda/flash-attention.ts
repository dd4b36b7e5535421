// Tensor-core attention kernels on raw device pointers (numbers, as in ops.ts), enqueued on the
// context's stream:
//
//   flashAttentionForward   causal attention, BF16 in/out, FP32 log-sum-exp per row kept for the
//                           backward (kernels/flash-attention.cu)
//   flashAttentionBackward  dq, dk, dv from q, k, v, out, dOut and that log-sum-exp
//                           (kernels/flash-attention-backward.cu)
//   mlaDecode               absorbed MLA attention over the latent cache, split over the
//                           sequence with a combine step when that fills the GPU better (kernels/mla-decode.cu)
//
// Head sizes are compile-time constants of the kernels: each distinct (padded) size compiles its
// own module on first use — once per context, then from the disk cache (compile.ts) — through
// ctx.kernels(file, { defines }). Every tensor is contiguous row-major BF16 unless stated, at a
// 16-byte aligned address, with head sizes that are multiples of 8.

import type { CudaContext } from './context.js';
import type { KernelFunction } from './compile.js';
import type { KernelArgType } from './launch.js';

const P: KernelArgType = 'ptr', I: KernelArgType = 'i32', F: KernelArgType = 'f32', L: KernelArgType = 'i64';

/** Keys per K/V tile of the forward and queries per tile of the backward; positions per decode tile. */
export const FLASH_TILE = 64;
export const MLA_BLOCK_N = 64;
/**
 * Query rows per block of the forward (FA_BM): 128 (8 warps) reads each K/V tile for twice the rows;
 * 64 (4 warps, two blocks an SM) makes twice the blocks for short sequences.
 */
export type FlashForwardBlock = 64 | 128;
/**
 * Keys per block of the backward (FAB_BN): 2·BN/16 warps, one block an SM. More keys a block divide
 * the dQ atomics and the Q, dO reloads (once per key block and query tile) at the same registers per
 * warp, with fewer registers per thread allowed: 96 and 128 take head sizes with Dk + Dv ≤ 320 only.
 */
export type FlashBackwardBlock = 64 | 96 | 128;
export const FLASH_FORWARD_BLOCKS: readonly FlashForwardBlock[] = [128, 64];
export const FLASH_BACKWARD_BLOCKS: readonly FlashBackwardBlock[] = [128, 96, 64];
/** The largest head size (Dk or Dv) the attention kernels take. */
export const FLASH_MAX_HEAD_DIM = 256;

/** The kernels launched here: file and parameter C types in order (checked against the sources by a test). */
export const FLASH_KERNELS = {
  // q, k, v, out, lse; Tq, Tk, Skv, H, Dk, Dv; scale; qStart
  flash_attn_fwd: { file: 'flash-attention.cu', args: [P, P, P, P, P, I, I, I, I, I, I, F, I] },
  // out, dOut, Dsum; rows, Tq, H, Dv
  flash_attn_bwd_dot: { file: 'flash-attention-backward.cu', args: [P, P, P, I, I, I, I] },
  // q, k, v, dOut, lse, Dsum, dqAcc, dk, dv; gradF32, Tq, Tk, H, Dk, Dv; scale; qStart
  flash_attn_bwd: { file: 'flash-attention-backward.cu', args: [P, P, P, P, P, P, P, P, P, I, I, I, I, I, I, F, I] },
  // src, dst; n
  flash_attn_bwd_dq_convert: { file: 'flash-attention-backward.cu', args: [P, P, L] },
  // qLat, qPe, ckv, kpe, positions, out, oPart, lsePart; Tq, H, S, kvLen, qStart, tilesPerSplit; scale
  mla_decode: { file: 'mla-decode.cu', args: [P, P, P, P, P, P, P, P, I, I, I, I, I, I, F] },
  // oPart, lsePart, out; splits, rowsTotal, C
  mla_decode_combine: { file: 'mla-decode.cu', args: [P, P, P, I, I, I] },
} as const satisfies Record<string, { file: string; args: readonly KernelArgType[] }>;

type FlashKernelName = keyof typeof FLASH_KERNELS;

/** Kernel `name` of the module compiled with `defines` (once per context and defines). */
function flashKernel(ctx: CudaContext, name: FlashKernelName, defines: Record<string, number>): KernelFunction {
  const spec = FLASH_KERNELS[name];
  return ctx.kernels(spec.file, { defines }).fn(name, spec.args);
}

function roundUp(x: number, m: number): number {
  return Math.ceil(x / m) * m;
}

function checkCount(what: string, x: number, min = 0): void {
  if (!Number.isInteger(x) || x < min || x > 2 ** 31 - 1) throw new Error(`${what}: ${x} is not an integer in [${min}, 2^31)`);
}

function checkPointer(op: string, name: string, p: number, align: number): void {
  if (!Number.isInteger(p) || p <= 0) throw new Error(`${op}: ${name} is not a device pointer (${p})`);
  if (p % align !== 0) throw new Error(`${op}: ${name} at 0x${p.toString(16)} is not ${align}-byte aligned`);
}

function checkHeadDim(op: string, name: string, d: number): void {
  if (!Number.isInteger(d) || d < 8 || d > FLASH_MAX_HEAD_DIM || d % 8 !== 0) {
    throw new Error(`${op}: ${name} = ${d} (the kernels take multiples of 8 up to ${FLASH_MAX_HEAD_DIM})`);
  }
}

/** The sizes and the softmax scale of causal attention, forward and backward. */
export interface AttentionShape {
  B: number;
  Tq: number;
  Tk: number;
  H: number;
  Dk: number;
  Dv: number;
  scale: number;
  /** Query i sits at absolute position qStart + i and sees keys j ≤ qStart + i, j < Tk. */
  qStart: number;
}

/** The checks of an AttentionShape that the forward and the backward share. */
function checkAttentionShape(op: string, a: AttentionShape): void {
  for (const name of ['B', 'Tq', 'Tk', 'H', 'qStart'] as const) checkCount(`${op}: ${name}`, a[name]);
  checkHeadDim(op, 'Dk', a.Dk);
  checkHeadDim(op, 'Dv', a.Dv);
  if (!(a.scale > 0 && Number.isFinite(a.scale))) throw new Error(`${op}: scale ${a.scale} (must be positive)`);
  if (a.B * a.H > 2 ** 31 - 1) throw new Error(`${op}: B·H = ${a.B * a.H} (below 2^31)`);
}

/** Raise the function's dynamic shared memory limit once (per function and size). */
const sharedLimits = new WeakMap<KernelFunction, number>();
function prepareShared(ctx: CudaContext, op: string, fn: KernelFunction, bytes: number): void {
  if (bytes > ctx.maxSharedMemoryPerBlockOptin) {
    throw new Error(`${op}: needs ${bytes} bytes of shared memory per block, the GPU allows ${ctx.maxSharedMemoryPerBlockOptin}`);
  }
  if (bytes > 48 * 1024 && (sharedLimits.get(fn) ?? 0) < bytes) {
    fn.setMaxDynamicSharedBytes(bytes);
    sharedLimits.set(fn, bytes);
  }
}

// ---- forward ------------------------------------------------------------------------------------

/** Dynamic shared memory of flash_attn_fwd for padded head sizes and `blockM` rows (see fa::SHARED_BYTES). */
export function flashForwardSharedBytes(dkPad: number, dvPad: number, blockM: FlashForwardBlock): number {
  return (blockM * (dkPad + 8) + 2 * FLASH_TILE * (dkPad + 8) + 2 * FLASH_TILE * (dvPad + 8)) * 2;
}

/** Blocks a grid column may hold (gridDim.y). */
function checkGridRows(op: string, what: string, blocks: number): void {
  if (blocks > 65535) throw new Error(`${op}: ${blocks} blocks of ${what} (at most 65535)`);
}

export interface FlashAttentionForwardArgs extends AttentionShape {
  /** [B, Tq, H, Dk] BF16. */
  q: number;
  /** [B, kvCapacity, H, Dk] BF16; positions [0, Tk) are used. */
  k: number;
  /** [B, kvCapacity, H, Dv] BF16. */
  v: number;
  /** [B, Tq, H, Dv] BF16, written. */
  out: number;
  /** [B, H, Tq] FP32, written: ln Σ_j exp(scale · q_i·k_j) over the keys row i sees (−inf if none); 0 to skip. */
  lse: number;
  /** Sequence length of the k and v tensors (default Tk). */
  kvCapacity?: number;
  /** Query rows per block (default: 128 when that still gives every SM a block, else 64). */
  blockM?: FlashForwardBlock;
}

/** The forward's rows per block: `a.blockM` if given, else 128 when B·H·⌈Tq/128⌉ blocks cover the SMs. */
export function flashForwardBlock(ctx: Pick<CudaContext, 'smCount'>, a: Pick<FlashAttentionForwardArgs, 'B' | 'H' | 'Tq' | 'blockM'>): FlashForwardBlock {
  if (a.blockM !== undefined) {
    if (!FLASH_FORWARD_BLOCKS.includes(a.blockM)) throw new Error(`flashAttentionForward: blockM ${String(a.blockM)} (one of ${FLASH_FORWARD_BLOCKS.join(', ')})`);
    return a.blockM;
  }
  return a.B * a.H * Math.ceil(a.Tq / 128) >= ctx.smCount ? 128 : 64;
}

/** Causal attention forward: out = softmax(scale · q kᵀ, causal) v, and the row log-sum-exp. */
export function flashAttentionForward(ctx: CudaContext, a: FlashAttentionForwardArgs): void {
  const op = 'flashAttentionForward';
  const { B, Tq, Tk, H, Dk, Dv, scale, qStart } = a;
  const Skv = a.kvCapacity ?? Tk;
  checkAttentionShape(op, a);
  checkCount(`${op}: kvCapacity`, Skv);
  if (Skv < Tk) throw new Error(`${op}: ${Tk} keys in tensors of ${Skv} positions`);
  const blockM = flashForwardBlock(ctx, a);
  if (B === 0 || Tq === 0 || H === 0) return;
  for (const [name, p] of [['q', a.q], ['out', a.out]] as const) checkPointer(op, name, p, 16);
  if (Tk > 0) for (const [name, p] of [['k', a.k], ['v', a.v]] as const) checkPointer(op, name, p, 16);
  if (a.lse !== 0) checkPointer(op, 'lse', a.lse, 4);
  const rowBlocks = Math.ceil(Tq / blockM);
  checkGridRows(op, `${blockM} queries`, rowBlocks);
  const dkPad = roundUp(Dk, 16), dvPad = roundUp(Dv, 16);
  const fn = flashKernel(ctx, 'flash_attn_fwd', { FA_DK: dkPad, FA_DV: dvPad, FA_BM: blockM });
  const shared = flashForwardSharedBytes(dkPad, dvPad, blockM);
  prepareShared(ctx, op, fn, shared);
  // x = b·H + h, y = the query block (the kernel takes the last first).
  fn.launch(ctx.stream, [B * H, rowBlocks], 2 * blockM, shared, [a.q, a.k, a.v, a.out, a.lse, Tq, Tk, Skv, H, Dk, Dv, scale, qStart]);
}

// ---- backward -----------------------------------------------------------------------------------

/** Dynamic shared memory of flash_attn_bwd for padded head sizes and `blockN` keys (see fab::SHARED_BYTES). */
export function flashBackwardSharedBytes(dkPad: number, dvPad: number, blockN: FlashBackwardBlock): number {
  const M = FLASH_TILE, N = blockN;
  const queryTile = M * (dkPad + 8) * 2 + M * (dvPad + 8) * 2 + 2 * M * 4; // Q, dO, lse, D
  const keys = N * (dkPad + 8) * 2 + N * (dvPad + 8) * 2;                   // K, V
  return 2 * queryTile + keys + 2 * N * (M + 8) * 2;                        // two query tiles, Pᵀ, dSᵀ
}

/**
 * The backward's padded head sizes for `blockN` keys a block: Dv to a multiple of 32, Dk to a
 * multiple of 32 that splits into BN/32 dQ column parts of whole 16-column steps (fab::DKQ).
 */
export function flashBackwardPadding(Dk: number, Dv: number, blockN: FlashBackwardBlock): { dkPad: number; dvPad: number } {
  const part = (16 * blockN) / 32;
  return { dkPad: roundUp(Dk, (32 * part) / gcd(32, part)), dvPad: roundUp(Dv, 32) };
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** Whether the backward takes `blockN` keys a block for these head sizes (registers: Dk + Dv ≤ 320 beyond 64 keys). */
export function flashBackwardBlockFits(Dk: number, Dv: number, blockN: FlashBackwardBlock): boolean {
  const { dkPad, dvPad } = flashBackwardPadding(Dk, Dv, blockN);
  return blockN === 64 || dkPad + dvPad <= 320;
}

export interface FlashAttentionBackwardArgs extends AttentionShape {
  /** [B, Tq, H, Dk], [B, Tk, H, Dk], [B, Tk, H, Dv] BF16: the forward's inputs. */
  q: number;
  k: number;
  v: number;
  /** [B, Tq, H, Dv] BF16: the forward's output. */
  out: number;
  /** [B, Tq, H, Dv] BF16: the gradient of the output. */
  dOut: number;
  /** [B, H, Tq] FP32: the forward's log-sum-exp. */
  lse: number;
  /** Written: dq [B, Tq, H, Dk], dk [B, Tk, H, Dk], dv [B, Tk, H, Dv], in `gradType`. */
  dq: number;
  dk: number;
  dv: number;
  /** Storage of dq, dk, dv: 'bf16' (default) or 'f32'. */
  gradType?: 'bf16' | 'f32';
  /** Keys per block (default: 128 where the head sizes allow it and B·H·⌈Tk/128⌉ blocks cover the SMs, else 64). */
  blockN?: FlashBackwardBlock;
}

/** The backward's keys per block: `a.blockN` if given (an error where the head sizes don't allow it), else the default above. */
export function flashBackwardBlock(ctx: Pick<CudaContext, 'smCount'>, a: Pick<FlashAttentionBackwardArgs, 'B' | 'H' | 'Tk' | 'Dk' | 'Dv' | 'blockN'>): FlashBackwardBlock {
  const op = 'flashAttentionBackward';
  if (a.blockN !== undefined) {
    if (!FLASH_BACKWARD_BLOCKS.includes(a.blockN)) throw new Error(`${op}: blockN ${String(a.blockN)} (one of ${FLASH_BACKWARD_BLOCKS.join(', ')})`);
    if (!flashBackwardBlockFits(a.Dk, a.Dv, a.blockN)) throw new Error(`${op}: blockN ${a.blockN} takes Dk + Dv ≤ 320 (padded), not Dk = ${a.Dk}, Dv = ${a.Dv}`);
    return a.blockN;
  }
  return flashBackwardBlockFits(a.Dk, a.Dv, 128) && a.B * a.H * Math.ceil(a.Tk / 128) >= ctx.smCount ? 128 : 64;
}

/**
 * Causal attention backward (FlashAttention-2): D = rowsum(dOut ∘ out), then one pass over key
 * blocks that accumulates dk, dv in registers and adds dq into an FP32 buffer with atomics
 * (so dq's low bits vary between runs; dk and dv are deterministic), then dq → BF16 if asked.
 * Temporary device memory: B·H·Tq floats, plus B·Tq·H·Dk floats for BF16 gradients.
 */
export function flashAttentionBackward(ctx: CudaContext, a: FlashAttentionBackwardArgs): void {
  const op = 'flashAttentionBackward';
  const { B, Tq, Tk, H, Dk, Dv, scale, qStart } = a;
  const gradType = a.gradType ?? 'bf16';
  checkAttentionShape(op, a);
  if (gradType !== 'bf16' && gradType !== 'f32') throw new Error(`${op}: gradType ${String(gradType)}`);
  const blockN = flashBackwardBlock(ctx, a);
  const rows = B * Tq * H;
  checkCount(`${op}: B·Tq·H`, rows);
  if (B === 0 || H === 0 || (Tq === 0 && Tk === 0)) return;
  const gradBytes = gradType === 'f32' ? 4 : 2;
  if (Tq > 0) {
    for (const [name, p] of [['q', a.q], ['out', a.out], ['dOut', a.dOut]] as const) checkPointer(op, name, p, 16);
    checkPointer(op, 'lse', a.lse, 4);
    checkPointer(op, 'dq', a.dq, 8);
  }
  if (Tk > 0) {
    for (const [name, p] of [['k', a.k], ['v', a.v]] as const) checkPointer(op, name, p, 16);
    for (const [name, p] of [['dk', a.dk], ['dv', a.dv]] as const) checkPointer(op, name, p, 8);
  }
  const dqElems = rows * Dk;
  if (Tk === 0) {
    // No keys: every gradient is zero (dk, dv are empty).
    ctx.memset8(a.dq, 0, dqElems * gradBytes);
    return;
  }
  const keyBlocks = Math.ceil(Tk / blockN);
  checkGridRows(op, `${blockN} keys`, keyBlocks);
  const { dkPad, dvPad } = flashBackwardPadding(Dk, Dv, blockN);
  const defines = { FAB_DK: dkPad, FAB_DV: dvPad, FAB_BN: blockN };
  const dot = flashKernel(ctx, 'flash_attn_bwd_dot', defines);
  const main = flashKernel(ctx, 'flash_attn_bwd', defines);
  const shared = flashBackwardSharedBytes(dkPad, dvPad, blockN);
  prepareShared(ctx, op, main, shared);

  const dsum = ctx.alloc(4 * Math.max(1, B * H * Tq));
  const dqAcc = gradType === 'f32' ? a.dq : ctx.alloc(4 * Math.max(1, dqElems));
  try {
    if (rows > 0) {
      dot.launch(ctx.stream, Math.ceil(rows / 8), 256, 0, [a.out, a.dOut, dsum, rows, Tq, H, Dv]);
      ctx.memset32(dqAcc, 0, dqElems);
    }
    // x = b·H + h, y = the key block (block 0, the most query tiles, first for every head).
    main.launch(ctx.stream, [B * H, keyBlocks], (2 * blockN / 16) * 32, shared, [
      a.q, a.k, a.v, a.dOut, a.lse, dsum, dqAcc, a.dk, a.dv, gradType === 'f32' ? 1 : 0, Tq, Tk, H, Dk, Dv, scale, qStart,
    ]);
    if (gradType === 'bf16' && dqElems > 0) {
      const grid = Math.max(1, Math.min(Math.ceil(dqElems / 2 / 256), ctx.smCount * 16));
      flashKernel(ctx, 'flash_attn_bwd_dq_convert', defines).launch(ctx.stream, grid, 256, 0, [dqAcc, a.dq, dqElems]);
    }
  } finally {
    ctx.free(dsum);
    if (dqAcc !== a.dq) ctx.free(dqAcc);
  }
}

// ---- MLA decode ---------------------------------------------------------------------------------

/** Dynamic shared memory of mla_decode (see mla::SHARED_BYTES). */
export function mlaDecodeSharedBytes(C: number, R: number, mt: number): number {
  const dk = roundUp(C + R, 16), mr = 16 * mt, warps = 8;
  return mr * (dk + 8) * 2 + 2 * MLA_BLOCK_N * (dk + 8) * 2 + mr * (MLA_BLOCK_N + 8) * 2 + 2 * warps * mr * 4;
}

export interface MlaDecodeArgs {
  /** [B, Tq, H, C] BF16: queries absorbed into the latent space. */
  qLat: number;
  /** [B, Tq, H, R] BF16: the rotary part of the queries (0 when R = 0). */
  qPe: number;
  /** [B, S, C] BF16: the latent cache (also the values). */
  ckv: number;
  /** [B, S, R] BF16: the rotary key cache (0 when R = 0). */
  kpe: number;
  /** [B, Tq, H, C] BF16, written. */
  out: number;
  B: number;
  Tq: number;
  H: number;
  C: number;
  R: number;
  /** Cache capacity (positions per batch row); the first kvLen are valid. */
  S: number;
  /** Positions that may be valid: what the split plan covers (S when `positions` decides on the device). */
  kvLen: number;
  scale: number;
  /**
   * [B·Tq] i32 (device): token t of batch row b sits at positions[b·Tq + t]; or 0, and token t sits
   * at qStart + t. It sees positions j up to its own, j < kvLen.
   */
  positions?: number;
  qStart: number;
  /** Split the positions over this many blocks per row group (default: enough to fill the GPU). */
  splits?: number;
}

export interface MlaDecodePlan {
  /** Query rows per block / 16 (1 for up to 16 rows of Tq·H, else 2). */
  mt: number;
  rowBlocks: number;
  splits: number;
  tilesPerSplit: number;
  sharedBytes: number;
}

/** How mlaDecode divides the work (exported for tests and benchmarks). */
export function mlaDecodePlan(ctx: CudaContext, a: Pick<MlaDecodeArgs, 'B' | 'Tq' | 'H' | 'C' | 'R' | 'kvLen' | 'qStart' | 'positions' | 'splits'>): MlaDecodePlan {
  const rows = a.Tq * a.H;
  const mt = rows <= 16 ? 1 : 2;
  const rowBlocks = Math.ceil(rows / (16 * mt));
  // positions on the device: the plan covers all kvLen, the same at every position (graph capture)
  const visible = a.positions ? a.kvLen : Math.max(0, Math.min(a.kvLen, a.qStart + a.Tq));
  const tiles = Math.ceil(visible / MLA_BLOCK_N);
  let splits: number;
  if (a.splits !== undefined) {
    if (!Number.isInteger(a.splits) || a.splits < 1) throw new Error(`mlaDecode: splits ${a.splits}`);
    splits = a.splits;
  } else {
    // One block per SM fits (the tiles are large): split until the blocks cover the SMs once.
    splits = Math.ceil(ctx.smCount / Math.max(1, a.B * rowBlocks));
  }
  splits = Math.max(1, Math.min(splits, tiles, 65535));
  const tilesPerSplit = Math.max(1, Math.ceil(tiles / splits));
  splits = Math.max(1, Math.ceil(tiles / tilesPerSplit));
  return { mt, rowBlocks, splits, tilesPerSplit, sharedBytes: mlaDecodeSharedBytes(a.C, a.R, mt) };
}

/**
 * Absorbed MLA attention over the latent cache (Backend.mlaLatentAttention semantics):
 * score = (qLat·ckv_j + qPe·kpe_j)·scale, causal, out = Σ_j p_j ckv_j. Every cache row is read once
 * per block of 16 or 32 (token, head) rows; with several splits the partial results (FP32,
 * temporary device memory of splits·B·Tq·H·(C + 1) floats) are merged by a second kernel.
 */
export function mlaDecode(ctx: CudaContext, a: MlaDecodeArgs): void {
  const op = 'mlaDecode';
  const { B, Tq, H, C, R, S, kvLen, scale, qStart } = a;
  for (const name of ['B', 'Tq', 'H', 'S', 'kvLen', 'qStart'] as const) checkCount(`${op}: ${name}`, a[name]);
  if (!Number.isInteger(C) || C < 16 || C % 16 !== 0) throw new Error(`${op}: C = ${C} (a positive multiple of 16)`);
  if (!Number.isInteger(R) || R < 0 || R % 8 !== 0) throw new Error(`${op}: R = ${R} (a multiple of 8)`);
  if (kvLen > S) throw new Error(`${op}: kvLen ${kvLen} beyond the cache capacity ${S}`);
  if (!(scale > 0 && Number.isFinite(scale))) throw new Error(`${op}: scale ${scale} (must be positive)`);
  if (B > 65535) throw new Error(`${op}: B = ${B} (at most 65535)`);
  const rows = Tq * H;
  checkCount(`${op}: B·Tq·H`, B * rows);
  if (B === 0 || rows === 0) return;
  checkPointer(op, 'qLat', a.qLat, 16);
  checkPointer(op, 'out', a.out, 16);
  if (kvLen > 0) checkPointer(op, 'ckv', a.ckv, 16);
  if (R > 0) {
    checkPointer(op, 'qPe', a.qPe, 16);
    if (kvLen > 0) checkPointer(op, 'kpe', a.kpe, 16);
  }
  const positions = a.positions ?? 0;
  if (positions !== 0) checkPointer(op, 'positions', positions, 4);
  const plan = mlaDecodePlan(ctx, a);
  const defines = { MLA_C: C, MLA_R: R, MLA_MT: plan.mt };
  const fn = flashKernel(ctx, 'mla_decode', defines);
  prepareShared(ctx, op, fn, plan.sharedBytes);
  const grid = [plan.rowBlocks, plan.splits, B] as const;
  // qPe / kpe are never read when R = 0: pass a valid address anyway.
  const qPe = R > 0 ? a.qPe : a.qLat, kpe = R > 0 ? a.kpe : a.ckv;
  if (plan.splits === 1) {
    fn.launch(ctx.stream, grid, 256, plan.sharedBytes, [a.qLat, qPe, a.ckv, kpe, positions, a.out, 0, 0, Tq, H, S, kvLen, qStart, plan.tilesPerSplit, scale]);
    return;
  }
  const total = B * rows;
  const oPart = ctx.alloc(4 * plan.splits * total * C);
  const lsePart = ctx.alloc(4 * plan.splits * total);
  try {
    fn.launch(ctx.stream, grid, 256, plan.sharedBytes, [a.qLat, qPe, a.ckv, kpe, positions, a.out, oPart, lsePart, Tq, H, S, kvLen, qStart, plan.tilesPerSplit, scale]);
    flashKernel(ctx, 'mla_decode_combine', defines).launch(ctx.stream, total, Math.min(256, roundUp(C, 32)), 0, [oPart, lsePart, a.out, plan.splits, total, C]);
  } finally {
    ctx.free(oPart);
    ctx.free(lsePart);
  }
}
