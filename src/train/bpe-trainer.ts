// Byte-level BPE training (GPT-2 / DeepSeek style) producing a Hugging Face `tokenizer.json`.
//
// Algorithm (as in the Rust `tokenizers` BpeTrainer):
//   1. Split each text into pre-tokens ("words") with the same Split regex the tokenizer will use,
//      and count how often each distinct word occurs.
//   2. Write every distinct word as a sequence of byte symbols (ids of the 256 GPT-2
//      byte-to-unicode characters) and count adjacent symbol pairs, weighted by word frequency,
//      keeping for each pair the set of words it occurs in.
//   3. Repeatedly take the most frequent pair (ties: the lexicographically smallest pair of token
//      strings), give the merged symbol a new id, rewrite only the words indexed under that pair,
//      and apply the resulting pair-count deltas. A max-heap with lazy re-validation picks the
//      best pair, so a merge costs time proportional to the words it touches, not the corpus.

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import * as hfTokenizers from "@huggingface/tokenizers";
import { DEEPSEEK_ASSISTANT_TOKEN, DEEPSEEK_BOS_TOKEN, DEEPSEEK_EOS_TOKEN, DEEPSEEK_PAD_TOKEN, DEEPSEEK_USER_TOKEN } from "../io/tokenizer.js";

export interface BpeTrainerOptions {
  /** Final vocabulary size: special tokens + 256 byte symbols + merged symbols. */
  vocabSize: number;
  /** Added tokens placed at ids 0..n-1 (default: DeepSeek's BOS, EOS, pad, User, Assistant). */
  specialTokens?: string[];
  /** A pair must occur at least this often to be merged (default 2). */
  minFrequency?: number;
}

/**
 * Pre-tokenization regex: letters with an optional leading non-letter (" the", "(foo"), digits in
 * groups of at most three, punctuation/symbol runs with an optional leading space and trailing
 * newlines, newline runs, and whitespace. Valid for both Oniguruma (Rust tokenizers) and
 * JavaScript `u` regexes; every character is matched by some branch.
 */
export const PRETOKENIZE_REGEX =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export const DEFAULT_SPECIAL_TOKENS = [
  DEEPSEEK_BOS_TOKEN,
  DEEPSEEK_EOS_TOKEN,
  DEEPSEEK_PAD_TOKEN,
  DEEPSEEK_USER_TOKEN,
  DEEPSEEK_ASSISTANT_TOKEN,
];

/** GPT-2's reversible map from the 256 byte values to printable unicode characters. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const table = new Array<string>(256);
  const isPrintable = new Set(printable);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = isPrintable.has(b) ? String.fromCharCode(b) : String.fromCharCode(256 + next++);
  }
  return table;
}

/** The `tokenizer.json` object (Hugging Face format) that trainByteLevelBpe returns. */
export interface ByteLevelBpeTokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: {
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }[];
  normalizer: null;
  pre_tokenizer: object;
  post_processor: null;
  decoder: object;
  model: {
    type: "BPE";
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: [string, string][];
  };
}

// tokenizers.js's Split pre-tokenizer (its .d.ts files do not resolve under NodeNext, hence the cast).
const SplitPreTokenizer = (
  hfTokenizers as unknown as { SplitPreTokenizer: new (config: object) => { pre_tokenize_text(text: string): string[] } }
).SplitPreTokenizer;

// Pair (left id, right id) packed into one number; ids stay below 2^21, the key below 2^42.
const PAIR_SHIFT = 2 ** 21;
const pairKey = (left: number, right: number): number => left * PAIR_SHIFT + right;
const pairLeft = (key: number): number => Math.floor(key / PAIR_SHIFT);
const pairRight = (key: number): number => key % PAIR_SHIFT;

/** Binary max-heap of (pair, count) ordered by count, then by the pair's token strings ascending. */
class PairHeap {
  private keys: number[] = [];
  private counts: number[] = [];
  constructor(private readonly symbols: string[]) {}

  get size(): number {
    return this.keys.length;
  }

  // true when entry i should sit above entry j
  private above(i: number, j: number): boolean {
    const ci = this.counts[i];
    const cj = this.counts[j];
    if (ci !== cj) return ci > cj;
    const ki = this.keys[i];
    const kj = this.keys[j];
    const li = this.symbols[pairLeft(ki)];
    const lj = this.symbols[pairLeft(kj)];
    if (li !== lj) return li < lj;
    return this.symbols[pairRight(ki)] < this.symbols[pairRight(kj)];
  }

  private swap(i: number, j: number): void {
    const k = this.keys[i];
    this.keys[i] = this.keys[j];
    this.keys[j] = k;
    const c = this.counts[i];
    this.counts[i] = this.counts[j];
    this.counts[j] = c;
  }

  push(key: number, count: number): void {
    this.keys.push(key);
    this.counts.push(count);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Remove the top entry; returns [key, count]. */
  pop(): [number, number] {
    const top: [number, number] = [this.keys[0], this.counts[0]];
    const lastKey = this.keys.pop()!;
    const lastCount = this.counts.pop()!;
    if (this.keys.length > 0) {
      this.keys[0] = lastKey;
      this.counts[0] = lastCount;
      let i = 0;
      const n = this.keys.length;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < n && this.above(l, best)) best = l;
        if (r < n && this.above(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Train a byte-level BPE tokenizer. Texts are split on the special tokens first (they are added
 * tokens at encode time and must not be learned as merges), then pre-tokenized with
 * PRETOKENIZE_REGEX. Stops early when no pair reaches minFrequency.
 */
export function trainByteLevelBpe(texts: Iterable<string>, options: BpeTrainerOptions): ByteLevelBpeTokenizerJson {
  const specialTokens = options.specialTokens ?? DEFAULT_SPECIAL_TOKENS;
  const minFrequency = Math.max(1, options.minFrequency ?? 2);
  const vocabSize = options.vocabSize;
  if (new Set(specialTokens).size !== specialTokens.length) throw new Error("specialTokens contains duplicates");
  if (specialTokens.some((t) => t.length === 0)) throw new Error("specialTokens contains an empty string");
  if (!Number.isInteger(vocabSize) || vocabSize < specialTokens.length + 256) {
    throw new Error(`vocabSize ${vocabSize} must be an integer >= ${specialTokens.length + 256} (special tokens + 256 bytes)`);
  }
  if (vocabSize >= PAIR_SHIFT) throw new Error(`vocabSize ${vocabSize} is too large (max ${PAIR_SHIFT - 1})`);

  const splitConfig = {
    type: "Split" as const,
    pattern: { Regex: PRETOKENIZE_REGEX },
    behavior: "Isolated" as const,
    invert: false,
  };

  // 1. word frequencies, with the tokenizer's own Split implementation so training and encoding agree
  const splitter = new SplitPreTokenizer(splitConfig);
  const specialSplit = specialTokens.length > 0 ? new RegExp(
          [...specialTokens].sort((a, b) => b.length - a.length).map(escapeRegex).join("|"), // longest first
          "u",
        ) : null;
  const wordCounts = new Map<string, number>();
  for (const text of texts) {
    const pieces = specialSplit !== null ? text.split(specialSplit) : [text];
    for (const piece of pieces) {
      if (piece.length === 0) continue;
      for (const word of splitter.pre_tokenize_text(piece)) {
        wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
      }
    }
  }

  // 2. symbols: the byte alphabet in code-point order (as the Rust trainer sorts it), after the specials
  const byteChars = bytesToUnicode();
  const symbols: string[] = []; // symbol id -> token string (vocab id = symbol id + specialTokens.length)
  const byteSymbol = new Int32Array(256);
  const alphabet = byteChars.map((ch, byte) => ({ ch, byte })).sort((a, b) => a.ch.codePointAt(0)! - b.ch.codePointAt(0)!);
  const symbolIds = new Map<string, number>();
  for (const { ch, byte } of alphabet) {
    byteSymbol[byte] = symbols.length;
    symbolIds.set(ch, symbols.length);
    symbols.push(ch);
  }

  const encoder = new TextEncoder();
  const words: Int32Array[] = []; // symbol sequence of each distinct word (rewritten in place)
  const wordLength: number[] = [];
  const wordFreq: number[] = [];
  for (const [word, count] of wordCounts) {
    const bytes = encoder.encode(word);
    const seq = new Int32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) seq[i] = byteSymbol[bytes[i]];
    words.push(seq);
    wordLength.push(seq.length);
    wordFreq.push(count);
  }
  wordCounts.clear();

  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>(); // may hold stale words; they are skipped on use
  for (let w = 0; w < words.length; w++) {
    const seq = words[w];
    const freq = wordFreq[w];
    for (let i = 0; i + 1 < seq.length; i++) {
      const key = pairKey(seq[i], seq[i + 1]);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + freq);
      let where = pairWords.get(key);
      if (where === undefined) pairWords.set(key, (where = new Set()));
      where.add(w);
    }
  }

  const heap = new PairHeap(symbols);
  for (const [key, count] of pairCounts) heap.push(key, count);

  // 3. merges
  const merges: [string, string][] = [];
  const targetSymbols = vocabSize - specialTokens.length;
  const delta = new Map<number, number>(); // pair-count changes within one word
  const increased = new Set<number>(); // pairs whose count rose during one merge
  while (symbols.length < targetSymbols && heap.size > 0) {
    const [key, count] = heap.pop();
    const current = pairCounts.get(key) ?? 0;
    if (current !== count) {
      // stale entry: counts only ever drop below a pushed value, so re-queue at the current count
      if (current > 0) heap.push(key, current);
      continue;
    }
    if (count < minFrequency) break;

    const left = pairLeft(key);
    const right = pairRight(key);
    // Different merge orders can spell the same string ("ab"+"c" and "a"+"bc"): the merge is
    // recorded but reuses the existing symbol, as the Rust trainer does.
    const mergedText = symbols[left] + symbols[right];
    let merged = symbolIds.get(mergedText);
    if (merged === undefined) {
      merged = symbols.length;
      symbols.push(mergedText);
      symbolIds.set(mergedText, merged);
    }
    merges.push([symbols[left], symbols[right]]);

    const where = pairWords.get(key)!;
    pairWords.delete(key);
    pairCounts.delete(key);
    increased.clear();
    for (const w of where) {
      const seq = words[w];
      const len = wordLength[w];
      const freq = wordFreq[w];
      // Subtract every pair of the old sequence and add every pair of the new one; pairs away from
      // the merge cancel in `delta`. Words are short, so this is as cheap as tracking neighbours
      // and it handles runs like "a a a" for the pair (a, a) without special cases.
      let hit = false;
      for (let i = 0; i + 1 < len; i++) {
        if (seq[i] === left && seq[i + 1] === right) hit = true;
        addDelta(delta, pairKey(seq[i], seq[i + 1]), -freq);
      }
      if (!hit) {
        delta.clear(); // stale index entry: the word lost this pair to an earlier merge
        continue;
      }
      let out = 0;
      for (let i = 0; i < len; ) {
        if (i + 1 < len && seq[i] === left && seq[i + 1] === right) {
          seq[out++] = merged;
          i += 2;
        } else {
          seq[out++] = seq[i++];
        }
      }
      wordLength[w] = out;
      for (let i = 0; i + 1 < out; i++) addDelta(delta, pairKey(seq[i], seq[i + 1]), freq);
      for (const [k, d] of delta) {
        if (d === 0 || k === key) continue;
        const c = (pairCounts.get(k) ?? 0) + d;
        if (c > 0) pairCounts.set(k, c);
        else pairCounts.delete(k);
        if (d > 0) {
          increased.add(k);
          let set = pairWords.get(k);
          if (set === undefined) pairWords.set(k, (set = new Set()));
          set.add(w);
        }
      }
      delta.clear();
    }
    // Decreases leave over-estimates in the heap (re-validated when popped); increases are queued
    // once per merge at their final count.
    for (const k of increased) {
      const c = pairCounts.get(k);
      if (c !== undefined) heap.push(k, c);
    }
  }

  // 4. tokenizer.json
  // Entries, not assignments: a learned token may well be spelled "__proto__" or "constructor".
  const vocabEntries: [string, number][] = [];
  const spelled = new Set<string>();
  const addedTokens = specialTokens.map((content, id) => {
    vocabEntries.push([content, id]);
    spelled.add(content);
    return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
  });
  for (let s = 0; s < symbols.length; s++) {
    if (spelled.has(symbols[s])) {
      throw new Error(`special token ${JSON.stringify(symbols[s])} has the spelling of a byte-level token; choose another`);
    }
    vocabEntries.push([symbols[s], s + specialTokens.length]);
  }
  const vocab = Object.fromEntries(vocabEntries) as Record<string, number>;

  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [splitConfig, { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false }],
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

function addDelta(delta: Map<number, number>, key: number, d: number): void {
  delta.set(key, (delta.get(key) ?? 0) + d);
}

/**
 * Write a tokenizer.json object. `path` is either the file to write (ending in .json) or a
 * directory, which is created if needed and receives `tokenizer.json`. Returns the file written.
 */
export function saveTokenizer(tokenizerJson: object, path: string): string {
  const file = path.endsWith(".json") ? path : join(path, "tokenizer.json");
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(tokenizerJson, null, 2) + "\n", "utf8");
  return file;
}
