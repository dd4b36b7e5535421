// The library's model object: a loaded checkpoint with its tokenizer, answering logits and
// generation requests in terms of plain arrays and text.

import fs from 'node:fs';
import path from 'node:path';
import { createBackend, type BackendOptions } from '../backend/create.js';
import { applyTokenizerChatTemplate } from '../io/chat-template.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import type { ModelConfig } from '../model/config.js';
import { loadPretrained } from '../model/load.js';
import type { DeepseekV3 } from '../model/model.js';
import { generate, type GenerateOptions, type GenerateResult } from './generate.js';
import { generateSpeculative, type SpeculativeResult } from './speculative.js';

export interface Logits {
  /** Row-major [batch, seq, vocab]. */
  data: Float32Array;
  shape: [number, number, number];
}

export class LanguageModel {
  constructor(readonly model: DeepseekV3, readonly tokenizer: Tokenizer | null, readonly dir: string) {}

  get config(): ModelConfig {
    return this.model.config;
  }

  /** Full-sequence logits for a batch of equally long token sequences. */
  logits(inputIds: number[][]): Logits {
    const batch = inputIds.length;
    const seq = inputIds[0]?.length ?? 0;
    if (batch === 0 || seq === 0) throw new Error('logits: inputIds must hold at least one non-empty sequence');
    if (inputIds.some((row) => row.length !== seq)) throw new Error('logits: every sequence of inputIds must have the same length');
    const vocab = this.config.vocabSize;
    const ids = Int32Array.from(inputIds.flat());
    for (const id of ids) if (id < 0 || id >= vocab) throw new Error(`logits: token id ${id} outside the vocabulary of ${vocab}`);
    const b = this.model.backend;
    const t = this.model.logits(ids, batch, seq);
    const data = Float32Array.from(b.download(t));
    b.free(t);
    return { data, shape: [batch, seq, vocab] };
  }

  private requireTokenizer(): Tokenizer {
    if (!this.tokenizer) throw new Error(`${this.dir} has no tokenizer.json: pass token ids instead of text`);
    return this.tokenizer;
  }

  /** Token ids of a prompt: as given, as text, or as a chat turn rendered by the chat template. */
  encodePrompt(prompt: string | number[], chat = false): number[] {
    if (typeof prompt !== 'string') return prompt;
    const tok = this.requireTokenizer();
    if (!chat) return tok.encode(prompt);
    const text = applyTokenizerChatTemplate(tok, [{ role: 'user', content: prompt }], { addGenerationPrompt: true });
    return tok.encode(text, { addSpecialTokens: false });
  }

  /**
   * Generate from a prompt (text or ids); the result carries the decoded text when a tokenizer is
   * present. `speculative: true` drafts with the MTP module and verifies with the main model.
   */
  generate(prompt: string | number[], opts: GenerateOptions & { chat?: boolean; speculative?: boolean } = {}): (GenerateResult | SpeculativeResult) & { promptTokens: number[]; text?: string } {
    const promptTokens = this.encodePrompt(prompt, opts.chat);
    const result = opts.speculative ? generateSpeculative(this.model, promptTokens, opts) : generate(this.model, promptTokens, opts);
    const text = this.tokenizer ? this.tokenizer.decode(result.tokens, { skipSpecialTokens: true }) : undefined;
    return { ...result, promptTokens, text };
  }
}

/** Load a Hugging Face DeepSeek-V3 (or V2) directory: config.json, safetensors, tokenizer files. */
export async function loadModel(dir: string, opts: BackendOptions = {}): Promise<LanguageModel> {
  // serving keeps no gradients or optimizer state: on the GPU, weights and cache are stored in BF16
  const backend = await createBackend({ storageDType: 'bf16', ...opts });
  const { model } = loadPretrained(dir, backend);
  const tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? loadTokenizer(dir) : null;
  return new LanguageModel(model, tokenizer, dir);
}
