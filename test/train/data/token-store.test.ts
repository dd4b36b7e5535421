import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Random } from "../../../src/util/random.js";
import { loadTokenizer } from "../../../src/io/tokenizer.js";
import { defaultCorpusDocuments } from "../../../src/train/data/documents.js";
import { writeTokenShard } from "../../../src/train/data/token-shards.js";
import { MemoryTokenStore, openTokenStore, tokenizeDocuments } from "../../../src/train/data/token-store.js";
import { bpeTokenizerDir } from "../../shared-paths.js";
import { withTempDir } from "../../helpers/temp-dir.js";

const seed = Math.floor(Math.random() * 2 ** 32);
const random = new Random(seed);
const note = `(random seed ${seed})`;
const tokenizer = loadTokenizer(bpeTokenizerDir);
const eos = tokenizer.eosTokenId!;

const WORDS = ["the", "model", "expert", "token", "attention", "latent", "café", "東京", "42", "3.14", ",", ".", "!", "(x)"];
function randomDocument(): string {
  const words: string[] = [];
  const n = 3 + random.int(40);
  for (let i = 0; i < n; i++) words.push(WORDS[random.int(WORDS.length)]);
  return words.join(" ");
}
function randomTokens(n: number, below: number): number[] {
  return Array.from({ length: n }, () => random.int(below));
}
const encode = (text: string): number[] => tokenizer.encode(text, { addSpecialTokens: false });

test("tokenizeDocuments joins documents with EOS between them", () => {
  const docs = Array.from({ length: 5 }, randomDocument);
  const result = tokenizeDocuments(docs, tokenizer);
  const expected = docs.flatMap((d, i) => (i === 0 ? encode(d) : [eos, ...encode(d)]));
  assert.deepEqual(Array.from(result.tokens), expected, note);
  assert.equal(result.documents, 5);
  assert.equal(result.characters, docs.reduce((a, d) => a + d.length, 0));
});

test("openTokenStore mixes text, JSONL and shards in order, EOS after every text document but the last", () => {
  withTempDir("dsv3-store-", (dir) => {
    const txtDocs = Array.from({ length: 4 }, randomDocument);
    const jsonlDocs = Array.from({ length: 3 }, randomDocument);
    const moreDocs = Array.from({ length: 2 }, randomDocument);
    const shardA = randomTokens(300, 1024);
    const shardB = randomTokens(50, 1024);
    const paths = [join(dir, "a.txt"), join(dir, "b.jsonl"), join(dir, "c.u32.bin"), join(dir, "d.bin"), join(dir, "e.txt")];
    writeFileSync(paths[0], txtDocs.join("\n\n") + "\n");
    writeFileSync(paths[1], jsonlDocs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
    writeTokenShard(paths[2], shardA);
    writeTokenShard(paths[3], shardB);
    writeFileSync(paths[4], moreDocs.join("\n\n"));

    const logged: string[] = [];
    const store = openTokenStore(paths, tokenizer, { log: (line) => logged.push(line) });
    const expected = [
      ...[...txtDocs, ...jsonlDocs].flatMap((d) => [...encode(d), eos]), // the EOS before shard A included
      ...shardA,
      ...shardB,
      ...moreDocs.flatMap((d, i) => (i === 0 ? encode(d) : [eos, ...encode(d)])),
    ];
    assert.equal(store.length, expected.length);
    assert.deepEqual(Array.from(store.read(0, store.length)), expected, note);
    for (let i = 0; i < 100; i++) {
      const start = random.int(expected.length);
      const count = random.int(expected.length - start + 1);
      assert.deepEqual(Array.from(store.read(start, count)), expected.slice(start, start + count), `[${start}, +${count}) ${note}`);
    }
    assert.equal(logged.length, paths.length);
    assert.match(logged[0], /a\.txt: 4 documents, \d+ tokens/);
    store.close?.();
  });
});

test("shards need no tokenizer; text does, and says so naming the file", () => {
  withTempDir("dsv3-store-", (dir) => {
    const tokens = randomTokens(1000, 65536);
    const a = join(dir, "a.bin");
    const b = join(dir, "b.u16.bin");
    writeTokenShard(a, tokens.slice(0, 400));
    writeTokenShard(b, tokens.slice(400));
    const store = openTokenStore([a, b], null);
    assert.deepEqual(Array.from(store.read(350, 100)), tokens.slice(350, 450), note);
    store.close?.();

    const txt = join(dir, "t.txt");
    writeFileSync(txt, "some text\n");
    assert.throws(() => openTokenStore([a, txt], null), (err: Error) => err.message.includes(txt) && err.message.includes("needs a tokenizer"));
    assert.throws(() => openTokenStore([], null), /default corpus.*needs a tokenizer/);
  });
});

test("every path is checked before anything is tokenized", () => {
  withTempDir("dsv3-store-", (dir) => {
    const txt = join(dir, "t.txt");
    writeFileSync(txt, "some text\n");
    const empty = join(dir, "empty.bin");
    writeFileSync(empty, "");
    const logged: string[] = [];
    const log = (line: string): void => void logged.push(line);
    assert.throws(() => openTokenStore([txt, join(dir, "gone.jsonl")], tokenizer, { log }), /not found.*gone\.jsonl/);
    assert.throws(() => openTokenStore([txt, join(dir, "x.parquet")], tokenizer, { log }), /unknown data file extension.*x\.parquet/);
    assert.throws(() => openTokenStore([txt, empty], tokenizer, { log }), /token shard has no tokens.*empty\.bin/);
    assert.deepEqual(logged, []);
  });
});

test("MemoryTokenStore reads copies and checks ranges", () => {
  const tokens = Int32Array.from(randomTokens(100, 1000));
  const store = new MemoryTokenStore(tokens);
  const part = store.read(10, 5);
  part[0] = -1;
  assert.notEqual(tokens[10], -1);
  assert.throws(() => store.read(99, 2), RangeError);
});

test("with no paths the default corpus is tokenized", () => {
  const started = performance.now();
  const store = openTokenStore([], tokenizer);
  const seconds = (performance.now() - started) / 1000;
  assert.ok(store.length > 1_000_000, `${store.length} tokens`);
  const first = defaultCorpusDocuments().next().value as string;
  const head = encode(first);
  assert.deepEqual(Array.from(store.read(0, head.length + 1)), [...head, eos]);
  console.log(`default corpus: ${store.length} tokens in ${seconds.toFixed(1)} s with the 1024-token fixture tokenizer`);
});
