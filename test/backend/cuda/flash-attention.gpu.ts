// The tensor-core attention kernels (flash-attention.ts) against the CPU references of
// src/backend/cpu on fresh random BF16 inputs: the causal forward and its log-sum-exp, the
// backward (BF16 and FP32 gradients), and MLA decoding over a latent cache (one block and split
// over the sequence). Shapes cover the DeepSeek-V3 sizes (Dk 192, Dv 128; C 512, R 64), small head
// sizes padded inside the kernels, sequence tails, queries after cached keys (qStart > 0), keys
// past the last query and fewer keys than the last query's position; the forward runs with every
// block size (rows a block) and the backward with every block size (keys a block) the head sizes
// allow, each against the same reference. Skipped with the reason where there is no GPU.
//
// Tolerances: P (and dS in the backward) are BF16 operands of the tensor-core products, as in
// FlashAttention-2, and the outputs are BF16, so single elements stray up to ~1-2% of the tensor's
// RMS while the error over the whole tensor stays at BF16 precision; both are checked.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CudaContext } from '../../../src/backend/cuda/context.js';
import type { KernelArgType } from '../../../src/backend/cuda/launch.js';
import { kernelDir } from '../../../src/backend/cuda/compile.js';
import {
  FLASH_BACKWARD_BLOCKS, FLASH_FORWARD_BLOCKS, FLASH_KERNELS, flashAttentionForward, flashAttentionBackward, flashBackwardBlock,
  flashBackwardBlockFits, flashForwardBlock, mlaDecode, mlaDecodePlan, type AttentionShape, type FlashAttentionForwardArgs,
  type FlashForwardBlock, type MlaDecodeArgs,
} from '../../../src/backend/cuda/flash-attention.js';
import { causalAttention, latentAttention } from '../../../src/backend/cpu/attention.js';
import { causalAttentionBackward } from '../../../src/backend/cpu/training-ops.js';
import { openGpu, seededRandom, randomNormal, roundBf16, uploadAs, downloadAs, assertClose, type Rng } from './gpu-helpers.js';

const { ctx, skip } = openGpu();
after(() => ctx?.dispose());

test('the launchers\' argument lists match the kernels\' extern "C" signatures (no GPU needed)', () => {
  const cType = (p: string): KernelArgType => {
    if (p.includes('*')) return 'ptr';
    const type = p.replace(/\s+\w+$/, '').replace(/\bconst\b/g, '').trim();
    const types: Record<string, KernelArgType> = { int: 'i32', unsigned: 'u32', float: 'f32', double: 'f64', i64: 'i64', 'long long': 'i64' };
    const t = types[type];
    if (!t) throw new Error(`unknown parameter type '${type}'`);
    return t;
  };
  for (const [name, spec] of Object.entries(FLASH_KERNELS)) {
    const source = readFileSync(join(kernelDir(), spec.file), 'utf8');
    const m = new RegExp(`extern\\s+"C"\\s+__global__\\s+void\\s+(?:__launch_bounds__\\([^)]*\\)\\s+)?${name}\\s*\\(([^)]*)\\)`).exec(source);
    assert.ok(m, `${name} is defined in ${spec.file}`);
    const params = m[1]!.split(',').map((p) => p.trim()).filter((p) => p.length > 0).map(cType);
    assert.deepEqual(params, [...spec.args], `${name}(${params.join(', ')})`);
  }
});

const FWD_MAX = 2e-2, BWD_MAX = 4e-2, RMS = 6e-3;

/** Worst elementwise error (as assertClose) and ‖got − want‖ / ‖want‖ ≤ rmsTol. */
function check(what: string, got: ArrayLike<number>, want: ArrayLike<number>, maxTol: number, seed: number, rmsTol = RMS): void {
  assertClose(what, got, want, maxTol, seed);
  let se = 0, ss = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i]! - want[i]!;
    se += d * d;
    ss += want[i]! * want[i]!;
  }
  const rel = Math.sqrt(se / Math.max(ss, 1e-300));
  console.log(`# ${what}: relative RMS error ${rel.toExponential(2)}`);
  assert.ok(rel <= rmsTol, `${what}: relative RMS error ${rel} exceeds ${rmsTol} (seed ${seed})`);
}

const f64 = (x: Float32Array) => Float64Array.from(x);

/** The sizes of a forward or backward case (each call adds its scale). */
type AttnShape = Omit<AttentionShape, 'scale'> & Pick<FlashAttentionForwardArgs, 'kvCapacity'>;

const label = (s: AttnShape) =>
  `B=${s.B} Tq=${s.Tq} Tk=${s.Tk} H=${s.H} Dk=${s.Dk} Dv=${s.Dv} qStart=${s.qStart}${s.kvCapacity ? ` capacity=${s.kvCapacity}` : ''}`;

/** BF16-exact random inputs of one shape, on the host and the device. */
function attentionInputs(c: CudaContext, rng: Rng, s: AttnShape) {
  const S = s.kvCapacity ?? s.Tk;
  const q = roundBf16(randomNormal(rng, s.B * s.Tq * s.H * s.Dk));
  const k = roundBf16(randomNormal(rng, s.B * S * s.H * s.Dk));
  const v = roundBf16(randomNormal(rng, s.B * S * s.H * s.Dv));
  const dOut = roundBf16(randomNormal(rng, s.B * s.Tq * s.H * s.Dv));
  const dev = { q: uploadAs(c, 'bf16', q), k: uploadAs(c, 'bf16', k), v: uploadAs(c, 'bf16', v), dOut: uploadAs(c, 'bf16', dOut) };
  return { q, k, v, dOut, dev };
}

/** The first Tk of S positions of x [B, S, H, D]. */
function firstPositions(x: Float32Array, B: number, S: number, Tk: number, rowElems: number): Float32Array {
  const out = new Float32Array(B * Tk * rowElems);
  for (let b = 0; b < B; b++) out.set(x.subarray(b * S * rowElems, (b * S + Tk) * rowElems), b * Tk * rowElems);
  return out;
}

/** FP64 log-sum-exp of scale·q_i·k_j over the keys each row sees: [B, H, Tq]. */
function referenceLse(q: Float32Array, k: Float32Array, s: AttnShape, scale: number): Float64Array {
  const { B, Tq, Tk, H, Dk } = s;
  const out = new Float64Array(B * H * Tq);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tq; i++) {
        const end = Math.min(Tk, s.qStart + i + 1);
        const scores = new Float64Array(end);
        let max = -Infinity;
        for (let j = 0; j < end; j++) {
          let d = 0;
          const qo = ((b * Tq + i) * H + h) * Dk, ko = ((b * Tk + j) * H + h) * Dk;
          for (let c = 0; c < Dk; c++) d += q[qo + c]! * k[ko + c]!;
          scores[j] = d * scale;
          if (scores[j]! > max) max = scores[j]!;
        }
        let sum = 0;
        for (let j = 0; j < end; j++) sum += Math.exp(scores[j]! - max);
        out[(b * H + h) * Tq + i] = end > 0 ? max + Math.log(sum) : -Infinity;
      }
    }
  }
  return out;
}

/** Random inputs of one shape (host and device) and the keys and values the reference takes: [B, Tk, H, D]. */
function forwardInputs(c: CudaContext, s: AttnShape, rng: Rng) {
  const scale = 1 / Math.sqrt(s.Dk);
  const inputs = attentionInputs(c, rng, s);
  const S = s.kvCapacity ?? s.Tk;
  const k = S === s.Tk ? inputs.k : firstPositions(inputs.k, s.B, S, s.Tk, s.H * s.Dk);
  const v = S === s.Tk ? inputs.v : firstPositions(inputs.v, s.B, S, s.Tk, s.H * s.Dv);
  return { scale, inputs, k, v };
}

/** The forward on those inputs with `blockM` rows a block (default: the launcher's choice); out and lse on the device and downloaded. */
function runForward(c: CudaContext, s: AttnShape, f: ReturnType<typeof forwardInputs>, blockM?: FlashForwardBlock) {
  const outElems = s.B * s.Tq * s.H * s.Dv;
  const out = c.alloc(2 * outElems), lse = c.alloc(4 * s.B * s.H * s.Tq);
  flashAttentionForward(c, {
    ...f.inputs.dev, out, lse, B: s.B, Tq: s.Tq, Tk: s.Tk, H: s.H, Dk: s.Dk, Dv: s.Dv, scale: f.scale, qStart: s.qStart, kvCapacity: s.kvCapacity, blockM,
  });
  return { out, lse, gotOut: downloadAs(c, 'bf16', out, outElems), gotLse: downloadAs(c, 'f32', lse, s.B * s.H * s.Tq) };
}

function freeAll(c: CudaContext, ptrs: number[]): void {
  for (const p of ptrs) c.free(p);
}

const FORWARD_SHAPES: AttnShape[] = [
  { B: 1, Tq: 300, Tk: 300, H: 2, Dk: 192, Dv: 128, qStart: 0 },   // DeepSeek-V3 head sizes, a 44-row tail
  { B: 2, Tq: 64, Tk: 64, H: 4, Dk: 48, Dv: 24, qStart: 0 },       // small dims, padded to 48 / 32
  { B: 2, Tq: 128, Tk: 128, H: 4, Dk: 48, Dv: 32, qStart: 0 },     // the tiny preset's heads
  { B: 2, Tq: 37, Tk: 100, H: 3, Dk: 64, Dv: 64, qStart: 63 },     // a block of queries after 63 cached keys
  { B: 2, Tq: 20, Tk: 130, H: 3, Dk: 64, Dv: 56, qStart: 50 },     // keys past the last query are masked
  { B: 1, Tq: 1, Tk: 200, H: 2, Dk: 192, Dv: 128, qStart: 199 },   // one decoding step
  { B: 1, Tq: 5, Tk: 70, H: 2, Dk: 96, Dv: 64, qStart: 65, kvCapacity: 90 }, // a cache larger than its contents
  { B: 1, Tq: 130, Tk: 130, H: 1, Dk: 256, Dv: 256, qStart: 0 },   // the largest heads (Q re-read from shared memory)
  { B: 2, Tq: 200, Tk: 150, H: 2, Dk: 192, Dv: 128, qStart: 20 },  // fewer keys than the last queries' positions
];

test('flashAttentionForward matches the CPU reference (output and log-sum-exp), every block size', { skip }, () => {
  const c = ctx!;
  for (const s of FORWARD_SHAPES) {
    const rng = seededRandom();
    const f = forwardInputs(c, s, rng);
    const want = new Float64Array(s.B * s.Tq * s.H * s.Dv);
    causalAttention(f64(f.inputs.q), f64(f.k), f64(f.v), want, new Float64Array(s.Tq * s.Tk), s, f.scale, s.qStart);
    const wantLse = referenceLse(f.inputs.q, f.k, s, f.scale);
    for (const blockM of FLASH_FORWARD_BLOCKS) {
      const r = runForward(c, s, f, blockM);
      check(`forward out ${label(s)} blockM=${blockM}`, r.gotOut, want, FWD_MAX, rng.seed);
      assertClose(`forward lse ${label(s)} blockM=${blockM}`, r.gotLse, wantLse, 1e-4, rng.seed);
      freeAll(c, [r.out, r.lse]);
    }
    freeAll(c, [f.inputs.dev.q, f.inputs.dev.k, f.inputs.dev.v, f.inputs.dev.dOut]);
  }
});

test('flashAttentionForward with no keys gives zeros and a log-sum-exp of −inf', { skip }, () => {
  const c = ctx!;
  const s: AttnShape = { B: 1, Tq: 3, Tk: 0, H: 2, Dk: 64, Dv: 64, qStart: 0 };
  const q = c.alloc(2 * s.Tq * s.H * s.Dk), out = c.alloc(2 * s.Tq * s.H * s.Dv), lse = c.alloc(4 * s.H * s.Tq);
  c.memset8(q, 0, 2 * s.Tq * s.H * s.Dk);
  c.memset8(out, 0xff, 2 * s.Tq * s.H * s.Dv);
  flashAttentionForward(c, { q, k: 0, v: 0, out, lse, ...s, scale: 0.125 });
  assert.ok(downloadAs(c, 'bf16', out, s.Tq * s.H * s.Dv).every((x) => x === 0));
  assert.ok(downloadAs(c, 'f32', lse, s.H * s.Tq).every((x) => x === -Infinity));
  freeAll(c, [q, out, lse]);
});

const BACKWARD_SHAPES: Array<AttnShape & { gradType: 'bf16' | 'f32' }> = [
  { B: 1, Tq: 300, Tk: 300, H: 2, Dk: 192, Dv: 128, qStart: 0, gradType: 'bf16' },
  { B: 1, Tq: 300, Tk: 300, H: 2, Dk: 192, Dv: 128, qStart: 0, gradType: 'f32' },
  { B: 2, Tq: 64, Tk: 64, H: 4, Dk: 48, Dv: 24, qStart: 0, gradType: 'bf16' },
  { B: 2, Tq: 128, Tk: 128, H: 4, Dk: 48, Dv: 32, qStart: 0, gradType: 'f32' },
  { B: 2, Tq: 37, Tk: 100, H: 3, Dk: 64, Dv: 64, qStart: 63, gradType: 'bf16' },
  { B: 2, Tq: 20, Tk: 130, H: 3, Dk: 64, Dv: 56, qStart: 50, gradType: 'f32' },
  { B: 1, Tq: 130, Tk: 130, H: 1, Dk: 256, Dv: 256, qStart: 0, gradType: 'bf16' },
  { B: 2, Tq: 200, Tk: 150, H: 2, Dk: 192, Dv: 128, qStart: 20, gradType: 'bf16' },
];

test('flashAttentionBackward matches the CPU reference (dq, dk, dv), every block size the head sizes allow', { skip }, () => {
  const c = ctx!;
  for (const s of BACKWARD_SHAPES) {
    const rng = seededRandom();
    const f = forwardInputs(c, s, rng);
    const r = runForward(c, s, f);
    const e = s.gradType === 'f32' ? 4 : 2;
    const nq = s.B * s.Tq * s.H * s.Dk, nk = s.B * s.Tk * s.H * s.Dk, nv = s.B * s.Tk * s.H * s.Dv;
    const dq = c.alloc(e * nq), dk = c.alloc(e * nk), dv = c.alloc(e * nv);
    const want = { dq: new Float64Array(nq), dk: new Float64Array(nk), dv: new Float64Array(nv) };
    // The reference takes the GPU's (BF16) forward output, as the kernels do for D = rowsum(dO ∘ O).
    causalAttentionBackward(f64(f.inputs.q), f64(f.k), f64(f.v), f64(r.gotOut), f64(f.inputs.dOut), want.dq, want.dk, want.dv,
      new Float64Array(s.Tq * s.Tk), new Float64Array(s.Tq * s.Tk), s, f.scale, s.qStart);
    for (const blockN of FLASH_BACKWARD_BLOCKS.filter((n) => flashBackwardBlockFits(s.Dk, s.Dv, n))) {
      const args = {
        ...f.inputs.dev, out: r.out, lse: r.lse, dq, dk, dv, gradType: s.gradType, B: s.B, Tq: s.Tq, Tk: s.Tk, H: s.H, Dk: s.Dk, Dv: s.Dv,
        scale: f.scale, qStart: s.qStart, blockN,
      };
      flashAttentionBackward(c, args);
      const got = { dq: downloadAs(c, s.gradType, dq, nq), dk: downloadAs(c, s.gradType, dk, nk), dv: downloadAs(c, s.gradType, dv, nv) };
      for (const name of ['dq', 'dk', 'dv'] as const) {
        check(`backward ${name} ${s.gradType} ${label(s)} blockN=${blockN}`, got[name], want[name], BWD_MAX, rng.seed);
      }

      // dk and dv do not depend on the order of atomics: a second run gives the same bits.
      flashAttentionBackward(c, args);
      assert.deepEqual(downloadAs(c, s.gradType, dk, nk), got.dk, `dk is deterministic (blockN ${blockN}, seed ${rng.seed})`);
      assert.deepEqual(downloadAs(c, s.gradType, dv, nv), got.dv, `dv is deterministic (blockN ${blockN}, seed ${rng.seed})`);
    }
    freeAll(c, [f.inputs.dev.q, f.inputs.dev.k, f.inputs.dev.v, f.inputs.dev.dOut, r.out, r.lse, dq, dk, dv]);
  }
});

test('the block sizes: the largest that still covers the SMs, 64 keys for large heads (no GPU needed)', () => {
  const c = { smCount: 132 } as CudaContext;
  const v3 = { B: 1, H: 16, Tq: 4096, Tk: 4096, Dk: 192, Dv: 128 };
  assert.equal(flashForwardBlock(c, v3), 128);
  assert.equal(flashForwardBlock(c, { ...v3, Tq: 512 }), 64);      // 64 blocks of 128 rows leave SMs idle
  assert.equal(flashForwardBlock(c, { ...v3, blockM: 64 }), 64);
  assert.equal(flashBackwardBlock(c, v3), 128);
  assert.equal(flashBackwardBlock(c, { ...v3, Tk: 512 }), 64);
  assert.equal(flashBackwardBlock(c, { ...v3, Dk: 256, Dv: 256 }), 64); // 128 dK, dV accumulators a thread: 8 warps only
  assert.equal(flashBackwardBlock(c, { ...v3, blockN: 96 }), 96);
  assert.ok(flashBackwardBlockFits(48, 24, 128) && !flashBackwardBlockFits(256, 128, 96));
});

type MlaShape = Pick<MlaDecodeArgs, 'B' | 'Tq' | 'H' | 'C' | 'R' | 'S' | 'kvLen' | 'qStart' | 'splits'>;

const MLA_SHAPES: MlaShape[] = [
  { B: 2, Tq: 1, H: 16, C: 512, R: 64, S: 1000, kvLen: 1000, qStart: 999 },            // DeepSeek-V3 decode, split to fill the GPU
  { B: 2, Tq: 1, H: 16, C: 512, R: 64, S: 1000, kvLen: 1000, qStart: 999, splits: 1 },  // the same in one pass
  { B: 2, Tq: 1, H: 16, C: 512, R: 64, S: 1000, kvLen: 1000, qStart: 999, splits: 7 },
  { B: 2, Tq: 2, H: 16, C: 512, R: 64, S: 1000, kvLen: 1000, qStart: 998 },            // two tokens (MTP verification): 32 rows a block
  { B: 3, Tq: 1, H: 16, C: 512, R: 64, S: 1000, kvLen: 700, qStart: 699 },             // a cache not yet full
  { B: 2, Tq: 3, H: 4, C: 64, R: 16, S: 50, kvLen: 40, qStart: 37 },                   // the tiny preset's latent sizes
  { B: 1, Tq: 40, H: 4, C: 64, R: 16, S: 100, kvLen: 100, qStart: 60, splits: 2 },     // prefill after a prefix: splits that some rows never see
  { B: 1, Tq: 2, H: 5, C: 96, R: 24, S: 300, kvLen: 250, qStart: 248 },                // C not a multiple of 128, C + R padded
];

test('mlaDecode matches the CPU reference of mlaLatentAttention', { skip }, () => {
  const c = ctx!;
  for (const s of MLA_SHAPES) {
    const rng = seededRandom();
    const rows = s.Tq * s.H;
    const scale = 1 / Math.sqrt(128 + s.R);
    const qLat = roundBf16(randomNormal(rng, s.B * rows * s.C, 0.5));
    const qPe = roundBf16(randomNormal(rng, s.B * rows * s.R));
    const ckv = roundBf16(randomNormal(rng, s.B * s.S * s.C));
    const kpe = roundBf16(randomNormal(rng, s.B * s.S * s.R));
    const dev = { qLat: uploadAs(c, 'bf16', qLat), qPe: uploadAs(c, 'bf16', qPe), ckv: uploadAs(c, 'bf16', ckv), kpe: uploadAs(c, 'bf16', kpe) };
    const out = c.alloc(2 * s.B * rows * s.C);
    const args = { ...dev, out, B: s.B, Tq: s.Tq, H: s.H, C: s.C, R: s.R, S: s.S, kvLen: s.kvLen, scale, qStart: s.qStart, splits: s.splits };
    const plan = mlaDecodePlan(c, args);
    mlaDecode(c, args);
    const got = downloadAs(c, 'bf16', out, s.B * rows * s.C);
    const want = new Float64Array(s.B * rows * s.C);
    latentAttention(f64(qLat), f64(qPe), f64(ckv), f64(kpe), want, new Float64Array(rows * s.kvLen), s, scale, s.qStart, s.kvLen);
    const what = `mlaDecode B=${s.B} Tq=${s.Tq} H=${s.H} C=${s.C} R=${s.R} S=${s.S} kvLen=${s.kvLen} qStart=${s.qStart} ` +
      `(${plan.splits} split${plan.splits === 1 ? '' : 's'} of ${plan.tilesPerSplit} tiles, ${16 * plan.mt} rows a block)`;
    check(what, got, want, FWD_MAX, rng.seed);
    freeAll(c, [dev.qLat, dev.qPe, dev.ckv, dev.kpe, out]);
  }
});

test('the launchers reject shapes and pointers the kernels cannot take (no GPU needed)', () => {
  // Every case fails its checks before the context is touched.
  const c = ctx ?? ({} as CudaContext);
  const base = { q: 256, k: 256, v: 256, out: 256, lse: 0, B: 1, Tq: 4, Tk: 4, H: 1, Dk: 64, Dv: 64, scale: 0.125, qStart: 0 };
  assert.throws(() => flashAttentionForward(c, { ...base, Dk: 60 }), /Dk = 60/);
  assert.throws(() => flashAttentionForward(c, { ...base, Dv: 264 }), /Dv = 264/);
  assert.throws(() => flashAttentionForward(c, { ...base, q: 258 }), /not 16-byte aligned/);
  assert.throws(() => flashAttentionForward(c, { ...base, kvCapacity: 3 }), /4 keys in tensors of 3/);
  assert.throws(() => flashAttentionForward(c, { ...base, scale: 0 }), /scale 0/);
  const grads = { dOut: 256, dq: 256, dk: 256, dv: 256 };
  assert.throws(() => flashAttentionBackward(c, { ...base, ...grads, Dv: 12 }), /Dv = 12/);
  assert.throws(() => flashAttentionBackward(c, { ...base, ...grads, dOut: 264 }), /dOut .* not 16-byte aligned/);
  assert.throws(() => flashAttentionForward(c, { ...base, blockM: 32 as FlashForwardBlock }), /blockM 32/);
  assert.throws(() => flashAttentionBackward(c, { ...base, ...grads, Dk: 256, Dv: 256, blockN: 128 }), /blockN 128 takes Dk \+ Dv ≤ 320/);
  const mla = { qLat: 256, qPe: 256, ckv: 256, kpe: 256, out: 256, B: 1, Tq: 1, H: 1, C: 64, R: 8, S: 8, kvLen: 8, scale: 1, qStart: 7 };
  assert.throws(() => mlaDecode(c, { ...mla, C: 40 }), /C = 40/);
  assert.throws(() => mlaDecode(c, { ...mla, R: 4 }), /R = 4/);
  assert.throws(() => mlaDecode(c, { ...mla, kvLen: 9 }), /beyond the cache capacity/);
});

test('mlaDecode splits the cache to cover the SMs (no GPU needed)', () => {
  const c = { smCount: 132 } as CudaContext;
  const v3 = { Tq: 1, H: 16, C: 512, R: 64, kvLen: 4096, qStart: 4095 };
  // One batch row: 64 tiles of 64 positions, one per block.
  assert.deepEqual(mlaDecodePlan(c, { ...v3, B: 1 }), { mt: 1, rowBlocks: 1, splits: 64, tilesPerSplit: 1, sharedBytes: 171520 });
  // 32 rows: 5 splits of 13 tiles fill 160 blocks.
  assert.deepEqual(mlaDecodePlan(c, { ...v3, B: 32 }), { mt: 1, rowBlocks: 1, splits: 5, tilesPerSplit: 13, sharedBytes: 171520 });
  // Two tokens × 16 heads: 32 rows a block; 128 heads: 4 row blocks.
  assert.equal(mlaDecodePlan(c, { ...v3, B: 1, Tq: 2, qStart: 4094 }).mt, 2);
  assert.equal(mlaDecodePlan(c, { ...v3, B: 1, Tq: 1, H: 128 }).rowBlocks, 4);
  // A fixed count is honoured up to one split per tile; an empty cache runs one block that writes zeros.
  assert.equal(mlaDecodePlan(c, { ...v3, B: 1, splits: 1 }).splits, 1);
  assert.equal(mlaDecodePlan(c, { ...v3, B: 1, kvLen: 100, qStart: 99, splits: 7 }).splits, 2);
  assert.deepEqual(mlaDecodePlan(c, { ...v3, B: 4, kvLen: 0, qStart: 0 }).splits, 1);
});
