// Storage dtypes: how tensor elements are laid out as bytes in safetensors files (little-endian,
// spelled exactly as safetensors spells them), and the codecs between those bytes and JS floats.
// Compute dtypes (what a backend holds) are in ./tensor.ts.

import { decodeBf16, encodeBf16 } from './bf16.js';
import { decodeF16, encodeF16 } from './f16.js';
import { decodeE4M3, decodeE5M2, encodeE4M3, encodeE5M2 } from './fp8.js';

export type StorageDType =
  'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const BYTES_PER_ELEMENT: Readonly<Record<StorageDType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export const STORAGE_DTYPES: readonly StorageDType[] = Object.keys(BYTES_PER_ELEMENT) as StorageDType[];

export function isStorageDType(s: unknown): s is StorageDType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(BYTES_PER_ELEMENT, s);
}

export function bytesPerElement(dtype: StorageDType): number {
  return BYTES_PER_ELEMENT[dtype];
}

export function isFloatDType(dtype: StorageDType): boolean {
  return dtype[0] === 'F' || dtype === 'BF16';
}

export function isIntegerDType(dtype: StorageDType): boolean {
  return !isFloatDType(dtype);
}

const LITTLE_ENDIAN_PLATFORM = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function reverseBytesOfEachElement(bytes: Uint8Array, size: number): void {
  for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

type WordArrayConstructor<T> = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => T;

/**
 * A typed-array view of `count` little-endian elements at the start of `bytes`. Typed arrays need
 * an offset aligned to the element size and use the platform's byte order, so an unaligned slice
 * (or a big-endian machine) gets a private copy instead; the caller's bytes are never modified.
 */
function elementView<T>(bytes: Uint8Array, count: number, size: number, Ctor: WordArrayConstructor<T>): T {
  let source = bytes.subarray(0, count * size);
  if (source.byteOffset % size !== 0 || (!LITTLE_ENDIAN_PLATFORM && size > 1)) source = source.slice();
  if (!LITTLE_ENDIAN_PLATFORM && size > 1) reverseBytesOfEachElement(source, size);
  return new Ctor(source.buffer, source.byteOffset, count);
}

/** The bytes of a freshly allocated typed array, in little-endian order. */
function littleEndianBytes(words: { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }, size: number): Uint8Array {
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  if (!LITTLE_ENDIAN_PLATFORM && size > 1) reverseBytesOfEachElement(bytes, size);
  return bytes;
}

function checkLength(dtype: StorageDType, bytes: Uint8Array, count: number): void {
  if (!Number.isSafeInteger(count) || count < 0) throw new Error(`element count ${count} is not a non-negative integer`);
  const needed = count * bytesPerElement(dtype);
  if (bytes.length < needed) {
    throw new Error(`${count} elements of ${dtype} need ${needed} bytes, got ${bytes.length}`);
  }
}

/** Decodes `count` elements into `out` (a Float32Array or Float64Array, which rounds as it stores). */
function decodeInto<T extends Float32Array | Float64Array>(dtype: StorageDType, bytes: Uint8Array, count: number, out: T): T {
  checkLength(dtype, bytes, count);
  switch (dtype) {
    case 'F64': out.set(elementView(bytes, count, 8, Float64Array)); break;
    case 'F32': out.set(elementView(bytes, count, 4, Float32Array)); break;
    case 'F16': out.set(decodeF16(elementView(bytes, count, 2, Uint16Array))); break;
    case 'BF16': out.set(decodeBf16(elementView(bytes, count, 2, Uint16Array))); break;
    case 'F8_E4M3': out.set(decodeE4M3(bytes.subarray(0, count))); break;
    case 'F8_E5M2': out.set(decodeE5M2(bytes.subarray(0, count))); break;
    case 'I64': {
      const words = elementView(bytes, count, 8, BigInt64Array);
      for (let i = 0; i < count; i++) out[i] = Number(words[i]!);
      break;
    }
    case 'I32': out.set(elementView(bytes, count, 4, Int32Array)); break;
    case 'I16': out.set(elementView(bytes, count, 2, Int16Array)); break;
    case 'I8': out.set(elementView(bytes, count, 1, Int8Array)); break;
    case 'U8': out.set(bytes.subarray(0, count)); break;
    case 'BOOL': for (let i = 0; i < count; i++) out[i] = bytes[i] === 0 ? 0 : 1; break;
  }
  return out;
}

/** Little-endian elements of any storage dtype as float32 (float64 and large integers round to nearest). */
export function decodeToFloat32(dtype: StorageDType, bytes: Uint8Array, count: number): Float32Array {
  return decodeInto(dtype, bytes, count, new Float32Array(count));
}

/** Little-endian elements of any storage dtype as float64 (exact except I64 beyond 2^53). */
export function decodeToFloat64(dtype: StorageDType, bytes: Uint8Array, count: number): Float64Array {
  return decodeInto(dtype, bytes, count, new Float64Array(count));
}

/** Little-endian elements of an integer dtype (BOOL gives 0/1) as exact JS numbers. */
export function decodeToIntegers(dtype: StorageDType, bytes: Uint8Array, count: number): number[] {
  if (!isIntegerDType(dtype)) throw new Error(`${dtype} is not an integer dtype`);
  checkLength(dtype, bytes, count);
  const out = new Array<number>(count);
  if (dtype === 'I64') {
    const words = elementView(bytes, count, 8, BigInt64Array);
    for (let i = 0; i < count; i++) {
      const value = Number(words[i]!);
      if (!Number.isSafeInteger(value)) throw new Error(`I64 element ${i} (${words[i]}) is beyond ±2^53 and cannot be a JS number exactly`);
      out[i] = value;
    }
    return out;
  }
  const values = decodeToFloat64(dtype, bytes, count);
  for (let i = 0; i < count; i++) out[i] = values[i]!;
  return out;
}

const INTEGER_RANGE: Readonly<Record<string, readonly [number, number]>> = {
  I64: [-(2 ** 63), 2 ** 63 - 1], I32: [-(2 ** 31), 2 ** 31 - 1], I16: [-32768, 32767], I8: [-128, 127],
  U8: [0, 255], BOOL: [0, 1],
};

function checkIntegers(dtype: StorageDType, values: Float32Array | Float64Array): void {
  const [min, max] = INTEGER_RANGE[dtype]!;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    // For I64 the upper bound 2^63 - 1 is not a double: the largest double below 2^63 is the limit.
    if (!Number.isInteger(v) || v < min || v > max || (dtype === 'I64' && v >= 2 ** 63)) {
      throw new Error(`cannot store element ${i} (${v}) as ${dtype}: not an integer in [${min}, ${max}]`);
    }
  }
}

/**
 * Little-endian bytes of `values` in `dtype`. Float dtypes round to nearest even from the exact input
 * value (FP8 saturates, F16/BF16 overflow to inf). Integer dtypes accept only integers in their range.
 */
export function encodeFromFloat(dtype: StorageDType, values: Float32Array | Float64Array): Uint8Array {
  const n = values.length;
  if (isIntegerDType(dtype)) checkIntegers(dtype, values);
  switch (dtype) {
    case 'F64': return littleEndianBytes(Float64Array.from(values), 8);
    case 'F32': return littleEndianBytes(Float32Array.from(values), 4);
    case 'F16': return littleEndianBytes(encodeF16(values), 2);
    case 'BF16': return littleEndianBytes(encodeBf16(values), 2);
    case 'F8_E4M3': return encodeE4M3(values);
    case 'F8_E5M2': return encodeE5M2(values);
    case 'I64': {
      const words = new BigInt64Array(n);
      for (let i = 0; i < n; i++) words[i] = BigInt(values[i]!);
      return littleEndianBytes(words, 8);
    }
    case 'I32': return littleEndianBytes(Int32Array.from(values), 4);
    case 'I16': return littleEndianBytes(Int16Array.from(values), 2);
    case 'I8': return littleEndianBytes(Int8Array.from(values), 1);
    case 'U8': case 'BOOL': return Uint8Array.from(values);
  }
}
