// Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

import type { Random } from '../util/random.js';

export interface SamplingOptions {
  /** 0 (the default) picks the most likely token; > 0 samples from softmax(logits / temperature). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 or undefined: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1: all). */
  topP?: number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/**
 * The distribution sampling draws from, as (token, probability) pairs sorted by probability,
 * after temperature, top-k and top-p. Speculative decoding's acceptance rule needs it too.
 */
export function samplingDistribution(logits: ArrayLike<number>, opts: SamplingOptions): { tokens: Int32Array; probs: Float64Array } {
  const t = opts.temperature ?? 0;
  if (!(t > 0)) {
    const best = argmax(logits);
    return { tokens: Int32Array.of(best), probs: Float64Array.of(1) };
  }
  const order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const keep = opts.topK && opts.topK > 0 ? Math.min(opts.topK, order.length) : order.length;
  const max = logits[order[0]];
  const probs = new Float64Array(keep);
  let sum = 0;
  for (let i = 0; i < keep; i++) {
    probs[i] = Math.exp((logits[order[i]] - max) / t);
    sum += probs[i];
  }
  let kept = keep;
  const topP = opts.topP ?? 1;
  let cumulative = 0;
  for (let i = 0; i < keep; i++) {
    probs[i] /= sum;
    cumulative += probs[i];
    if (topP < 1 && cumulative >= topP && kept === keep) kept = i + 1;
  }
  const total = probs.subarray(0, kept).reduce((a, b) => a + b, 0);
  return {
    tokens: Int32Array.from(order.slice(0, kept)),
    probs: Float64Array.from(probs.subarray(0, kept), (p) => p / total),
  };
}

/** One token drawn from a (token, probability) distribution. */
export function drawFrom(dist: { tokens: Int32Array; probs: Float64Array }, rng: Random): number {
  if (dist.tokens.length === 1) return dist.tokens[0];
  let u = rng.next();
  for (let i = 0; i < dist.tokens.length; i++) {
    u -= dist.probs[i];
    if (u < 0) return dist.tokens[i];
  }
  return dist.tokens[dist.tokens.length - 1];
}

export function sampleToken(logits: ArrayLike<number>, opts: SamplingOptions, rng: Random): number {
  return drawFrom(samplingDistribution(logits, opts), rng);
}
