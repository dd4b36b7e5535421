// Kernel-argument packing for cuLaunchKernel. Its `kernelParams` is a `void **`: an array whose
// i-th entry is the address of the i-th argument's value. The driver copies the values at
// launch (and at stream capture), so one native block per kernel can be reused for every launch:
//
//   slots    [8 bytes × n]  argument values, each in its own 8-byte slot (koffi.alloc: never moves)
//   pointers [8 bytes × n]  pointers[i] = address of slots[i], written once at construction
//
// A launch only writes the values into `slots` through typed-array views of that native memory
// (koffi.view) — no allocation, no marshalling — and passes `pointers` as kernelParams.

import koffi from 'koffi';

/** A kernel parameter's C type: `ptr` is a device pointer (CUdeviceptr, 8 bytes). */
export type KernelArgType = 'ptr' | 'i32' | 'u32' | 'f32' | 'i64' | 'f64';

const TWO_POW_32 = 4294967296;

export class KernelArgs {
  readonly types: readonly KernelArgType[];
  /** Native memory holding the argument values (koffi pointer). */
  readonly slots: unknown;
  /** Native array of the slots' addresses: the `kernelParams` of cuLaunchKernel (koffi pointer). */
  readonly pointers: unknown;
  private readonly u32: Uint32Array;
  private readonly i32: Int32Array;
  private readonly f32: Float32Array;
  private readonly f64: Float64Array;

  constructor(types: readonly KernelArgType[]) {
    this.types = [...types];
    const n = Math.max(1, types.length);
    this.slots = koffi.alloc('uint64_t', n);
    this.pointers = koffi.alloc('uint64_t', n);
    const values = koffi.view(this.slots, 8 * n);
    this.u32 = new Uint32Array(values);
    this.i32 = new Int32Array(values);
    this.f32 = new Float32Array(values);
    this.f64 = new Float64Array(values);
    const base = koffi.address(this.slots);
    const addresses = new BigUint64Array(koffi.view(this.pointers, 8 * n));
    for (let i = 0; i < n; i++) addresses[i] = base + BigInt(8 * i);
  }

  /** Write one launch's argument values (device pointers as numbers). */
  set(values: ArrayLike<number>): void {
    const types = this.types;
    if (values.length !== types.length) throw new Error(`kernel takes ${types.length} arguments, got ${values.length}`);
    for (let i = 0; i < types.length; i++) {
      const v = values[i]!;
      switch (types[i]) {
        case 'ptr':
        case 'i64':
          // Low and high words; >>> 0 reduces modulo 2^32, floor division keeps the sign of i64.
          this.u32[2 * i] = v >>> 0;
          this.u32[2 * i + 1] = Math.floor(v / TWO_POW_32) >>> 0;
          break;
        case 'i32':
          this.i32[2 * i] = v;
          break;
        case 'u32':
          this.u32[2 * i] = v >>> 0;
          break;
        case 'f32':
          this.f32[2 * i] = v;
          break;
        case 'f64':
          this.f64[i] = v;
          break;
      }
    }
  }

  /** The 8 bytes of slot i (tests). */
  slotBytes(i: number): Uint8Array {
    return new Uint8Array(this.u32.buffer, 8 * i, 8);
  }

  /** The addresses stored in `pointers`, and the address of `slots` (tests). */
  layout(): { slotsAddress: bigint; pointers: bigint[] } {
    const n = Math.max(1, this.types.length);
    return { slotsAddress: koffi.address(this.slots), pointers: [...new BigUint64Array(koffi.view(this.pointers, 8 * n))] };
  }
}

/** Grid or block dimensions: x, or [x, y?, z?]. */
export type Dim3 = number | readonly [number, number?, number?];

export function dim3(d: Dim3): [number, number, number] {
  if (typeof d === 'number') return [d, 1, 1];
  return [d[0], d[1] ?? 1, d[2] ?? 1];
}
