// Rotary position tables with YaRN and MLA's softmax-scale correction (SPEC §2).
// Computed once in FP64 on the host, then uploaded; they depend only on the config.

import type { ModelConfig, RopeScaling } from './config.js';

/** g(s, m) = 0.1 m ln s + 1, or 1 when the scale does not extend the context. */
function yarnMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/** θ_i for i < rot/2, after YaRN's blend of interpolated and extrapolated frequencies. */
export function ropeFrequencies(rot: number, base: number, s: RopeScaling): Float64Array {
  const half = rot / 2;
  const theta = new Float64Array(half);
  for (let i = 0; i < half; i++) theta[i] = Math.pow(base, (-2 * i) / rot);
  if (s.type !== 'yarn') return theta;
  const corr = (n: number) => (rot * Math.log(s.originalMaxPositionEmbeddings / (n * 2 * Math.PI))) / (2 * Math.log(base));
  const low = Math.max(Math.floor(corr(s.betaFast)), 0);
  let high = Math.min(Math.ceil(corr(s.betaSlow)), rot - 1);
  if (low === high) high += 0.001;
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
    const extrapolation = 1 - ramp;
    theta[i] = (theta[i] / s.factor) * (1 - extrapolation) + theta[i] * extrapolation;
  }
  return theta;
}

/** Multiplier YaRN applies to cos and sin (the "attention factor"). */
export function ropeAmplitude(s: RopeScaling): number {
  if (s.type !== 'yarn') return 1;
  if (s.mscale && s.mscaleAllDim) return yarnMscale(s.factor, s.mscale) / yarnMscale(s.factor, s.mscaleAllDim);
  return yarnMscale(s.factor, 1);
}

/** cos and sin tables [positions, rot/2], row p holding angle p·θ_i, scaled by the YaRN amplitude. */
export function ropeTables(config: ModelConfig, positions: number): { cos: Float64Array; sin: Float64Array } {
  const rot = config.qkRopeHeadDim;
  const theta = ropeFrequencies(rot, config.ropeTheta, config.ropeScaling);
  const amplitude = ropeAmplitude(config.ropeScaling);
  const half = rot / 2;
  const cos = new Float64Array(positions * half);
  const sin = new Float64Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * theta[i];
      cos[p * half + i] = Math.cos(angle) * amplitude;
      sin[p * half + i] = Math.sin(angle) * amplitude;
    }
  }
  return { cos, sin };
}

/** (nope + rope)^-0.5 · m², m = 0.1 · mscale_all_dim · ln(factor) + 1 under YaRN with mscale_all_dim. */
export function softmaxScale(config: ModelConfig): number {
  const base = 1 / Math.sqrt(config.qkNopeHeadDim + config.qkRopeHeadDim);
  const s = config.ropeScaling;
  if (s.type !== 'yarn' || !s.mscaleAllDim) return base;
  const m = yarnMscale(s.factor, s.mscaleAllDim);
  return base * m * m;
}
