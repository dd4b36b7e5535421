// Tokenizer: a Hugging Face `tokenizer.json` (+ optional `tokenizer_config.json`) read through
// @huggingface/tokenizers, wrapped in the small surface the trainer and the server need:
// ids in, ids out, a streaming decoder for generation, and the special-token ids.

import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as hfTokenizers from "@huggingface/tokenizers";

/** DeepSeek-V3's special tokens (full-width bars U+FF5C, "▁" is U+2581). */
export const DEEPSEEK_BOS_TOKEN = "<｜begin▁of▁sentence｜>";
export const DEEPSEEK_EOS_TOKEN = "<｜end▁of▁sentence｜>";
export const DEEPSEEK_PAD_TOKEN = "<｜▁pad▁｜>";
export const DEEPSEEK_USER_TOKEN = "<｜User｜>";
export const DEEPSEEK_ASSISTANT_TOKEN = "<｜Assistant｜>";

export interface EncodeOptions {
  /** Add BOS/EOS as `tokenizer_config.json` (add_bos_token/add_eos_token) or the post-processor asks. Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, pad, ...) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

/**
 * Incremental detokenizer for generation. `push` returns only the text that became printable with
 * this token; characters whose UTF-8 bytes are split over several byte-level tokens are held back
 * until complete. `flush` returns whatever is still held (for example a trailing U+FFFD of
 * genuinely invalid bytes) and resets the decoder. Concatenating every `push` and the final
 * `flush` gives exactly `decode(allIds)`.
 */
export interface StreamDecoder {
  push(id: number): string;
  flush(): string;
}

/** The fields of `tokenizer_config.json` this module reads. */
export interface TokenizerConfigJson {
  bos_token?: string | { content: string } | null;
  eos_token?: string | { content: string } | null;
  pad_token?: string | { content: string } | null;
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  clean_up_tokenization_spaces?: boolean;
  chat_template?: string | { name: string; template: string }[];
  [key: string]: unknown;
}

// Names tried, in order, when no tokenizer_config.json says which tokens are BOS and EOS.
const KNOWN_BOS = [DEEPSEEK_BOS_TOKEN, "<|begin_of_text|>", "<s>", "<|startoftext|>"];
const KNOWN_EOS = [DEEPSEEK_EOS_TOKEN, "<|end_of_text|>", "</s>", "<|endoftext|>"];

const REPLACEMENT_CHAR = "\uFFFD";

// The part of tokenizers.js this module uses. The package's .d.ts files use extensionless
// relative imports, which NodeNext resolution cannot follow, so its own types arrive as `any`.
interface HfTokenizer {
  model: { vocab: (string | undefined)[] } | null;
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_added_tokens_decoder(): Map<number, { content: string; special: boolean }>;
}
const HfTokenizerClass = (hfTokenizers as unknown as { Tokenizer: new (json: object, config: object) => HfTokenizer })
  .Tokenizer;

function tokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value !== null && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return undefined;
}

function pickChatTemplate(value: TokenizerConfigJson["chat_template"]): string | undefined {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.length > 0) {
    const named = value.find((t) => t.name === "default") ?? value[0];
    return typeof named.template === "string" ? named.template : undefined;
  }
  return undefined;
}

export class Tokenizer {
  /** One more than the largest id, added tokens included: the embedding table's row count. */
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly padToken: string | undefined;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  /** Jinja chat template from the tokenizer files, if they have one. */
  readonly chatTemplate: string | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;

  private readonly hf: HfTokenizer;
  private readonly cleanUpSpaces: boolean;
  private readonly specialIds: Set<number>;
  // Whether the tokenizer.json post-processor already inserts BOS/EOS (then the config flags must
  // not insert them a second time).
  private readonly postProcessorAddsBos: boolean;
  private readonly postProcessorAddsEos: boolean;

  constructor(tokenizerJson: object, config: TokenizerConfigJson = {}, chatTemplate?: string) {
    // tokenizers.js requires these keys to be present (null when unused).
    const json: Record<string, unknown> = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...(tokenizerJson as Record<string, unknown>),
    };
    if (!Array.isArray(json.added_tokens)) json.added_tokens = [];
    // Round-trip exactness matters more than English-prose cosmetics: cleanup stays off unless asked.
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;
    this.hf = new HfTokenizerClass(json, { ...config, clean_up_tokenization_spaces: this.cleanUpSpaces });

    const model = this.hf.model;
    if (model === null) throw new Error("tokenizer.json has no model");
    this.vocabSize = model.vocab.length;

    this.specialIds = new Set<number>();
    const addedByContent = new Map<string, number>();
    for (const [id, token] of this.hf.get_added_tokens_decoder()) {
      addedByContent.set(token.content, id);
      if (token.special) this.specialIds.add(id);
    }

    const resolve = (configured: unknown, known: string[]): [string | undefined, number | undefined] => {
      const name = tokenContent(configured);
      if (name !== undefined) return [name, this.hf.token_to_id(name)];
      if (configured === null) return [undefined, undefined];
      for (const candidate of known) {
        const id = addedByContent.get(candidate);
        if (id !== undefined) return [candidate, id];
      }
      return [undefined, undefined];
    };
    [this.bosToken, this.bosTokenId] = resolve(config.bos_token, KNOWN_BOS);
    [this.eosToken, this.eosTokenId] = resolve(config.eos_token, KNOWN_EOS);
    [this.padToken, this.padTokenId] = resolve(config.pad_token, []);
    this.addBosToken = config.add_bos_token === true;
    this.addEosToken = config.add_eos_token === true;
    this.chatTemplate = chatTemplate ?? pickChatTemplate(config.chat_template);

    const probe = this.hf.encode("", { add_special_tokens: true }).ids;
    this.postProcessorAddsBos = this.bosTokenId !== undefined && probe.includes(this.bosTokenId);
    this.postProcessorAddsEos = this.eosTokenId !== undefined && probe.includes(this.eosTokenId);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    const ids = this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    if (addSpecialTokens) {
      if (this.addBosToken && !this.postProcessorAddsBos && this.bosTokenId !== undefined) ids.unshift(this.bosTokenId);
      if (this.addEosToken && !this.postProcessorAddsEos && this.eosTokenId !== undefined) ids.push(this.eosTokenId);
    }
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return "";
    for (const id of ids) this.checkId(id);
    return this.hf.decode(ids as number[], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  /**
   * Streaming decoder (the prefix/read-offset scheme of text-generation-inference): the new text
   * is decode(window) minus decode(window without the new tokens), where the window starts one
   * emitted chunk back so decoders that treat the first token specially still join correctly.
   */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    let window: number[] = []; // ids from the previous emission boundary on
    let readOffset = 0; // ids in `window` before this offset have been emitted
    const emit = (force: boolean): string => {
      if (window.length === readOffset) return "";
      const prefixText = this.decode(window.slice(0, readOffset), options);
      const fullText = this.decode(window, options);
      if (!force && (fullText.length <= prefixText.length || fullText.endsWith(REPLACEMENT_CHAR))) return "";
      const text = fullText.slice(prefixText.length);
      window = window.slice(readOffset);
      readOffset = window.length;
      return text;
    };
    return {
      push: (id: number): string => {
        this.checkId(id); // before it enters the window, so a bad id cannot poison later pushes
        window.push(id);
        return emit(false);
      },
      flush: (): string => {
        const text = emit(true);
        window = [];
        readOffset = 0;
        return text;
      },
    };
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.hf.id_to_token(id) === undefined) {
      throw new RangeError(`token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
    }
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }
}

function readJsonFile(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`cannot read ${what} at ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} at ${path} is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Load `dir/tokenizer.json`, plus `dir/tokenizer_config.json` (BOS/EOS, add_bos_token,
 * chat_template) and `dir/chat_template.jinja` when present.
 */
export function loadTokenizer(dir: string): Tokenizer {
  const tokenizerPath = join(dir, "tokenizer.json");
  if (!existsSync(dir)) throw new Error(`tokenizer directory ${dir} does not exist (expected tokenizer.json in it)`);
  if (!statSync(dir).isDirectory()) {
    throw new Error(`tokenizer path ${dir} is not a directory (expected a directory holding tokenizer.json)`);
  }
  if (!existsSync(tokenizerPath)) throw new Error(`tokenizer.json not found: ${tokenizerPath}`);
  const json = readJsonFile(tokenizerPath, "tokenizer.json");
  if (json === null || typeof json !== "object" || Array.isArray(json) || !("model" in json)) {
    throw new Error(`tokenizer.json at ${tokenizerPath} is not a tokenizer (no "model" object)`);
  }

  let config: TokenizerConfigJson = {};
  const configPath = join(dir, "tokenizer_config.json");
  if (existsSync(configPath)) {
    const parsed = readJsonFile(configPath, "tokenizer_config.json");
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error(`tokenizer_config.json at ${configPath} is not a JSON object`);
    }
    config = parsed as TokenizerConfigJson;
  }
  const templatePath = join(dir, "chat_template.jinja");
  const chatTemplate = existsSync(templatePath) ? readFileSync(templatePath, "utf8") : undefined;

  try {
    return new Tokenizer(json, config, chatTemplate);
  } catch (err) {
    throw new Error(`tokenizer.json at ${tokenizerPath} could not be loaded: ${(err as Error).message}`);
  }
}
