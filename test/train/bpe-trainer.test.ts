import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { bytesToUnicode, DEFAULT_SPECIAL_TOKENS, saveTokenizer, trainByteLevelBpe } from "../../src/train/bpe-trainer.js";
import { DEEPSEEK_BOS_TOKEN, DEEPSEEK_EOS_TOKEN, loadTokenizer, Tokenizer } from "../../src/io/tokenizer.js";
import { seededRandom } from "../helpers/random.js";
import { withTempDir } from "../helpers/temp-dir.js";

const COMMON_WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "model", "token", "expert", "attention"];
const SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "dar", "qua", "pli", "ost", "ex", "gra", "thu", "er", "an"];
const UNICODE_WORDS = ["café", "naïve", "über", "東京", "データ", "模型", "Ωmega", "😀", "→"];

/**
 * Documents of sentences drawn from a Zipf-distributed word list (common English words first,
 * then random syllable words), with capitalisation, numbers, punctuation and some non-ASCII words.
 */
function makeCorpus(seed: number, targetBytes: number, vocabularyWords = 3000): string[] {
  const random = seededRandom(seed).uniform;
  const words = [...COMMON_WORDS];
  const seen = new Set(words);
  while (words.length < vocabularyWords) {
    let w = "";
    const n = 1 + Math.floor(random() * 4);
    for (let i = 0; i < n; i++) w += SYLLABLES[Math.floor(random() * SYLLABLES.length)];
    if (!seen.has(w)) {
      seen.add(w);
      words.push(w);
    }
  }
  // Zipf(1) sampling through the cumulative distribution
  const cumulative: number[] = [];
  let total = 0;
  for (let r = 1; r <= words.length; r++) cumulative.push((total += 1 / r));
  const pick = (): string => {
    const x = random() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return words[lo];
  };
  const docs: string[] = [];
  let bytes = 0;
  while (bytes < targetBytes) {
    let doc = "";
    const sentences = 3 + Math.floor(random() * 8);
    for (let s = 0; s < sentences; s++) {
      const length = 4 + Math.floor(random() * 12);
      const parts: string[] = [];
      for (let i = 0; i < length; i++) {
        const u = random();
        if (u < 0.03) parts.push(String(Math.floor(random() * 10000)));
        else if (u < 0.05) parts.push(UNICODE_WORDS[Math.floor(random() * UNICODE_WORDS.length)]);
        else parts.push(pick());
      }
      parts[0] = parts[0][0].toUpperCase() + parts[0].slice(1);
      doc += parts.join(random() < 0.9 ? " " : ", ") + (random() < 0.8 ? ". " : "? ");
      if (random() < 0.2) doc += "\n";
    }
    docs.push(doc);
    bytes += Buffer.byteLength(doc);
  }
  return docs;
}

const utf8Length = (s: string): number => Buffer.byteLength(s, "utf8");

const corpus = makeCorpus(42, 300_000);
const VOCAB = 1000;

function trainAndLoad(texts: string[], vocabSize: number): { json: ReturnType<typeof trainByteLevelBpe>; tok: Tokenizer } {
  const json = trainByteLevelBpe(texts, { vocabSize });
  return withTempDir("dsv3-bpe-", (dir) => {
    const file = saveTokenizer(json, dir);
    assert.equal(file, join(dir, "tokenizer.json"));
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), json);
    return { json, tok: loadTokenizer(dir) };
  });
}

const { json, tok } = trainAndLoad(corpus, VOCAB);

test("trained tokenizer.json has the Hugging Face byte-level BPE layout", () => {
  assert.equal(json.model.type, "BPE");
  assert.equal(Object.keys(json.model.vocab).length, VOCAB);
  // one merge per new symbol (more only if two merges ever spell the same string)
  assert.ok(json.model.merges.length >= VOCAB - DEFAULT_SPECIAL_TOKENS.length - 256);
  assert.deepEqual(
    json.added_tokens.map((t) => [t.id, t.content, t.special]),
    DEFAULT_SPECIAL_TOKENS.map((content, id) => [id, content, true]),
  );
  // the full GPT-2 byte alphabet follows the special tokens
  for (const ch of bytesToUnicode()) {
    const id = json.model.vocab[ch];
    assert.ok(id >= DEFAULT_SPECIAL_TOKENS.length && id < DEFAULT_SPECIAL_TOKENS.length + 256);
  }
  // ids are exactly 0..VOCAB-1
  assert.deepEqual(
    Object.values(json.model.vocab).sort((a, b) => a - b),
    Array.from({ length: VOCAB }, (_, i) => i),
  );
  // every merge result is in the vocabulary with an id above both of its parts
  const seenMerges = new Set<string>();
  for (const [a, b] of json.model.merges) {
    const merged = json.model.vocab[a + b];
    assert.ok(merged > json.model.vocab[a] && merged > json.model.vocab[b], `merge ${a} ${b}`);
    assert.ok(!seenMerges.has(`${a} ${b}`), `duplicate merge ${a} ${b}`);
    seenMerges.add(`${a} ${b}`);
  }
  const pre = json.pre_tokenizer as { type: string; pretokenizers: { type: string; add_prefix_space?: boolean; use_regex?: boolean }[] };
  assert.equal(pre.type, "Sequence");
  assert.deepEqual(
    pre.pretokenizers.map((p) => p.type),
    ["Split", "ByteLevel"],
  );
  assert.equal(pre.pretokenizers[1].add_prefix_space, false);
  assert.equal(pre.pretokenizers[1].use_regex, false);
  assert.equal((json.decoder as { type: string }).type, "ByteLevel");
});

test("loaded back: vocabulary size and special tokens", () => {
  assert.equal(tok.vocabSize, VOCAB);
  assert.equal(tok.bosTokenId, 0);
  assert.equal(tok.eosTokenId, 1);
  assert.deepEqual(tok.encode(`${DEEPSEEK_BOS_TOKEN}the model${DEEPSEEK_EOS_TOKEN}`).at(0), 0);
  assert.deepEqual(tok.encode(`${DEEPSEEK_BOS_TOKEN}the model${DEEPSEEK_EOS_TOKEN}`).at(-1), 1);
});

test("encode→decode round-trips arbitrary text, including bytes never seen in training", () => {
  const texts = [
    "The model routes each token to eight experts.",
    "  leading spaces,\ttabs\r\nand CRLF\n\n\n",
    "naïve café — “quotes” and emoji 🚀🔥👩‍👩‍👧",
    "中文字符和日本語のテキスト، العربية, हिन्दी, ελληνικά, 한국어",
    "\u0000\u0001\u007f control and \u200b zero-width, combining e\u0301",
    "1234567890 3.14159 -42 1e-9",
    "snake_case(x)=y+1; /* code */ {\"json\": [1, 2]}",
    `${DEEPSEEK_BOS_TOKEN}special${DEEPSEEK_EOS_TOKEN} inline`,
    "",
  ];
  const random = seededRandom(7).uniform;
  const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  for (let i = 0; i < 100; i++) {
    const bytes = new Uint8Array(1 + Math.floor(random() * 80));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
    texts.push(utf8.decode(bytes));
  }
  for (const text of texts) {
    const ids = tok.encode(text);
    assert.equal(tok.decode(ids), text, JSON.stringify(text));
    const stream = tok.createStreamDecoder();
    assert.equal(ids.map((id) => stream.push(id)).join("") + stream.flush(), text);
  }
});

test("frequent words become single tokens", () => {
  for (const word of ["the", "of", "and", "model", "token", "expert"]) {
    assert.equal(tok.encode(` ${word}`).length, 1, `" ${word}"`);
    assert.equal(tok.idToToken(tok.encode(` ${word}`)[0]), `Ġ${word}`);
  }
  assert.equal(tok.encode("The").length, 1);
});

test("encoding uses far fewer tokens than bytes", () => {
  const held = makeCorpus(4242, 50_000).join("");
  const ids = tok.encode(held);
  const ratio = utf8Length(held) / ids.length;
  assert.ok(ratio > 3, `bytes per token ${ratio.toFixed(2)}`);
  assert.equal(tok.decode(ids), held);
});

test("training is deterministic", () => {
  const again = trainByteLevelBpe(corpus, { vocabSize: VOCAB });
  assert.deepEqual(again.model.merges, json.model.merges);
});

/** Textbook BPE: recount every pair after every merge. Same tie-break as the trainer. */
function naiveMerges(texts: string[], vocabSize: number, specialCount: number, minFrequency: number): [string, string][] {
  const byteChars = bytesToUnicode();
  const pattern =
    /[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}{1,3}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;
  const counts = new Map<string, number>();
  for (const text of texts) for (const w of text.match(pattern) ?? []) counts.set(w, (counts.get(w) ?? 0) + 1);
  const words = [...counts].map(([w, c]) => ({ symbols: [...Buffer.from(w, "utf8")].map((b) => byteChars[b]), count: c }));
  const merges: [string, string][] = [];
  const tokens = new Set(byteChars);
  while (specialCount + tokens.size < vocabSize) {
    const pairs = new Map<string, { a: string; b: string; n: number }>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const k = `${symbols[i]}\u0000${symbols[i + 1]}`;
        const entry = pairs.get(k) ?? { a: symbols[i], b: symbols[i + 1], n: 0 };
        entry.n += count;
        pairs.set(k, entry);
      }
    }
    let best: { a: string; b: string; n: number } | undefined;
    for (const p of pairs.values()) {
      if (
        best === undefined ||
        p.n > best.n ||
        (p.n === best.n && (p.a < best.a || (p.a === best.a && p.b < best.b)))
      ) {
        best = p;
      }
    }
    if (best === undefined || best.n < minFrequency) break;
    merges.push([best.a, best.b]);
    tokens.add(best.a + best.b);
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.symbols.length; ) {
        if (i + 1 < w.symbols.length && w.symbols[i] === best.a && w.symbols[i + 1] === best.b) {
          out.push(best.a + best.b);
          i += 2;
        } else out.push(w.symbols[i++]);
      }
      w.symbols = out;
    }
  }
  return merges;
}

test("incremental pair counting gives exactly the merges of a full recount", () => {
  const small = [
    ...makeCorpus(5, 20_000, 300),
    "aaaaaaa aaaa aaa aa a bbbbbb ababab abababa aaaa aaaaaaaaaaaaaaaaaaaaaaa",
    "１２３４５ 12345678 ....... !!!!!! ===== 東京東京東京 🚀🚀🚀🚀",
  ];
  for (const minFrequency of [1, 2, 5]) {
    const trained = trainByteLevelBpe(small, { vocabSize: 700, specialTokens: ["<pad>"], minFrequency });
    assert.deepEqual(trained.model.merges, naiveMerges(small, 700, 1, minFrequency), `minFrequency ${minFrequency}`);
  }
});

test("stops early when no pair is frequent enough; special tokens are never learned", () => {
  const texts = [`${DEEPSEEK_EOS_TOKEN}abc abd${DEEPSEEK_EOS_TOKEN}`, `x${DEEPSEEK_BOS_TOKEN}y`];
  const trained = trainByteLevelBpe(texts, { vocabSize: 5000, specialTokens: [DEEPSEEK_BOS_TOKEN, DEEPSEEK_EOS_TOKEN] });
  // only "ab" occurs twice (in "abc" and "abd"); nothing of the special tokens' text is merged
  assert.deepEqual(trained.model.merges, [["a", "b"]]);
  assert.equal(Object.keys(trained.model.vocab).length, 2 + 256 + 1);
  assert.throws(() => trainByteLevelBpe(texts, { vocabSize: 100 }), /vocabSize 100 must be/);
  assert.throws(() => trainByteLevelBpe(texts, { vocabSize: 300, specialTokens: ["x", "x"] }), /duplicates/);
  assert.throws(() => trainByteLevelBpe(texts, { vocabSize: 300, specialTokens: ["!"] }), /spelling of a byte-level token/);
});

test("speed: 4k vocabulary on ~2 MB of text", (t) => {
  const big = makeCorpus(2024, 2_000_000, 20_000);
  const bytes = big.reduce((n, d) => n + utf8Length(d), 0);
  const start = performance.now();
  const trained = trainByteLevelBpe(big, { vocabSize: 4096 });
  const seconds = (performance.now() - start) / 1000;
  t.diagnostic(`trained 4096-token vocabulary on ${(bytes / 1e6).toFixed(2)} MB in ${seconds.toFixed(2)} s`);
  assert.equal(Object.keys(trained.model.vocab).length, 4096);
  assert.ok(seconds < 60, `training took ${seconds.toFixed(1)} s`);
});

test("tokens spelled like Object.prototype members survive save and load", () => {
  const texts = Array.from({ length: 20 }, () => "constructor\ntoString\nhasOwnProperty\n");
  const trained = trainByteLevelBpe(texts, { vocabSize: 400 });
  assert.ok(Object.hasOwn(trained.model.vocab, "constructor"));
  const reloaded = new Tokenizer(JSON.parse(JSON.stringify(trained)) as object);
  assert.deepEqual(reloaded.encode("constructor"), [trained.model.vocab["constructor"]]);
  assert.equal(reloaded.decode(reloaded.encode(texts[0])), texts[0]);
});
