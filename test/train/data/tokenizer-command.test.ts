import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Random } from "../../../src/util/random.js";
import { loadTokenizer } from "../../../src/io/tokenizer.js";
import { UsageError } from "../../../src/cli/args.js";
import { tokenizerCommand } from "../../../src/cli/tokenizer.js";
import { withTempDir } from "../../helpers/temp-dir.js";

const seed = Math.floor(Math.random() * 2 ** 32);
const random = new Random(seed);
const note = `(random seed ${seed})`;

const SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "dar", "qua", "pli", "é", "東"];
function randomWord(): string {
  let w = "";
  const n = 1 + random.int(3);
  for (let i = 0; i < n; i++) w += SYLLABLES[random.int(SYLLABLES.length)];
  return w;
}
function randomDocument(): string {
  return Array.from({ length: 5 + random.int(30) }, randomWord).join(" ") + ".";
}

test("dsv3 tokenizer train writes a tokenizer.json that loads back and round-trips the data", async (t) => {
  await withTempDir("dsv3-tokcmd-", async (dir) => {
    const docs = Array.from({ length: 300 }, randomDocument);
    const txt = join(dir, "a.txt");
    const jsonl = join(dir, "b.jsonl");
    writeFileSync(txt, docs.slice(0, 150).join("\n\n"));
    writeFileSync(jsonl, docs.slice(150).map((text) => JSON.stringify({ text })).join("\n"));
    const out = join(dir, "out", "tokenizer.json");
    const printed: string[] = [];
    t.mock.method(console, "log", (line: string) => void printed.push(line));
    await tokenizerCommand.run({ data: [txt, jsonl], "vocab-size": "400", out }, ["train"]);
    t.mock.restoreAll();

    assert.ok(existsSync(out));
    assert.ok(printed.some((l) => l.includes("read 300 documents")), printed.join("\n"));
    assert.ok(printed.some((l) => /\d+ tokens/.test(l)), printed.join("\n"));
    assert.equal(printed[printed.length - 1], `wrote ${out}`);
    const tokenizer = loadTokenizer(join(dir, "out"));
    assert.ok(tokenizer.vocabSize > 261 && tokenizer.vocabSize <= 400);
    assert.equal(tokenizer.eosTokenId, 1);
    for (const doc of docs.slice(0, 20)) {
      const ids = tokenizer.encode(doc, { addSpecialTokens: false });
      assert.ok(ids.length < doc.length, `merges shorten the text ${note}`);
      assert.equal(tokenizer.decode(ids), doc, note);
    }
  });
});

test("dsv3 tokenizer: the verb, the flags and the data paths are checked before training", async (t) => {
  const printed: string[] = [];
  t.mock.method(console, "log", (line: string) => void printed.push(line));
  await withTempDir("dsv3-tokcmd-", async (dir) => {
    const out = join(dir, "tokenizer.json");
    const ok = { "vocab-size": "300", out };
    await assert.rejects(tokenizerCommand.run(ok, []), (e: Error) => e instanceof UsageError && /tokenizer train/.test(e.message));
    await assert.rejects(tokenizerCommand.run(ok, ["encode"]), (e: Error) => e instanceof UsageError && /"encode"/.test(e.message));
    await assert.rejects(tokenizerCommand.run({ out }, ["train"]), (e: Error) => e instanceof UsageError && /--vocab-size/.test(e.message));
    await assert.rejects(tokenizerCommand.run({ ...ok, "vocab-size": "100" }, ["train"]), (e: Error) => e instanceof UsageError && /below 261/.test(e.message));
    await assert.rejects(tokenizerCommand.run({ "vocab-size": "300" }, ["train"]), (e: Error) => e instanceof UsageError && /--out/.test(e.message));
    const shard = join(dir, "tokens.bin");
    await assert.rejects(tokenizerCommand.run({ ...ok, data: [join(dir, "missing.txt")] }, ["train"]), /not found/);
    await assert.rejects(tokenizerCommand.run({ ...ok, data: [shard] }, ["train"]), /unknown data file extension.*tokens\.bin/);
    assert.ok(!existsSync(out));
    assert.deepEqual(printed, [], "nothing announced before the checks pass");
    assert.deepEqual(tokenizerCommand.subcommands, ["train"]);
  });
});
