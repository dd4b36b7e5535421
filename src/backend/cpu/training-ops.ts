// The CPU backend's backward passes, losses and optimizer step, as loops over typed arrays.
// Each function states the shapes of its arrays; the CpuBackend class checks and allocates.

import type { AdamWHyper, RouterConfig } from '../backend.js';
import { gemm } from './gemm/index.js';
import type { FloatArray } from './cpu-tensor.js';
import { bf16BitsToFloat32, float32ToBf16Bits } from '../../tensor/bf16.js';

type GemmArgs = Parameters<typeof gemm>[0];

/**
 * Causal attention backward, one (batch, head) at a time with the probabilities recomputed:
 * dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)), dQ = scale · dS K, dK = scale · dSᵀ Q.
 * q, dq [B, Tq, H, Dk]; k, dk [B, Tk, H, Dk]; v, dv [B, Tk, H, Dv]; out, dOut [B, Tq, H, Dv].
 */
export function causalAttentionBackward(
  q: FloatArray, k: FloatArray, v: FloatArray, out: FloatArray, dOut: FloatArray,
  dq: FloatArray, dk: FloatArray, dv: FloatArray, probs: FloatArray, dProbs: FloatArray,
  dims: { B: number; Tq: number; Tk: number; H: number; Dk: number; Dv: number }, scale: number, qStart: number,
): void {
  const { B, Tq, Tk, H, Dk, Dv } = dims;
  const mm = (args: Omit<GemmArgs, 'alpha' | 'beta'> & { alpha?: number; beta?: number }) => gemm({ alpha: 1, beta: 0, ...args } as GemmArgs);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qOff = (b * Tq * H + h) * Dk, kOff = (b * Tk * H + h) * Dk;
      const vOff = (b * Tk * H + h) * Dv, oOff = (b * Tq * H + h) * Dv;
      mm({ transA: false, transB: true, m: Tq, n: Tk, k: Dk, alpha: scale, a: q, aOffset: qOff, lda: H * Dk, b: k, bOffset: kOff, ldb: H * Dk, c: probs, cOffset: 0, ldc: Tk });
      for (let i = 0; i < Tq; i++) {
        const end = Math.min(qStart + i + 1, Tk);
        const row = i * Tk;
        let max = -Infinity;
        for (let j = 0; j < end; j++) max = Math.max(max, probs[row + j]);
        let sum = 0;
        for (let j = 0; j < end; j++) sum += (probs[row + j] = Math.exp(probs[row + j] - max));
        for (let j = 0; j < end; j++) probs[row + j] /= sum;
        for (let j = end; j < Tk; j++) probs[row + j] = 0;
      }
      mm({ transA: true, transB: false, m: Tk, n: Dv, k: Tq, a: probs, aOffset: 0, lda: Tk, b: dOut, bOffset: oOff, ldb: H * Dv, c: dv, cOffset: vOff, ldc: H * Dv });
      mm({ transA: false, transB: true, m: Tq, n: Tk, k: Dv, a: dOut, aOffset: oOff, lda: H * Dv, b: v, bOffset: vOff, ldb: H * Dv, c: dProbs, cOffset: 0, ldc: Tk });
      for (let i = 0; i < Tq; i++) {
        let rowDot = 0;
        for (let c = 0; c < Dv; c++) rowDot += dOut[oOff + i * H * Dv + c] * out[oOff + i * H * Dv + c];
        const row = i * Tk;
        for (let j = 0; j < Tk; j++) dProbs[row + j] = probs[row + j] * (dProbs[row + j] - rowDot);
      }
      mm({ transA: false, transB: false, m: Tq, n: Dk, k: Tk, alpha: scale, a: dProbs, aOffset: 0, lda: Tk, b: k, bOffset: kOff, ldb: H * Dk, c: dq, cOffset: qOff, ldc: H * Dk });
      mm({ transA: true, transB: false, m: Tk, n: Dk, k: Tq, alpha: scale, a: dProbs, aOffset: 0, lda: Tk, b: q, bOffset: qOff, ldb: H * Dk, c: dk, cOffset: kOff, ldc: H * Dk });
    }
  }
}

/**
 * Router backward for N tokens, E experts, K chosen: scores [N, E] (unbiased affinities),
 * indices/dWeights [N, K], dScoresExtra [N, E] or null, logits [N, E] → dLogits [N, E].
 */
export function routerBackward(
  scores: FloatArray, indices: Int32Array, dWeights: FloatArray, dScoresExtra: FloatArray | null,
  N: number, E: number, cfg: RouterConfig, dLogits: FloatArray,
): void {
  const K = cfg.topK;
  const ds = new Float64Array(E);
  for (let n = 0; n < N; n++) {
    const row = n * E;
    for (let e = 0; e < E; e++) ds[e] = dScoresExtra ? dScoresExtra[row + e] : 0;
    if (cfg.normTopkProb) {
      // w_k = rsf · s_k / S, S = Σ_j s_j + 1e-20  ⇒  ∂/∂s_j = rsf · (g_j / S − Σ_k g_k s_k / S²)
      let S = 1e-20, gs = 0;
      for (let k = 0; k < K; k++) {
        const e = indices[n * K + k];
        S += scores[row + e];
        gs += dWeights[n * K + k] * scores[row + e];
      }
      for (let k = 0; k < K; k++) {
        ds[indices[n * K + k]] += cfg.routedScalingFactor * (dWeights[n * K + k] / S - gs / (S * S));
      }
    } else {
      for (let k = 0; k < K; k++) ds[indices[n * K + k]] += cfg.routedScalingFactor * dWeights[n * K + k];
    }
    if (cfg.scoring === 'sigmoid') {
      for (let e = 0; e < E; e++) dLogits[row + e] = ds[e] * scores[row + e] * (1 - scores[row + e]);
    } else {
      let dot = 0;
      for (let e = 0; e < E; e++) dot += ds[e] * scores[row + e];
      for (let e = 0; e < E; e++) dLogits[row + e] = scores[row + e] * (ds[e] - dot);
    }
  }
}

/**
 * Sequence-wise balance loss (SPEC §3) over `batch` sequences of `seq` tokens: scores [N, E],
 * indices [N, K] → the loss and dScores [N, E] (f_i counts choices, so it has no gradient).
 */
export function sequenceBalanceLoss(
  scores: FloatArray, indices: Int32Array, batch: number, seq: number, E: number, K: number, alpha: number, dScores: FloatArray,
): number {
  let loss = 0;
  const f = new Float64Array(E);
  const P = new Float64Array(E);
  for (let b = 0; b < batch; b++) {
    f.fill(0);
    P.fill(0);
    for (let t = 0; t < seq; t++) {
      const n = b * seq + t;
      for (let k = 0; k < K; k++) f[indices[n * K + k]] += E / (K * seq);
      let Z = 0;
      for (let e = 0; e < E; e++) Z += scores[n * E + e];
      for (let e = 0; e < E; e++) P[e] += scores[n * E + e] / Z / seq;
    }
    for (let e = 0; e < E; e++) loss += (alpha * f[e] * P[e]) / batch;
    for (let t = 0; t < seq; t++) {
      const n = b * seq + t;
      let Z = 0, fDotHat = 0;
      for (let e = 0; e < E; e++) Z += scores[n * E + e];
      for (let e = 0; e < E; e++) fDotHat += (f[e] * scores[n * E + e]) / Z;
      const c = alpha / (batch * seq * Z);
      for (let e = 0; e < E; e++) dScores[n * E + e] = c * (f[e] - fDotHat);
    }
  }
  return loss;
}

/** Fused cross-entropy: logits/dLogits [M, V], targets [M] (−1: none) → summed loss and count. */
export function crossEntropy(logits: FloatArray, targets: Int32Array, M: number, V: number, scale: number, dLogits: FloatArray): { lossSum: number; count: number } {
  let lossSum = 0, count = 0;
  for (let r = 0; r < M; r++) {
    const base = r * V;
    const target = targets[r];
    if (target < 0) {
      dLogits.fill(0, base, base + V);
      continue;
    }
    if (target >= V) throw new Error(`crossEntropy: target ${target} outside the vocabulary of ${V}`);
    let max = -Infinity;
    for (let j = 0; j < V; j++) if (logits[base + j] > max) max = logits[base + j];
    // one exp per element: dLogits holds exp(x − max) until the final scaling
    let sum = 0;
    for (let j = 0; j < V; j++) sum += dLogits[base + j] = Math.exp(logits[base + j] - max);
    lossSum += max + Math.log(sum) - logits[base + target];
    count++;
    const k = scale / sum;
    for (let j = 0; j < V; j++) dLogits[base + j] *= k;
    dLogits[base + target] -= scale;
  }
  return { lossSum, count };
}

const toBf16 = (x: number) => bf16BitsToFloat32(float32ToBf16Bits(x));

/** What changes between AdamW steps, read from AdamWScalars: lr, c1 = 1 − β1^t, c2 = 1 − β2^t and the gradient scale. */
export interface AdamWStep {
  lr: number;
  c1: number;
  c2: number;
  gradScale: number;
}

/** AdamW in place on arrays of one length, with torch's order: decay, then the Adam update with the gradient g·gradScale. */
export function adamw(p: FloatArray, g: FloatArray, m: FloatArray, v: FloatArray, h: AdamWHyper, weightDecay: number, s: AdamWStep): void {
  const decay = 1 - s.lr * weightDecay;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * s.gradScale;
    let mi = h.beta1 * m[i] + (1 - h.beta1) * gi;
    let vi = h.beta2 * v[i] + (1 - h.beta2) * gi * gi;
    if (h.momentsBf16) {
      mi = toBf16(mi);
      vi = toBf16(vi);
    }
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - (s.lr * (mi / s.c1)) / (Math.sqrt(vi / s.c2) + h.eps);
  }
}
