// IEEE binary16: sign, 5 exponent bits (bias 15), 10 mantissa bits; max 65504, subnormals down to
// 2^-24. Conversion rounds to nearest even and overflows to ±inf, as IEEE specifies.
//
// The work is done on float32 bits with integer arithmetic. From a double, rounding to float32
// first could round twice wrongly; rounding to float32 "to odd" first cannot (float32 keeps more than
// the 2 extra bits that needs; Boldo & Melquiond), so the double path does that.

const word = new Float32Array(1);
const wordBits = new Uint32Array(word.buffer);

/** Rounds `kept` (the truncated result) up when the dropped bits `rest` exceed half, or equal it and kept is odd. */
function roundDropped(kept: number, rest: number, half: number): number {
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

/** f16 bits of a float32 given by its bits, rounded to nearest even. */
export function float32BitsToF16Bits(bits: number): number {
  bits >>>= 0;
  const sign = (bits >>> 16) & 0x8000;
  const biasedExponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (biasedExponent === 0xff) return sign | (mantissa !== 0 ? 0x7e00 : 0x7c00);
  const exponent = biasedExponent - 127;
  if (exponent > 15) return sign | 0x7c00;
  if (exponent >= -14) {
    // Normal: drop 13 mantissa bits. A carry out of the mantissa bumps the exponent, up to inf.
    const kept = ((exponent + 15) << 10) | (mantissa >>> 13);
    return sign | roundDropped(kept, mantissa & 0x1fff, 0x1000);
  }
  // Below half the smallest subnormal (2^-25), including float32 zeros and subnormals.
  if (exponent < -25) return sign;
  // Subnormal: the value in units of 2^-24 is (1.mantissa) · 2^(exponent + 24).
  const significand = 0x800000 | mantissa;
  const shift = -exponent - 1;
  return sign | roundDropped(significand >>> shift, significand & ((1 << shift) - 1), 1 << (shift - 1));
}

/** Float32 bits of x rounded to odd (see the file comment). */
function float32BitsRoundedToOdd(x: number): number {
  word[0] = x;
  const bits = wordBits[0]!;
  if (word[0] === x || Number.isNaN(x) || (bits & 1) === 1) return bits;
  return Math.abs(x) > Math.abs(word[0]!) ? bits + 1 : bits - 1;
}

/** f16 bits of any JS number, rounded to nearest even directly from its double value. */
export function float32ToF16Bits(x: number): number {
  return float32BitsToF16Bits(float32BitsRoundedToOdd(x));
}

export function f16BitsToFloat32(bits: number): number {
  const exponentField = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  let magnitude: number;
  if (exponentField === 0) magnitude = mantissa * 2 ** -24;
  else if (exponentField === 0x1f) magnitude = mantissa === 0 ? Infinity : NaN;
  else magnitude = (0x400 + mantissa) * 2 ** (exponentField - 25);
  return bits & 0x8000 ? -magnitude : magnitude;
}

/** f16 bits of every value. Float32Array input takes the integer fast path. */
export function encodeF16(values: Float32Array | Float64Array | ArrayLike<number>,
  out = new Uint16Array(values.length)): Uint16Array {
  if (values instanceof Float32Array) {
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    for (let i = 0; i < bits.length; i++) out[i] = float32BitsToF16Bits(bits[i]!);
  } else {
    for (let i = 0; i < values.length; i++) out[i] = float32ToF16Bits(values[i]!);
  }
  return out;
}

export function decodeF16(codes: Uint16Array, out = new Float32Array(codes.length)): Float32Array {
  for (let i = 0; i < codes.length; i++) out[i] = f16BitsToFloat32(codes[i]!);
  return out;
}
