// bfloat16: the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits).
//
// From float32 bits, round to nearest even is the classic integer trick: add 0x7FFF plus the lowest
// kept bit, then drop the low half; a carry runs into the exponent, and past the largest finite value
// into +inf, exactly as IEEE rounding wants. From a double, rounding to float32 first and then to
// bf16 can round twice wrongly; rounding to float32 "to odd" first cannot (float32 keeps more than
// the 2 extra bits that needs; Boldo & Melquiond), so the double path does that.

const word = new Float32Array(1);
const wordBits = new Uint32Array(word.buffer);

/** bf16 bits of a float32 given by its bits, rounded to nearest even; NaN stays a (quiet) NaN. */
export function float32BitsToBf16Bits(bits: number): number {
  bits >>>= 0;
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x0040;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/**
 * Float32 bits of x rounded to odd: truncated toward zero, with the last bit set when inexact.
 * Rounding these bits to any format with at least 2 fewer mantissa bits equals rounding x directly.
 */
function float32BitsRoundedToOdd(x: number): number {
  word[0] = x;
  const bits = wordBits[0]!;
  if (word[0] === x || Number.isNaN(x) || (bits & 1) === 1) return bits;
  // Inexact and even: the odd neighbour on x's side is the one adjacent to x (an overflow to inf
  // steps back to the largest float32, an underflow to zero up to the smallest subnormal).
  return Math.abs(x) > Math.abs(word[0]!) ? bits + 1 : bits - 1;
}

/** bf16 bits of any JS number, rounded to nearest even directly from its double value. */
export function float32ToBf16Bits(x: number): number {
  return float32BitsToBf16Bits(float32BitsRoundedToOdd(x));
}

export function bf16BitsToFloat32(bits: number): number {
  wordBits[0] = (bits & 0xffff) << 16;
  return word[0]!;
}

/** bf16 bits of every value. Float32Array input takes the integer fast path. */
export function encodeBf16(values: Float32Array | Float64Array | ArrayLike<number>,
  out = new Uint16Array(values.length)): Uint16Array {
  if (values instanceof Float32Array) {
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    for (let i = 0; i < bits.length; i++) out[i] = float32BitsToBf16Bits(bits[i]!);
  } else {
    for (let i = 0; i < values.length; i++) out[i] = float32ToBf16Bits(values[i]!);
  }
  return out;
}

export function decodeBf16(codes: Uint16Array, out = new Float32Array(codes.length)): Float32Array {
  const outBits = new Uint32Array(out.buffer, out.byteOffset, codes.length);
  for (let i = 0; i < codes.length; i++) outBits[i] = codes[i]! << 16;
  return out;
}
