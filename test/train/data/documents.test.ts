import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Random } from "../../../src/util/random.js";
import {
  corpusDocuments,
  defaultCorpusDirectory,
  defaultCorpusDocuments,
  defaultCorpusFiles,
  DEFAULT_CORPUS_DOCUMENT_CHARS,
  readDocuments,
  readLines,
} from "../../../src/train/data/documents.js";
import { withTempDir } from "../../helpers/temp-dir.js";

const seed = Math.floor(Math.random() * 2 ** 32);
const random = new Random(seed);
const note = `(random seed ${seed})`;

const ALPHABET = ["a", "b", "c", "x", "y", "z", "é", "ü", "東", "京", "😀", "→", " ", " ", "'", '"', "\\", "\t"];
function randomWord(maxLength = 12): string {
  let s = "";
  const n = 1 + random.int(maxLength);
  for (let i = 0; i < n; i++) s += ALPHABET[random.int(ALPHABET.length)];
  return s;
}
/** A document of 1..4 lines, none blank, none with a leading/trailing newline. */
function randomDocument(): string {
  const lines: string[] = [];
  const n = 1 + random.int(4);
  for (let i = 0; i < n; i++) lines.push(`${randomWord()}${random.int(1000)}${randomWord()}`);
  return lines.join("\n");
}

test(".txt: documents are separated by blank lines; CRLF, BOM and whitespace-only lines handled", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const docs = Array.from({ length: 50 }, randomDocument);
    const file = join(dir, "corpus.txt");
    // separators of one or more blank lines, some holding spaces; CRLF line ends; a BOM; leading and trailing blank lines
    let text = "\uFEFF\n \n";
    for (const doc of docs) {
      text += doc.split("\n").join("\r\n") + "\r\n";
      text += ["\r\n", "\n\n", "  \t\n", "\n \n\n"][random.int(4)];
    }
    writeFileSync(file, text);
    assert.deepEqual([...readDocuments(file)], docs, note);
  });
});

test(".txt: a file without a final newline and without blank lines is one document", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const file = join(dir, "one.TXT");
    writeFileSync(file, "first line\nsecond line");
    assert.deepEqual([...readDocuments(file)], ["first line\nsecond line"]);
  });
});

test("readLines streams a file larger than its 1 MiB buffer, multi-byte characters split across chunks", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const lines: string[] = [];
    let bytes = 0;
    while (bytes < 3.5 * 2 ** 20) {
      const line = randomWord(400);
      lines.push(line);
      bytes += Buffer.byteLength(line) + 1;
    }
    const file = join(dir, "big.txt");
    writeFileSync(file, lines.join("\n") + "\n");
    let i = 0;
    for (const line of readLines(file)) {
      assert.equal(line, lines[i], `line ${i + 1} ${note}`);
      i++;
    }
    assert.equal(i, lines.length);
  });
});

test(".jsonl: the text field of each line; blank lines and empty texts skipped; other fields ignored", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const docs = Array.from({ length: 40 }, randomDocument);
    const file = join(dir, "corpus.jsonl");
    const lines = docs.map((text, i) => JSON.stringify(i % 3 === 0 ? { id: i, text, meta: { source: "x" } } : { text }));
    lines.splice(5, 0, "", "   ", JSON.stringify({ text: "" }));
    writeFileSync(file, lines.join("\n") + "\n");
    assert.deepEqual([...readDocuments(file)], docs, note);
  });
});

test(".jsonl: a bad line is an error naming the file and the line number", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const file = join(dir, "bad.jsonl");
    const good = Array.from({ length: 6 }, () => JSON.stringify({ text: randomDocument() }));
    const cases: [string, RegExp][] = [
      ['{"text": "unterminated', /not valid JSON/],
      ['["text"]', /expected a JSON object/],
      ['{"content": "no text field"}', /no string "text" field/],
      ['{"text": 42}', /no string "text" field/],
      ["null", /expected a JSON object/],
    ];
    for (const [badLine, message] of cases) {
      const badAt = 1 + random.int(good.length + 1); // 1-based line number of the bad line
      const lines = [...good];
      lines.splice(badAt - 1, 0, badLine);
      writeFileSync(file, lines.join("\n"));
      assert.throws(
        () => [...readDocuments(file)],
        (err: Error) => err.message.startsWith(`${file}:${badAt}: `) && message.test(err.message),
        `${badLine} at line ${badAt} ${note}`,
      );
    }
  });
});

test("missing file, empty file and unknown extension are errors naming the file", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const missing = join(dir, "missing.txt");
    assert.throws(() => readDocuments(missing), (err: Error) => err.message.includes("not found") && err.message.includes(missing));
    for (const [name, content] of [
      ["empty.txt", ""],
      ["blank.txt", "\n  \n\n"],
      ["empty.jsonl", ""],
      ["blank.jsonl", '\n{"text": ""}\n'],
    ]) {
      const file = join(dir, name);
      writeFileSync(file, content);
      assert.throws(() => [...readDocuments(file)], (err: Error) => err.message.includes("no documents") && err.message.includes(file), name);
    }
    const csv = join(dir, "data.csv");
    writeFileSync(csv, "a,b\n");
    assert.throws(() => readDocuments(csv), (err: Error) => err.message.includes("unknown data file extension") && err.message.includes(csv));
    // corpusDocuments checks every path before producing anything
    const txt = join(dir, "ok.txt");
    writeFileSync(txt, "hello\n");
    assert.throws(() => corpusDocuments([txt, missing]), (err: Error) => err.message.includes(missing));
  });
});

test("corpusDocuments reads several files in order", () => {
  withTempDir("dsv3-documents-", (dir) => {
    const a = Array.from({ length: 5 }, randomDocument);
    const b = Array.from({ length: 7 }, randomDocument);
    writeFileSync(join(dir, "a.txt"), a.join("\n\n"));
    writeFileSync(join(dir, "b.jsonl"), b.map((text) => JSON.stringify({ text })).join("\n"));
    assert.deepEqual([...corpusDocuments([join(dir, "a.txt"), join(dir, "b.jsonl")])], [...a, ...b], note);
  });
});

test("the default corpus (nlp-corpus) loads: more than 1 MB of text in documents of a sensible size", () => {
  assert.ok(defaultCorpusDirectory().length > 0);
  assert.equal(defaultCorpusFiles().length, 100);
  let chars = 0;
  let count = 0;
  let short = 0;
  for (const doc of defaultCorpusDocuments()) {
    assert.equal(typeof doc, "string");
    assert.ok(doc.length > 0 && doc.length < DEFAULT_CORPUS_DOCUMENT_CHARS + 1000, `document of ${doc.length} characters`);
    if (doc.length < DEFAULT_CORPUS_DOCUMENT_CHARS) short++;
    chars += doc.length;
    count++;
  }
  assert.ok(chars > 1_000_000, `${chars} characters`);
  assert.ok(count > 1000, `${count} documents`);
  assert.ok(short <= defaultCorpusFiles().length, `${short} documents below the target size (at most one per build file)`);
  // deterministic: the same documents every time
  const again = [...defaultCorpusDocuments()];
  assert.equal(again.length, count);
  assert.deepEqual([...corpusDocuments([])].slice(0, 3), again.slice(0, 3));
});
