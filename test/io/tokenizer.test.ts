import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { DEEPSEEK_BOS_TOKEN, DEEPSEEK_EOS_TOKEN, loadTokenizer, Tokenizer } from "../../src/io/tokenizer.js";
import { seededRandom } from "../helpers/random.js";
import { withTempDir } from "../helpers/temp-dir.js";
import { bpeTokenizerDir as fixtureDir } from "../shared-paths.js";

interface ReferenceCase {
  text: string;
  ids: number[];
  decoded: string;
}
const reference = JSON.parse(readFileSync(join(fixtureDir, "tokenizer_reference.json"), "utf8")) as ReferenceCase[];

function streamDecode(tok: Tokenizer, ids: number[], skipSpecialTokens = false): { text: string; pieces: string[] } {
  const stream = tok.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => stream.push(id));
  pieces.push(stream.flush());
  return { text: pieces.join(""), pieces };
}

const tok = loadTokenizer(fixtureDir);

test("fixture tokenizer: vocabulary and special tokens", () => {
  assert.equal(tok.vocabSize, 1024);
  assert.equal(tok.tokenToId(DEEPSEEK_BOS_TOKEN), 0);
  assert.equal(tok.tokenToId(DEEPSEEK_EOS_TOKEN), 1);
  assert.equal(tok.idToToken(0), DEEPSEEK_BOS_TOKEN);
  assert.equal(tok.idToToken(3), "!");
  assert.equal(tok.tokenToId("no such token"), undefined);
  // no tokenizer_config.json: BOS/EOS are recognised by DeepSeek's names, but not added to encodings
  assert.equal(tok.bosTokenId, 0);
  assert.equal(tok.eosTokenId, 1);
  assert.equal(tok.addBosToken, false);
  assert.equal(tok.chatTemplate, undefined);
  assert.ok(tok.isSpecialId(0) && tok.isSpecialId(1) && !tok.isSpecialId(3));
});

test("every reference text encodes to its ids and decodes to its text", () => {
  assert.ok(reference.length > 0);
  for (const { text, ids, decoded } of reference) {
    assert.deepEqual(tok.encode(text), ids, `encode ${JSON.stringify(text)}`);
    assert.equal(tok.decode(ids), decoded, `decode ${JSON.stringify(text)}`);
  }
});

test("stream decoder output equals decode() for every reference text", () => {
  for (const { text, ids } of reference) {
    const { text: streamed, pieces } = streamDecode(tok, ids);
    assert.equal(streamed, tok.decode(ids), `stream ${JSON.stringify(text)}`);
    for (const piece of pieces) assert.ok(!piece.includes("\uFFFD"), `partial character emitted for ${JSON.stringify(text)}`);
  }
});

test("stream decoder holds back a multi-byte character until its last byte arrives", () => {
  const text = "中🚀";
  const ids = tok.encode(text);
  assert.ok(ids.length > 2, "CJK and emoji are several byte-level tokens here");
  const stream = tok.createStreamDecoder();
  const pieces = ids.map((id) => stream.push(id));
  assert.equal(stream.flush(), "");
  assert.equal(pieces.join(""), text);
  assert.deepEqual(
    pieces.filter((p) => p.length > 0),
    ["中", "🚀"],
  );
});

test("stream decoder with skipSpecialTokens matches decode(skipSpecialTokens)", () => {
  const ids = [tok.bosTokenId!, ...tok.encode("héllo 世界"), tok.eosTokenId!];
  assert.equal(streamDecode(tok, ids, true).text, tok.decode(ids, { skipSpecialTokens: true }));
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "héllo 世界");
  assert.equal(streamDecode(tok, ids).text, `${DEEPSEEK_BOS_TOKEN}héllo 世界${DEEPSEEK_EOS_TOKEN}`);
});

test("random byte strings round-trip and stream-decode like decode()", () => {
  const random = seededRandom(1234).uniform;
  const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  for (let trial = 0; trial < 200; trial++) {
    const bytes = new Uint8Array(1 + Math.floor(random() * 64));
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
    const text = utf8.decode(bytes); // invalid sequences become U+FFFD, a valid character
    const ids = tok.encode(text);
    const decoded = tok.decode(ids);
    assert.equal(decoded, text);
    assert.equal(streamDecode(tok, ids).text, decoded);
  }
});

test("random unicode strings (all planes, no surrogates) round-trip and stream-decode", () => {
  const random = seededRandom(99).uniform;
  const ranges: [number, number][] = [
    [0x20, 0x7e],
    [0x0a, 0x0a],
    [0xa0, 0x24f],
    [0x370, 0x3ff],
    [0x4e00, 0x9fa5],
    [0x3040, 0x30ff],
    [0xac00, 0xd7a3],
    [0x1f300, 0x1faff],
    [0x20000, 0x2a6df],
  ];
  for (let trial = 0; trial < 100; trial++) {
    let text = "";
    const n = 1 + Math.floor(random() * 40);
    for (let i = 0; i < n; i++) {
      const [lo, hi] = ranges[Math.floor(random() * ranges.length)];
      text += String.fromCodePoint(lo + Math.floor(random() * (hi - lo + 1)));
    }
    const ids = tok.encode(text);
    assert.equal(tok.decode(ids), text);
    assert.equal(streamDecode(tok, ids).text, text);
  }
});

test("decode rejects ids outside the vocabulary and accepts an empty list", () => {
  assert.equal(tok.decode([]), "");
  assert.throws(() => tok.decode([1024]), /not in the vocabulary/);
  assert.throws(() => tok.decode([-1]), /not in the vocabulary/);
  const stream = tok.createStreamDecoder();
  assert.throws(() => stream.push(5000), /not in the vocabulary/);
  assert.equal(stream.push(tok.encode("ok")[0]) + stream.flush(), tok.decode([tok.encode("ok")[0]]));
});

test("tokenizer_config.json supplies BOS/EOS, add_bos_token and the chat template", () => {
  withTempDir("dsv3-tok-", (dir) => {
    copyFileSync(join(fixtureDir, "tokenizer.json"), join(dir, "tokenizer.json"));
    writeFileSync(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({
        add_bos_token: true,
        add_eos_token: false,
        bos_token: { __type: "AddedToken", content: DEEPSEEK_BOS_TOKEN },
        eos_token: DEEPSEEK_EOS_TOKEN,
        clean_up_tokenization_spaces: false,
        chat_template: "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
      }),
    );
    const withConfig = loadTokenizer(dir);
    assert.equal(withConfig.bosTokenId, 0);
    assert.equal(withConfig.eosTokenId, 1);
    assert.equal(withConfig.bosToken, DEEPSEEK_BOS_TOKEN);
    assert.equal(withConfig.chatTemplate, "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}");
    const plain = tok.encode("Hello world!");
    assert.deepEqual(withConfig.encode("Hello world!"), [0, ...plain]);
    assert.deepEqual(withConfig.encode("Hello world!", { addSpecialTokens: false }), plain);
    assert.equal(withConfig.decode([0, ...plain], { skipSpecialTokens: true }), "Hello world!");
  });
});

test("missing directory, missing or corrupt tokenizer.json give one clear error naming the file", () => {
  withTempDir("dsv3-tok-", (dir) => {
    assert.throws(() => loadTokenizer(join(dir, "absent")), /tokenizer directory .*absent.* does not exist.*tokenizer\.json/);
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json not found/);
    writeFileSync(join(dir, "plain-file"), "");
    assert.throws(() => loadTokenizer(join(dir, "plain-file")), /not a directory .*tokenizer\.json/);
    writeFileSync(join(dir, "tokenizer.json"), "{ this is not json");
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json at .* is not valid JSON/);
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0" }));
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json at .* is not a tokenizer/);
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify({ model: { type: "NoSuchModel" } }));
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json at .* could not be loaded/);
  });
});
