// Autoregressive generation for one sequence: a prefill over the prompt, then one token at a
// time, over the latent cache (absorbed attention) with a step captured once and replayed
// (DecodeStep) or, without the cache, a full forward per token.

import type { DeepseekV3 } from '../model/model.js';
import type { Tensor } from '../tensor/tensor.js';
import { Random } from '../util/random.js';
import { DecodeStep } from './decode-step.js';
import { LatentCache } from './latent-cache.js';
import { sampleToken, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most (default 64). */
  maxNewTokens?: number;
  /** Seed of the sampling generator (default 0). */
  seed?: number;
  /** Generation ends after any of these tokens (default: the config's eos_token_id). */
  stopTokens?: number[];
  /** Decode over the latent cache (default true); false re-runs the whole sequence per token. */
  useCache?: boolean;
  /** Called with each new token as soon as it is chosen (streaming). */
  onToken?: (token: number) => void;
}

export interface GenerateResult {
  /** The new tokens, the stop token included when one ended generation. */
  tokens: number[];
  stoppedBy: 'stop-token' | 'max-new-tokens' | 'max-positions';
  prefillSeconds: number;
  decodeSeconds: number;
  /** New tokens after the first, per second of decoding. */
  decodeTokensPerSecond: number;
  /** Latent-cache bytes per token over all layers (kv_lora + rope numbers per layer). */
  cacheBytesPerToken: number;
}

/** The last row of a logits tensor [rows, vocab], on the host. */
export function lastRow(model: DeepseekV3, logits: Tensor): Float32Array | Float64Array {
  const v = model.config.vocabSize;
  const all = model.backend.download(logits);
  return all.subarray(all.length - v);
}

export function generate(model: DeepseekV3, prompt: number[], opts: GenerateOptions = {}): GenerateResult {
  if (prompt.length === 0) throw new Error('generate: the prompt has no tokens');
  const b = model.backend;
  const config = model.config;
  const maxNew = opts.maxNewTokens ?? 64;
  const stop = new Set(opts.stopTokens ?? config.eosTokenIds);
  const useCache = opts.useCache ?? true;
  const rng = new Random(opts.seed ?? 0);
  const capacity = Math.min(config.maxPositionEmbeddings, prompt.length + maxNew);
  if (prompt.length >= config.maxPositionEmbeddings) {
    throw new Error(`the prompt has ${prompt.length} tokens; the model takes at most ${config.maxPositionEmbeddings} positions`);
  }
  const cache = useCache ? new LatentCache(b, config, 1, capacity) : null;
  const step = cache ? new DecodeStep(model, cache) : null;
  const sequence = [...prompt];
  const tokens: number[] = [];
  let stoppedBy: GenerateResult['stoppedBy'] = 'max-new-tokens';
  const t0 = performance.now();
  let t1 = t0;
  try {
    while (tokens.length < maxNew) {
      if (sequence.length > capacity) {
        stoppedBy = 'max-positions';
        break;
      }
      let next: number;
      if (step && tokens.length > 0) {
        // the step's logits stay its own
        next = sampleToken(lastRow(model, step.run(Int32Array.of(sequence[sequence.length - 1]), step.cache.length)), opts, rng);
      } else {
        // the prefill over the cache, or a whole forward without it
        const ids = Int32Array.from(sequence);
        const logits = model.logits(ids, 1, ids.length, { cache: cache ?? undefined, lastOnly: true });
        next = sampleToken(lastRow(model, logits), opts, rng);
        b.free(logits);
      }
      if (tokens.length === 0) t1 = performance.now();
      tokens.push(next);
      sequence.push(next);
      opts.onToken?.(next);
      if (stop.has(next)) {
        stoppedBy = 'stop-token';
        break;
      }
    }
  } finally {
    step?.free();
    cache?.free();
  }
  const t2 = performance.now();
  const decodeSeconds = (t2 - t1) / 1000;
  return {
    tokens,
    stoppedBy,
    prefillSeconds: (t1 - t0) / 1000,
    decodeSeconds,
    decodeTokensPerSecond: tokens.length > 1 ? (tokens.length - 1) / decodeSeconds : 0,
    cacheBytesPerToken: LatentCache.bytesPerToken(config, b.floatDType),
  };
}
