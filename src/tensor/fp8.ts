// The two 8-bit float formats of FP8 training (SPEC §5), as codes in a byte: sign | exponent | mantissa.
//
//   E4M3 ("fn" variant): bias 7, max ±448, no infinities, NaN = 0x7F/0xFF, subnormals down to 2^-9.
//   E5M2: bias 15, max ±57344, IEEE-like ±inf (0x7C/0xFC) and NaNs (0x7D–0x7F, 0xFD–0xFF).
//
// Encoding rounds to nearest, ties to even, directly from the JS number (a double). Going through
// float32 first would round twice, and the first rounding can create a false tie. Both formats
// saturate: a finite value beyond the largest code becomes ±max (the FP8 training recipe wants that,
// never a NaN or an inf from overflow). NaN stays NaN; ±Infinity becomes ±inf in E5M2, which has one,
// and ±448 in E4M3, which has none.

interface Fp8Format {
  /** Explicit mantissa bits. */
  readonly mantissaBits: number;
  /** Exponent of the smallest normal number (1 - bias). */
  readonly minExponent: number;
  /** Exponent of the largest finite number. */
  readonly maxExponent: number;
  readonly maxFiniteCode: number;
  readonly nanCode: number;
  /** Code of +inf, or null when the format has none. */
  readonly infCode: number | null;
  /** 2^-(quantum exponent) for each exponent from minExponent to maxExponent: multiplying by it is exact. */
  readonly inverseQuantum: Float64Array;
}

function fp8Format(mantissaBits: number, minExponent: number, maxExponent: number,
  maxFiniteCode: number, nanCode: number, infCode: number | null): Fp8Format {
  const inverseQuantum = new Float64Array(maxExponent - minExponent + 1);
  for (let e = minExponent; e <= maxExponent; e++) inverseQuantum[e - minExponent] = 2 ** (mantissaBits - e);
  return { mantissaBits, minExponent, maxExponent, maxFiniteCode, nanCode, infCode, inverseQuantum };
}

const E4M3 = fp8Format(3, -6, 8, 0x7e, 0x7f, null);
const E5M2 = fp8Format(2, -14, 15, 0x7b, 0x7f, 0x7c);

export const E4M3_MAX = 448;
export const E5M2_MAX = 57344;

// Big-endian DataView: byte 0 holds the sign and the top of the exponent on every platform.
const doubleView = new DataView(new ArrayBuffer(8));

function roundHalfToEven(s: number): number {
  const floor = Math.floor(s);
  const fraction = s - floor; // exact: s is a small number of quanta (below 2^(p+1))
  if (fraction > 0.5) return floor + 1;
  if (fraction < 0.5) return floor;
  return floor + (floor % 2);
}

/**
 * The code of a positive finite magnitude, before saturation: may exceed maxFiniteCode.
 * Codes of positive numbers are ordered like their values, and code = (E - minExponent) · 2^p + r
 * where r is the value in units of the quantum 2^(E - p) of its binade E (r includes the hidden bit
 * for normal numbers). A carry of r into 2^(p+1) thus correctly moves to the next binade.
 */
function encodeMagnitude(a: number, f: Fp8Format): number {
  doubleView.setFloat64(0, a);
  const biasedExponent = (doubleView.getUint16(0) >>> 4) & 0x7ff;
  // Below 2^-1022 everything lies far under half the smallest subnormal of both formats.
  if (biasedExponent === 0) return 0;
  const exponent = biasedExponent - 1023;
  if (exponent > f.maxExponent) return f.maxFiniteCode + 1;
  const binade = Math.max(exponent, f.minExponent);
  const units = a * f.inverseQuantum[binade - f.minExponent]!;
  return (binade - f.minExponent) * (1 << f.mantissaBits) + roundHalfToEven(units);
}

function encodeFp8(x: number, f: Fp8Format): number {
  if (Number.isNaN(x)) return f.nanCode;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  if (a === Infinity) return sign | (f.infCode ?? f.maxFiniteCode);
  return sign | Math.min(encodeMagnitude(a, f), f.maxFiniteCode);
}

function decodeTable(f: Fp8Format): Float32Array {
  const table = new Float32Array(256);
  const p = f.mantissaBits;
  for (let code = 0; code < 256; code++) {
    const magnitude = code & 0x7f;
    let value: number;
    if (magnitude === f.infCode) value = Infinity;
    else if (magnitude > f.maxFiniteCode) value = NaN;
    else {
      const exponentField = magnitude >>> p;
      const mantissa = magnitude & ((1 << p) - 1);
      value = exponentField === 0
        ? mantissa * 2 ** (f.minExponent - p)
        : ((1 << p) + mantissa) * 2 ** (exponentField + f.minExponent - 1 - p);
    }
    table[code] = code & 0x80 ? -value : value;
  }
  return table;
}

const E4M3_VALUES = decodeTable(E4M3);
const E5M2_VALUES = decodeTable(E5M2);

/** Nearest E4M3 code (ties to even, saturating to ±448) of any JS number. */
export function float32ToE4M3Bits(x: number): number {
  return encodeFp8(x, E4M3);
}

export function e4m3BitsToFloat32(code: number): number {
  return E4M3_VALUES[code & 0xff]!;
}

/** Nearest E5M2 code (ties to even, finite values saturating to ±57344) of any JS number. */
export function float32ToE5M2Bits(x: number): number {
  return encodeFp8(x, E5M2);
}

export function e5m2BitsToFloat32(code: number): number {
  return E5M2_VALUES[code & 0xff]!;
}

export function encodeE4M3(values: ArrayLike<number>, out = new Uint8Array(values.length)): Uint8Array {
  for (let i = 0; i < values.length; i++) out[i] = encodeFp8(values[i]!, E4M3);
  return out;
}

export function decodeE4M3(codes: Uint8Array, out = new Float32Array(codes.length)): Float32Array {
  for (let i = 0; i < codes.length; i++) out[i] = E4M3_VALUES[codes[i]!]!;
  return out;
}

export function encodeE5M2(values: ArrayLike<number>, out = new Uint8Array(values.length)): Uint8Array {
  for (let i = 0; i < values.length; i++) out[i] = encodeFp8(values[i]!, E5M2);
  return out;
}

export function decodeE5M2(codes: Uint8Array, out = new Float32Array(codes.length)): Float32Array {
  for (let i = 0; i < codes.length; i++) out[i] = E5M2_VALUES[codes[i]!]!;
  return out;
}
