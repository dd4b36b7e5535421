// Shared by the GPU tests (*.gpu.ts): open the GPU or say why not, seeded random data, BF16
// rounding on the host, device round trips and a tolerance check that prints the worst error.

import assert from 'node:assert/strict';
import { CudaContext } from '../../../src/backend/cuda/context.js';
import { seededRandom, type TestRandom } from '../../helpers/random.js';

export interface Gpu {
  ctx: CudaContext | undefined;
  /** false when the GPU is usable, else why the tests are skipped. */
  skip: string | false;
}

/** Create a context on device 0, or explain why there is none (no libcuda, no device, no libraries). */
export function openGpu(): Gpu {
  try {
    const ctx = CudaContext.create(0);
    return { ctx, skip: false };
  } catch (e) {
    const message = (e as Error).message;
    console.log(`# skipping GPU tests: ${message}`);
    // The skip line itself stays short: the library message up to the folders it searched.
    return { ctx: undefined, skip: `no usable GPU: ${message.split(': tried')[0]}` };
  }
}

// Random data seeded at random; the tests print the seed so that a failure can be replayed.
export { seededRandom };
export type Rng = TestRandom;

export function randomNormal(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40;
  return (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
}

export function fromBf16Bits(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

export function encodeBf16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = toBf16Bits(x[i]!);
  return out;
}

export function decodeBf16(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) out[i] = fromBf16Bits(h[i]!);
  return out;
}

/** x rounded to BF16 and back (what the GPU sees after a BF16 upload). */
export function roundBf16(x: Float32Array): Float32Array {
  return decodeBf16(encodeBf16(x));
}

export type Kind = 'bf16' | 'f32';

/** Upload x as `kind` (BF16 bits, or FP32 as is); returns the device pointer. */
export function uploadAs(ctx: CudaContext, kind: Kind, x: Float32Array): number {
  return kind === 'bf16' ? ctx.upload(encodeBf16(x)) : ctx.upload(x);
}

/** Download n values stored as `kind` at ptr, as FP32. */
export function downloadAs(ctx: CudaContext, kind: Kind, ptr: number, n: number): Float32Array {
  if (kind === 'f32') {
    const out = new Float32Array(n);
    ctx.copyToHost(out, ptr);
    return out;
  }
  const h = new Uint16Array(n);
  ctx.copyToHost(h, ptr);
  return decodeBf16(h);
}

export function downloadInt(ctx: CudaContext, ptr: number, n: number): Int32Array {
  const out = new Int32Array(n);
  ctx.copyToHost(out, ptr);
  return out;
}

/** Relative tolerance by storage type (DESIGN: FP32 ≈ 1e-5, BF16 ≈ 1e-2). */
export const RTOL: Record<Kind, number> = { bf16: 1e-2, f32: 1e-5 };

/**
 * |got − want| ≤ rtol · (|want| + rms(want)) elementwise; the rms term keeps values near zero
 * (cancellation in a sum) from demanding more than the storage type holds. Prints the worst error.
 */
export function assertClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, rtol: number, seed?: number): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let ss = 0;
  for (let i = 0; i < want.length; i++) ss += want[i]! * want[i]!;
  const rms = Math.sqrt(ss / Math.max(1, want.length));
  let worst = 0, worstAt = -1;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!) / (Math.abs(want[i]!) + rms + 1e-30);
    if (!(err <= worst)) {
      worst = err;
      worstAt = i;
    }
  }
  const seedNote = seed === undefined ? '' : ` (seed ${seed})`;
  console.log(`# ${what}: max relative error ${worst.toExponential(2)} over ${want.length} values${seedNote}`);
  assert.ok(worst <= rtol, `${what}: error ${worst} at ${worstAt} (got ${got[worstAt]}, want ${want[worstAt]}) exceeds ${rtol}${seedNote}`);
}
