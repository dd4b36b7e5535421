// The dtype codecs against independent references: bit-field formulas for decoding and an
// integer-only (BigInt) rounding of the exact double for encoding. Random inputs come from a seeded
// PRNG whose seed is printed in every failure message.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16BitsToFloat32, encodeBf16, float32BitsToBf16Bits, float32ToBf16Bits } from '../../src/tensor/bf16.js';
import { encodeF16, f16BitsToFloat32, float32BitsToF16Bits, float32ToF16Bits } from '../../src/tensor/f16.js';
import { e4m3BitsToFloat32, e5m2BitsToFloat32, encodeE4M3, encodeE5M2, float32ToE4M3Bits, float32ToE5M2Bits } from '../../src/tensor/fp8.js';
import { bytesPerElement, decodeToFloat32, decodeToFloat64, decodeToIntegers, encodeFromFloat, isStorageDType,
  STORAGE_DTYPES, type StorageDType } from '../../src/tensor/dtypes.js';
import { seededRandom, type TestRandom } from '../helpers/random.js';

const scratch = new DataView(new ArrayBuffer(8));
function float32FromBits(bits: number): number {
  scratch.setUint32(0, bits >>> 0);
  return scratch.getFloat32(0);
}
function float32Bits(x: number): number {
  scratch.setFloat32(0, x);
  return scratch.getUint32(0);
}
function nextUp(x: number): number {
  scratch.setFloat64(0, x);
  scratch.setBigUint64(0, scratch.getBigUint64(0) + 1n);
  return scratch.getFloat64(0);
}
function nextDown(x: number): number {
  scratch.setFloat64(0, x);
  scratch.setBigUint64(0, scratch.getBigUint64(0) - 1n);
  return scratch.getFloat64(0);
}

/**
 * Round-to-nearest-even code of a positive finite double in a binary format with p mantissa bits
 * and smallest normal exponent emin, before any overflow handling, using integers only: the double
 * is mant · 2^exp2 exactly, and the code is (binade − emin) · 2^p + (value in quanta, rounded).
 */
function referenceMagnitudeCode(a: number, p: number, emin: number): number {
  scratch.setFloat64(0, a);
  const bits = scratch.getBigUint64(0);
  const biased = Number((bits >> 52n) & 0x7ffn);
  let mant = bits & ((1n << 52n) - 1n);
  let exp2 = -1074;
  if (biased !== 0) {
    mant |= 1n << 52n;
    exp2 = biased - 1075;
  }
  const floorLog2 = exp2 + mant.toString(2).length - 1;
  const binade = Math.max(floorLog2, emin);
  const shift = binade - p - exp2;
  let units: bigint;
  if (shift <= 0) {
    units = mant << BigInt(-shift);
  } else {
    const s = BigInt(shift);
    units = mant >> s;
    const rest = mant & ((1n << s) - 1n);
    const half = 1n << (s - 1n);
    if (rest > half || (rest === half && (units & 1n) === 1n)) units += 1n;
  }
  return Number(BigInt(binade - emin) * (1n << BigInt(p)) + units);
}

interface FormatReference { p: number; emin: number; signBit: number; maxFinite: number; infCode: number; saturate: boolean }
const E4M3_REF: FormatReference = { p: 3, emin: -6, signBit: 0x80, maxFinite: 0x7e, infCode: 0x7e, saturate: true };
const E5M2_REF: FormatReference = { p: 2, emin: -14, signBit: 0x80, maxFinite: 0x7b, infCode: 0x7c, saturate: true };
const F16_REF: FormatReference = { p: 10, emin: -14, signBit: 0x8000, maxFinite: 0x7bff, infCode: 0x7c00, saturate: false };
const BF16_REF: FormatReference = { p: 7, emin: -126, signBit: 0x8000, maxFinite: 0x7f7f, infCode: 0x7f80, saturate: false };

/** Expected code of a non-NaN double; overflow saturates to max finite or goes to inf per format. */
function referenceCode(x: number, f: FormatReference): number {
  const sign = x < 0 || Object.is(x, -0) ? f.signBit : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  if (a === Infinity) return sign | f.infCode;
  const code = referenceMagnitudeCode(a, f.p, f.emin);
  if (code > f.maxFinite) return sign | (f.saturate ? f.maxFinite : f.infCode);
  return sign | code;
}

/** Value of an FP8 code from its bit fields. */
function fp8Formula(code: number, exponentBits: number, mantissaBits: number, bias: number, ieeeSpecials: boolean): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> mantissaBits) & ((1 << exponentBits) - 1);
  const m = code & ((1 << mantissaBits) - 1);
  const allOnes = (1 << exponentBits) - 1;
  if (ieeeSpecials && e === allOnes) return m === 0 ? sign * Infinity : NaN;
  if (!ieeeSpecials && e === allOnes && m === (1 << mantissaBits) - 1) return NaN;
  if (e === 0) return sign * (m / 2 ** mantissaBits) * 2 ** (1 - bias);
  return sign * (1 + m / 2 ** mantissaBits) * 2 ** (e - bias);
}

const FP8_FORMATS = [
  { name: 'E4M3', ref: E4M3_REF, encode: float32ToE4M3Bits, encodeBulk: encodeE4M3, decode: e4m3BitsToFloat32, max: 448,
    formula: (c: number) => fp8Formula(c, 4, 3, 7, false) },
  { name: 'E5M2', ref: E5M2_REF, encode: float32ToE5M2Bits, encodeBulk: encodeE5M2, decode: e5m2BitsToFloat32, max: 57344,
    formula: (c: number) => fp8Formula(c, 5, 2, 15, true) },
];

for (const f of FP8_FORMATS) {
  test(`${f.name}: every code decodes to its bit-field value and finite values encode back to the code`, () => {
    let nanCodes = 0;
    for (let code = 0; code < 256; code++) {
      const expected = f.formula(code);
      const decoded = f.decode(code);
      if (Number.isNaN(expected)) {
        assert.ok(Number.isNaN(decoded), `${f.name} code 0x${code.toString(16)} should be NaN`);
        assert.ok(Number.isNaN(f.decode(f.encode(decoded))), `${f.name} NaN should encode to a NaN code`);
        nanCodes++;
        continue;
      }
      assert.ok(Object.is(decoded, expected), `${f.name} code 0x${code.toString(16)}: ${decoded} vs ${expected}`);
      if (Number.isFinite(expected)) assert.equal(f.encode(expected), code, `${f.name} encode(${expected})`);
    }
    assert.equal(nanCodes, f.name === 'E4M3' ? 2 : 6);
    assert.equal(f.encode(-0), 0x80);
    assert.equal(f.decode(f.ref.maxFinite), f.max);
  });

  test(`${f.name}: midpoints round to even, nudged midpoints to the nearer code, from the exact double`, () => {
    for (const sign of [1, -1]) {
      for (let code = 0; code < f.ref.maxFinite; code++) {
        const lower = f.decode(code);
        const upper = f.decode(code + 1);
        const mid = (lower + upper) / 2;
        const even = code % 2 === 0 ? code : code + 1;
        const signBit = sign < 0 ? 0x80 : 0;
        const where = `${f.name} between codes ${code} and ${code + 1}`;
        assert.equal(f.encode(sign * mid), signBit | even, `${where}: midpoint`);
        assert.equal(f.encode(sign * nextDown(mid)), signBit | code, `${where}: just below the midpoint`);
        assert.equal(f.encode(sign * nextUp(mid)), signBit | (code + 1), `${where}: just above the midpoint`);
        // Rounding these to float32 first would land exactly on the midpoint and then round to even.
        assert.equal(f.encode(sign * mid * (1 + 2 ** -40)), signBit | (code + 1), `${where}: above, below float32 resolution`);
        assert.equal(f.encode(sign * mid * (1 - 2 ** -40)), signBit | code, `${where}: below, below float32 resolution`);
      }
    }
  });

  test(`${f.name}: saturation above the maximum and underflow below half the smallest subnormal`, () => {
    const max = f.max;
    const maxCode = f.ref.maxFinite;
    for (const x of [max, nextUp(max), max * 1.0625, max * 1.2, max * 4, 1e30, Number.MAX_VALUE]) {
      assert.equal(f.encode(x), maxCode, `${f.name} encode(${x})`);
      assert.equal(f.encode(-x), 0x80 | maxCode, `${f.name} encode(${-x})`);
    }
    assert.equal(f.encode(Infinity), f.name === 'E4M3' ? 0x7e : 0x7c);
    assert.equal(f.encode(-Infinity), f.name === 'E4M3' ? 0xfe : 0xfc);
    const smallest = f.decode(1);
    assert.equal(smallest, 2 ** (f.ref.emin - f.ref.p));
    assert.equal(f.encode(smallest / 2), 0, 'half the smallest subnormal rounds to even, zero');
    assert.equal(f.encode(-smallest / 2), 0x80);
    assert.equal(f.encode(nextUp(smallest / 2)), 1);
    assert.equal(f.encode(smallest * 0.49), 0);
    assert.equal(f.encode(5e-324), 0);
    assert.equal(f.encode(smallest * 1.5), 2, '1.5 quanta is a tie between 1 and 2: even');
  });

  test(`${f.name}: random doubles encode like the integer reference`, () => {
    const rng = seededRandom();
    for (let i = 0; i < 50_000; i++) {
      const exponent = rng.int(f.ref.emin - f.ref.p - 3, f.name === 'E4M3' ? 10 : 17);
      const x = (rng.uniform() < 0.5 ? -1 : 1) * (1 + rng.uniform()) * 2 ** exponent;
      assert.equal(f.encode(x), referenceCode(x, f.ref), `seed ${rng.seed}: ${f.name} encode(${x})`);
    }
    const values = new Float32Array(1000).map(() => (rng.uniform() - 0.5) * 2 * f.max * 1.1);
    const bulk = f.encodeBulk(values);
    values.forEach((v, i) => assert.equal(bulk[i], referenceCode(v, f.ref), `seed ${rng.seed}: bulk ${f.name}(${v})`));
  });
}

test('BF16: random float32 bit patterns round like the integer reference, ties to even', () => {
  const rng = seededRandom();
  const count = 200_000;
  const bits = new Uint32Array(count).map(() => rng.uint32());
  // Force a quarter of the inputs onto exact ties (low half exactly 0x8000).
  for (let i = 0; i < count; i += 4) bits[i] = (bits[i]! & 0xffff0000) | 0x8000;
  const values = new Float32Array(bits.buffer);
  const bulk = encodeBf16(values);
  for (let i = 0; i < count; i++) {
    const b = bits[i]!;
    const value = values[i]!;
    const where = `seed ${rng.seed}: float32 bits 0x${b.toString(16)}`;
    if (Number.isNaN(value)) {
      assert.ok(Number.isNaN(bf16BitsToFloat32(float32ToBf16Bits(value))), where);
      assert.ok(Number.isNaN(bf16BitsToFloat32(bulk[i]!)), where);
      continue;
    }
    const kept = b >>> 16;
    const dropped = b & 0xffff;
    const expected = dropped > 0x8000 || (dropped === 0x8000 && (kept & 1) === 1) ? kept + 1 : kept;
    assert.equal(float32ToBf16Bits(value), expected, where);
    assert.equal(float32BitsToBf16Bits(b), expected, where);
    assert.equal(bulk[i], expected, `${where} (bulk)`);
  }
});

test('BF16: every code decodes to the float32 with those top bits, and finite ones encode back', () => {
  for (let code = 0; code < 65536; code++) {
    const expected = float32FromBits(code << 16);
    const decoded = bf16BitsToFloat32(code);
    if (Number.isNaN(expected)) {
      assert.ok(Number.isNaN(decoded));
      continue;
    }
    assert.ok(Object.is(decoded, expected), `code 0x${code.toString(16)}`);
    assert.equal(float32ToBf16Bits(decoded), code, `code 0x${code.toString(16)}`);
  }
});

test('BF16 and F16: random doubles round directly, not through float32', () => {
  const rng = seededRandom();
  for (let i = 0; i < 50_000; i++) {
    const sign = rng.uniform() < 0.5 ? -1 : 1;
    const bf16Input = sign * (1 + rng.uniform()) * 2 ** rng.int(-140, 130);
    assert.equal(float32ToBf16Bits(bf16Input), referenceCode(bf16Input, BF16_REF), `seed ${rng.seed}: bf16(${bf16Input})`);
    const f16Input = sign * (1 + rng.uniform()) * 2 ** rng.int(-27, 17);
    assert.equal(float32ToF16Bits(f16Input), referenceCode(f16Input, F16_REF), `seed ${rng.seed}: f16(${f16Input})`);
  }
  // Just above and below exact midpoints, by less than float32 can resolve.
  for (let i = 0; i < 5000; i++) {
    const bf16Code = rng.int(0, 0x7f7e);
    const bf16Mid = (bf16BitsToFloat32(bf16Code) + bf16BitsToFloat32(bf16Code + 1)) / 2;
    assert.equal(float32ToBf16Bits(bf16Mid * (1 + 2 ** -40)), bf16Code + 1, `seed ${rng.seed}: bf16 above mid of ${bf16Code}`);
    assert.equal(float32ToBf16Bits(bf16Mid * (1 - 2 ** -40)), bf16Code, `seed ${rng.seed}: bf16 below mid of ${bf16Code}`);
    const f16Code = rng.int(0, 0x7bfe);
    const f16Mid = (f16BitsToFloat32(f16Code) + f16BitsToFloat32(f16Code + 1)) / 2;
    assert.equal(float32ToF16Bits(f16Mid * (1 + 2 ** -40)), f16Code + 1, `seed ${rng.seed}: f16 above mid of ${f16Code}`);
    assert.equal(float32ToF16Bits(f16Mid * (1 - 2 ** -40)), f16Code, `seed ${rng.seed}: f16 below mid of ${f16Code}`);
  }
});

/** Value of an F16 code from its bit fields. */
function f16Formula(code: number): number {
  const sign = code & 0x8000 ? -1 : 1;
  const e = (code >> 10) & 31;
  const m = code & 1023;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * (m / 1024) * 2 ** -14;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

test('F16: every code decodes to its bit-field value and finite ones encode back', () => {
  for (let code = 0; code < 65536; code++) {
    const expected = f16Formula(code);
    const decoded = f16BitsToFloat32(code);
    if (Number.isNaN(expected)) {
      assert.ok(Number.isNaN(decoded));
      assert.ok(Number.isNaN(f16BitsToFloat32(float32ToF16Bits(decoded))));
      continue;
    }
    assert.ok(Object.is(decoded, expected), `code 0x${code.toString(16)}`);
    assert.equal(float32ToF16Bits(decoded), code, `code 0x${code.toString(16)}`);
  }
});

test('F16: random float32 bit patterns and exact midpoints round like the reference', () => {
  const rng = seededRandom();
  const count = 200_000;
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    // Mostly exponents near F16's range (so normal, subnormal, underflow and overflow paths all run).
    const exponentField = i % 2 === 0 ? rng.int(0, 255) : rng.int(127 - 27, 127 + 17);
    values[i] = float32FromBits(((rng.uint32() & 0x807fffff) | (exponentField << 23)) >>> 0);
  }
  const bulk = encodeF16(values);
  for (let i = 0; i < count; i++) {
    const v = values[i]!;
    const where = `seed ${rng.seed}: float32 bits 0x${float32Bits(v).toString(16)}`;
    if (Number.isNaN(v)) {
      assert.ok(Number.isNaN(f16BitsToFloat32(bulk[i]!)), where);
      continue;
    }
    const expected = referenceCode(v, F16_REF);
    assert.equal(bulk[i], expected, where);
    assert.equal(float32ToF16Bits(v), expected, where);
    assert.equal(float32BitsToF16Bits(float32Bits(v)), expected, where);
  }
  for (let code = 0; code < 0x7bff; code++) {
    const mid = (f16BitsToFloat32(code) + f16BitsToFloat32(code + 1)) / 2;
    const even = code % 2 === 0 ? code : code + 1;
    assert.equal(float32ToF16Bits(mid), even, `midpoint after code ${code}`);
    assert.equal(float32ToF16Bits(-mid), 0x8000 | even, `negative midpoint after code ${code}`);
    assert.equal(float32BitsToF16Bits(float32Bits(mid) - 1), code, `just below midpoint after code ${code}`);
    assert.equal(float32BitsToF16Bits(float32Bits(mid) + 1), code + 1, `just above midpoint after code ${code}`);
  }
  assert.equal(float32ToF16Bits(65520), 0x7c00, 'the midpoint above 65504 ties to even: inf');
  assert.equal(float32ToF16Bits(nextDown(65520)), 0x7bff);
  assert.equal(float32ToF16Bits(2 ** -25), 0);
  assert.equal(float32ToF16Bits(nextUp(2 ** -25)), 1);
});

/** Random values that every codec of `dtype` represents exactly. */
function representableValues(dtype: StorageDType, n: number, rng: TestRandom): Float64Array {
  const out = new Float64Array(n);
  const finiteFromCodes = (decode: (c: number) => number, codeCount: number) => {
    for (let i = 0; i < n; i++) {
      let v: number;
      do v = decode(rng.int(0, codeCount - 1)); while (!Number.isFinite(v));
      out[i] = v;
    }
  };
  switch (dtype) {
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = (rng.uniform() - 0.5) * 2 ** rng.int(-1000, 1000);
      break;
    case 'F32':
      for (let i = 0; i < n; i++) {
        let v: number;
        do v = float32FromBits(rng.uint32()); while (!Number.isFinite(v));
        out[i] = v;
      }
      break;
    case 'F16': finiteFromCodes(f16BitsToFloat32, 65536); break;
    case 'BF16': finiteFromCodes(bf16BitsToFloat32, 65536); break;
    case 'F8_E4M3': finiteFromCodes(e4m3BitsToFloat32, 256); break;
    case 'F8_E5M2': finiteFromCodes(e5m2BitsToFloat32, 256); break;
    case 'I64':
      for (let i = 0; i < n; i++) {
        out[i] = i % 3 === 0 ? rng.int(-1e9, 1e9) * 2 ** rng.int(0, 33) : rng.int(-(2 ** 31), 2 ** 31 - 1);
      }
      out[0] = -(2 ** 63);
      out[1] = 2 ** 63 - 1024;
      break;
    case 'I32': for (let i = 0; i < n; i++) out[i] = rng.int(-(2 ** 31), 2 ** 31 - 1); break;
    case 'I16': for (let i = 0; i < n; i++) out[i] = rng.int(-32768, 32767); break;
    case 'I8': for (let i = 0; i < n; i++) out[i] = rng.int(-128, 127); break;
    case 'U8': for (let i = 0; i < n; i++) out[i] = rng.int(0, 255); break;
    case 'BOOL': for (let i = 0; i < n; i++) out[i] = rng.int(0, 1); break;
  }
  return out;
}

test('every storage dtype round-trips random data, also from unaligned bytes', () => {
  const rng = seededRandom();
  const n = 257;
  for (const dtype of STORAGE_DTYPES) {
    const where = `seed ${rng.seed}: ${dtype}`;
    const values = representableValues(dtype, n, rng);
    assert.ok(values.some((v) => v !== 0), `${where}: random data should not be all zeros`);
    const bytes = encodeFromFloat(dtype, values);
    assert.equal(bytes.length, n * bytesPerElement(dtype), where);
    for (const offset of [0, 1, 3]) {
      const shifted = new Uint8Array(bytes.length + offset + 1).fill(0xa5);
      shifted.set(bytes, offset);
      const view = shifted.subarray(offset);
      const decoded = decodeToFloat64(dtype, view, n);
      for (let i = 0; i < n; i++) assert.ok(Object.is(decoded[i], values[i]) || decoded[i] === values[i], `${where} offset ${offset} element ${i}`);
      const decoded32 = decodeToFloat32(dtype, view, n);
      for (let i = 0; i < n; i++) assert.equal(decoded32[i], Math.fround(values[i]!), `${where} float32 element ${i}`);
      assert.deepEqual(shifted.subarray(0, offset), new Uint8Array(offset).fill(0xa5), `${where}: input bytes untouched`);
    }
    // Float32Array input takes the fast paths; these dtypes' values all fit in a float32.
    if (dtype !== 'F64' && dtype !== 'I64' && dtype !== 'I32') {
      assert.deepEqual(encodeFromFloat(dtype, Float32Array.from(values)), bytes, `${where}: from a Float32Array`);
    }
  }
});

test('bytes are little-endian and integer decoding is exact', () => {
  assert.deepEqual([...encodeFromFloat('F32', new Float32Array([1]))], [0x00, 0x00, 0x80, 0x3f]);
  assert.deepEqual([...encodeFromFloat('BF16', new Float32Array([1]))], [0x80, 0x3f]);
  assert.deepEqual([...encodeFromFloat('F16', new Float32Array([1]))], [0x00, 0x3c]);
  assert.deepEqual([...encodeFromFloat('I64', new Float64Array([258]))], [2, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...encodeFromFloat('I64', new Float64Array([-2]))], [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual([...encodeFromFloat('I16', new Float64Array([-2]))], [0xfe, 0xff]);
  assert.deepEqual(decodeToIntegers('I64', encodeFromFloat('I64', new Float64Array([-7, 2 ** 53 - 1])), 2), [-7, 2 ** 53 - 1]);
  assert.deepEqual(decodeToIntegers('BOOL', new Uint8Array([0, 1, 7]), 3), [0, 1, 1]);
  assert.throws(() => decodeToIntegers('I64', encodeFromFloat('I64', new Float64Array([2 ** 60])), 1), /beyond/);
  assert.throws(() => encodeFromFloat('I8', new Float64Array([128])), /I8/);
  assert.throws(() => encodeFromFloat('I32', new Float64Array([1.5])), /I32/);
  assert.throws(() => encodeFromFloat('I64', new Float64Array([2 ** 63])), /I64/);
  assert.throws(() => encodeFromFloat('BOOL', new Float64Array([2])), /BOOL/);
  assert.throws(() => decodeToFloat32('F32', new Uint8Array(7), 2), /8 bytes/);
  assert.ok(isStorageDType('F8_E4M3') && !isStorageDType('f32') && !isStorageDType('toString'));
});
