// Speculative decoding with the first MTP module as the drafter (SPEC §4). After each main-model
// token, MTP module 1 drafts the token after it from the main model's final hidden state; the main
// model then verifies [token, draft] in one forward over the latent cache. Greedy: the draft is
// kept when it equals the main model's own choice. Sampling: the standard rejection rule (keep with
// probability min(1, p/q), else draw from the normalised max(0, p − q)), so the output follows the
// main model's distribution exactly. A kept draft yields two tokens for one main forward.

import type { DeepseekV3 } from '../model/model.js';
import type { Tensor } from '../tensor/tensor.js';
import { Random } from '../util/random.js';
import type { GenerateOptions, GenerateResult } from './generate.js';
import { LatentCache } from './latent-cache.js';
import { drawFrom, samplingDistribution, type SamplingOptions } from './sampling.js';

export interface SpeculativeResult extends GenerateResult {
  /** Drafts proposed and drafts the main model kept. */
  drafted: number;
  accepted: number;
}

type Distribution = { tokens: Int32Array; probs: Float64Array };

function probabilityOf(dist: Distribution, token: number): number {
  const i = dist.tokens.indexOf(token);
  return i < 0 ? 0 : dist.probs[i];
}

/** The residual distribution norm(max(0, p − q)) a rejected draft is replaced from. */
function residual(p: Distribution, q: Distribution): Distribution {
  const probs = Float64Array.from(p.tokens, (t, i) => Math.max(0, p.probs[i] - probabilityOf(q, t)));
  const sum = probs.reduce((a, b) => a + b, 0);
  return sum > 0 ? { tokens: p.tokens, probs: probs.map((x) => x / sum) } : p;
}

/** Host rows of a [rows, vocab] logits tensor. */
function logitRows(model: DeepseekV3, logits: Tensor): Float32Array[] {
  const V = model.config.vocabSize;
  const all = Float32Array.from(model.backend.download(logits));
  return Array.from({ length: all.length / V }, (_, r) => all.subarray(r * V, (r + 1) * V));
}

export function generateSpeculative(model: DeepseekV3, prompt: number[], opts: GenerateOptions = {}): SpeculativeResult {
  if (model.mtp.length === 0) throw new Error('speculative decoding needs an MTP module: this model has none (num_nextn_predict_layers = 0 or no MTP weights in the checkpoint)');
  if (prompt.length === 0) throw new Error('generate: the prompt has no tokens');
  const b = model.backend;
  const config = model.config;
  const mtp = model.mtp[0];
  const maxNew = opts.maxNewTokens ?? 64;
  const stop = new Set(opts.stopTokens ?? config.eosTokenIds);
  const sampling: SamplingOptions = opts;
  const rng = new Random(opts.seed ?? 0);
  // one position beyond the last token for a draft that is verified but may be dropped
  const capacity = Math.min(config.maxPositionEmbeddings, prompt.length + maxNew + 1);
  if (prompt.length >= config.maxPositionEmbeddings) throw new Error(`the prompt has ${prompt.length} tokens; the model takes at most ${config.maxPositionEmbeddings} positions`);
  const mainCache = new LatentCache(b, config, 1, capacity);
  const mtpCache = new LatentCache(b, config, 1, capacity, 1);

  /** Main model over `tokens` at the cache's end → normed hidden [n, d] and host logits rows. */
  const mainForward = (tokens: number[]) => {
    const h = model.hidden(Int32Array.from(tokens), 1, tokens.length, { cache: mainCache });
    const logits = model.lmHead.forward(b, h);
    const rows = logitRows(model, logits);
    b.free(logits);
    return { h, rows };
  };
  /** MTP module over the positions [mtpCache.length, +n): main hidden rows h and the tokens that follow them → draft logits of the last. */
  const mtpDraft = (h: Tensor, nextTokens: number[]) => {
    const n = nextTokens.length;
    const ctx = model.context(1, n, mtpCache.length);
    const emb = model.embed(Int32Array.from(nextTokens));
    const { normed, hk } = mtp.forward(b, h, emb, ctx, { cache: mtpCache.layers[0] });
    mtpCache.length += n;
    const last = b.rows(normed, n - 1, 1);
    const logits = model.lmHead.forward(b, last);
    const q = samplingDistribution(logitRows(model, logits)[0], sampling);
    for (const t of [ctx.positions, emb, normed, hk, logits]) b.free(t);
    return q;
  };

  const tokens: number[] = [];
  let drafted = 0, accepted = 0;
  let stoppedBy: GenerateResult['stoppedBy'] = 'max-new-tokens';
  const emit = (t: number): boolean => {
    tokens.push(t);
    opts.onToken?.(t);
    if (stop.has(t)) stoppedBy = 'stop-token';
    return stop.has(t) || tokens.length >= maxNew;
  };

  const t0 = performance.now();
  let t1 = t0;
  try {
    const pre = mainForward(prompt);
    let current = drawFrom(samplingDistribution(pre.rows[pre.rows.length - 1], sampling), rng);
    t1 = performance.now();
    let done = emit(current);
    let q = done ? null : mtpDraft(pre.h, [...prompt.slice(1), current]);
    b.free(pre.h);
    while (!done && q) {
      if (prompt.length + tokens.length + 1 > capacity) {
        stoppedBy = 'max-positions';
        break;
      }
      const draft = drawFrom(q, rng);
      drafted++;
      const verify = mainForward([current, draft]);
      const p = samplingDistribution(verify.rows[0], sampling);
      const keep = p.tokens.length === 1 ? p.tokens[0] === draft : rng.next() < Math.min(1, probabilityOf(p, draft) / probabilityOf(q, draft));
      if (keep) {
        accepted++;
        const next = drawFrom(samplingDistribution(verify.rows[1], sampling), rng);
        done = emit(draft) || emit(next);
        if (!done) q = mtpDraft(verify.h, [draft, next]);
        current = next;
      } else {
        mainCache.length -= 1; // the draft's latent is stale; the next forward overwrites it
        const corrected = drawFrom(p.tokens.length === 1 ? p : residual(p, q), rng);
        done = emit(corrected);
        if (!done) q = mtpDraft(b.rows(verify.h, 0, 1), [corrected]);
        current = corrected;
      }
      b.free(verify.h);
    }
  } finally {
    mainCache.free();
    mtpCache.free();
  }
  const t2 = performance.now();
  const decodeSeconds = (t2 - t1) / 1000;
  return {
    tokens, stoppedBy, drafted, accepted,
    prefillSeconds: (t1 - t0) / 1000,
    decodeSeconds,
    decodeTokensPerSecond: tokens.length > 1 ? (tokens.length - 1) / decodeSeconds : 0,
    cacheBytesPerToken: LatentCache.bytesPerToken(config, b.floatDType),
  };
}
