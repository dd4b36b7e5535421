// The micro training setup shared by test/train/convergence.test.ts (on the CPU) and the CUDA
// backend's model checks (test/backend/cuda/model-cases.ts, memory.gpu.ts): a two-layer model
// with MTP, trained on sentences from a small grammar tokenized by the BPE fixture.

import type { Backend } from '../../src/backend/backend.js';
import { loadTokenizer, type Tokenizer } from '../../src/io/tokenizer.js';
import { parseConfig } from '../../src/model/config.js';
import { DeepseekV3 } from '../../src/model/model.js';
import { ParameterSet } from '../../src/model/parameters.js';
import { RandomParameters } from '../../src/model/random-parameters.js';
import { BatchSampler } from '../../src/train/data/batches.js';
import { MemoryTokenStore, tokenizeDocuments } from '../../src/train/data/token-store.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import { Random } from '../../src/util/random.js';
import { bpeTokenizerDir } from '../shared-paths.js';

let tokenizer: Tokenizer | undefined;

/** Sentences from a small grammar: learnable structure, so the loss has somewhere to go. */
function corpus(seed: number, sentences: number): string[] {
  const rng = new Random(seed);
  const subjects = ['the model', 'an expert', 'the router', 'a token', 'the cache', 'every layer'];
  const verbs = ['routes', 'stores', 'predicts', 'compresses', 'balances', 'attends to'];
  const objects = ['the latent vector', 'two tokens', 'a shared expert', 'the next word', 'its keys', 'the bias'];
  return Array.from({ length: sentences }, () => `${subjects[rng.int(6)]} ${verbs[rng.int(6)]} ${objects[rng.int(6)]}.`);
}

/**
 * A Trainer of the micro model on backend `b` for `steps` steps: weights and batch order from
 * `seed`, the data always the same (3000 sentences of corpus seed 7), `overrides` applied last.
 */
export function microTrainer(b: Backend, seed: number, steps: number, overrides: Partial<TrainerOptions> = {}): Trainer {
  tokenizer ??= loadTokenizer(bpeTokenizerDir);
  const config = parseConfig({
    model_type: 'deepseek_v3', vocab_size: tokenizer.vocabSize, hidden_size: 48, intermediate_size: 96, moe_intermediate_size: 24,
    num_hidden_layers: 2, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: 32, kv_lora_rank: 24,
    qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16, n_routed_experts: 8, n_shared_experts: 1, num_experts_per_tok: 2,
    n_group: 4, topk_group: 2, num_nextn_predict_layers: 1, max_position_embeddings: 128,
  });
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed })), true);
  const { tokens } = tokenizeDocuments([corpus(7, 3000).join(' ')], tokenizer);
  const seq = 32;
  const sampler = new BatchSampler(new MemoryTokenStore(tokens), { windowLength: seq + 2, stride: seq, seed });
  const opts: TrainerOptions = {
    steps, batchSize: 4, seqLen: seq, gradAccum: 1,
    schedule: { kind: 'cosine', peakLr: 1e-2, minLr: 1e-3, warmupSteps: 5, totalSteps: steps, decayFraction: 0.2 },
    adamw: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1, momentsDtype: 'f32' },
    mtpWeight: 0.3, balanceAlpha: 1e-4, biasUpdateSpeed: 1e-3, recompute: { norms: false, upProjections: false },
    evalBatches: 4, keepCheckpoints: 1, ...overrides,
  };
  return new Trainer(model, sampler, opts);
}
