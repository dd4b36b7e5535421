// One token stream over all training data: text and JSONL files (and the default corpus)
// tokenized into memory, pre-tokenized shards read from disk on demand, concatenated in the
// order given.
//
// Document separators: every text or JSONL document is followed by the tokenizer's EOS token
// unless it is the very last thing in the stream, so documents are joined with EOS between them,
// including across files and before a shard that follows text. Shards are taken as they are:
// whoever wrote them put their own separators in.

import type { Tokenizer } from "../../io/tokenizer.js";
import { defaultCorpusDocuments, DEFAULT_CORPUS_PACKAGE, readDocuments } from "./documents.js";
import { isTokenShardPath, TokenShard } from "./token-shards.js";

export interface TokenStore {
  /** Number of tokens in the stream. */
  readonly length: number;
  /** Tokens [start, start + count) of the stream. */
  read(start: number, count: number): Int32Array;
  /** Release open files (shards); reads fail afterwards. */
  close?(): void;
}

function checkRange(what: string, start: number, count: number, length: number): void {
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > length) {
    throw new RangeError(`${what}: cannot read ${count} tokens at ${start} (it holds ${length})`);
  }
}

/** Tokens held in memory. */
export class MemoryTokenStore implements TokenStore {
  constructor(readonly tokens: Int32Array) {}

  get length(): number {
    return this.tokens.length;
  }

  read(start: number, count: number): Int32Array {
    checkRange("token store", start, count, this.tokens.length);
    return this.tokens.slice(start, start + count);
  }
}

/** Several stores read as one stream; a read that spans parts reads each part it touches once. */
export class ConcatTokenStore implements TokenStore {
  readonly length: number;
  private readonly offsets: number[]; // offsets[i] = first stream position of parts[i]

  constructor(readonly parts: readonly TokenStore[]) {
    this.offsets = [];
    let total = 0;
    for (const part of parts) {
      this.offsets.push(total);
      total += part.length;
    }
    this.length = total;
  }

  read(start: number, count: number): Int32Array {
    checkRange("token store", start, count, this.length);
    const out = new Int32Array(count);
    if (count === 0) return out;
    // last part whose offset is <= start (parts of length 0 are skipped by the loop below)
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid] <= start) lo = mid;
      else hi = mid - 1;
    }
    let filled = 0;
    for (let p = lo; filled < count; p++) {
      const part = this.parts[p];
      const from = start + filled - this.offsets[p];
      const n = Math.min(part.length - from, count - filled);
      if (n <= 0) continue;
      out.set(part.read(from, n), filled);
      filled += n;
    }
    return out;
  }

  close(): void {
    for (const part of this.parts) part.close?.();
  }
}

/** A growable Int32Array. */
class TokenBuffer {
  private data = new Int32Array(1 << 16);
  length = 0;

  push(ids: ArrayLike<number>): void {
    if (this.length + ids.length > this.data.length) {
      let size = this.data.length;
      while (size < this.length + ids.length) size *= 2;
      const grown = new Int32Array(size);
      grown.set(this.data.subarray(0, this.length));
      this.data = grown;
    }
    this.data.set(ids, this.length);
    this.length += ids.length;
  }

  take(): Int32Array {
    const out = this.data.slice(0, this.length);
    this.data = new Int32Array(1 << 16);
    this.length = 0;
    return out;
  }
}

export interface TokenizeResult {
  /** Documents with EOS between them (and none at the end). */
  tokens: Int32Array;
  documents: number;
  characters: number;
}

function eosOf(tokenizer: Tokenizer): number {
  if (tokenizer.eosTokenId === undefined) throw new Error("the tokenizer has no EOS token, which separates documents in the token stream");
  return tokenizer.eosTokenId;
}

/** Tokenize documents (no BOS/EOS added by the tokenizer) and join them with EOS. */
export function tokenizeDocuments(documents: Iterable<string>, tokenizer: Tokenizer): TokenizeResult {
  const eos = eosOf(tokenizer);
  const buffer = new TokenBuffer();
  let count = 0;
  let characters = 0;
  for (const doc of documents) {
    if (count > 0) buffer.push([eos]);
    buffer.push(tokenizer.encode(doc, { addSpecialTokens: false }));
    count++;
    characters += doc.length;
  }
  return { tokens: buffer.take(), documents: count, characters };
}

export interface OpenTokenStoreOptions {
  /** Called with one line per file opened or tokenized (documents, tokens, time). */
  log?: (line: string) => void;
}

/**
 * The token stream of `paths` in order: `.bin` shards (see token-shards.ts) are opened and read on
 * demand and need no tokenizer; `.txt` and `.jsonl` files are tokenized into memory with
 * `tokenizer`. With no paths, the default corpus (npm package nlp-corpus) is tokenized.
 */
export function openTokenStore(paths: readonly string[], tokenizer: Tokenizer | null, options: OpenTokenStoreOptions = {}): TokenStore {
  const log = options.log ?? (() => {});
  const needTokenizer = (what: string): Tokenizer => {
    if (tokenizer === null) throw new Error(`${what} is text and needs a tokenizer to become tokens (pre-tokenized shards end in .bin)`);
    return tokenizer;
  };

  const parts: TokenStore[] = [];
  const text = new TokenBuffer(); // tokens of consecutive text files not yet made a part
  let eosPending = false; // a text document was the last thing appended
  const appendDocuments = (what: string, documents: Iterable<string>): void => {
    const tok = needTokenizer(what);
    const eos = eosOf(tok);
    const started = performance.now();
    let count = 0;
    let tokens = 0;
    for (const doc of documents) {
      if (eosPending) text.push([eos]);
      const ids = tok.encode(doc, { addSpecialTokens: false });
      text.push(ids);
      tokens += ids.length;
      count++;
      eosPending = true;
    }
    const seconds = (performance.now() - started) / 1000;
    log(`${what}: ${count} documents, ${tokens} tokens in ${seconds.toFixed(1)} s`);
  };
  const flushText = (): void => {
    if (text.length > 0) parts.push(new MemoryTokenStore(text.take()));
  };

  // Open every shard and check every text file before tokenizing anything, so a bad path late in
  // the list fails at once rather than after minutes of tokenizing.
  const sources: (TokenShard | { path: string; documents: Iterable<string> })[] = [];
  try {
    for (const path of paths) {
      if (isTokenShardPath(path)) {
        const shard = TokenShard.open(path);
        sources.push(shard);
        if (shard.length === 0) throw new Error(`token shard has no tokens: ${path}`);
      } else {
        const documents = readDocuments(path);
        needTokenizer(path);
        sources.push({ path, documents });
      }
    }
    if (paths.length === 0) sources.push({ path: `default corpus (${DEFAULT_CORPUS_PACKAGE})`, documents: defaultCorpusDocuments() });

    for (const source of sources) {
      if (source instanceof TokenShard) {
        if (eosPending) text.push([eosOf(tokenizer!)]);
        eosPending = false;
        flushText();
        parts.push(source);
        log(`${source.path}: ${source.length} ${source.width} tokens`);
      } else {
        appendDocuments(source.path, source.documents);
      }
    }
    flushText();
  } catch (err) {
    for (const source of sources) if (source instanceof TokenShard) source.close();
    throw err;
  }
  return parts.length === 1 ? parts[0] : new ConcatTokenStore(parts);
}
