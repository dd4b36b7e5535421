// Documents for training: plain text and JSONL files, read line by line with a fixed buffer so a
// file of any size streams through, and the default corpus from the npm package `nlp-corpus`
// (MIT), which ships with the engine so training needs no download.
//
// Formats, chosen by extension (case-insensitive):
//   .txt    documents are separated by blank lines (lines holding only whitespace): each run of
//           non-blank lines is one document, its lines joined with "\n". A file with no blank
//           line is one document.
//   .jsonl  one JSON object per line with a string field `text`; blank lines are skipped, and
//           so are objects whose text is empty. Any other line is an error naming file and line.
//
// Every reader is a synchronous generator: documents are produced one at a time, so the BPE
// trainer and the tokenizing token store consume them without holding the corpus as text.

import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The npm package of the default corpus. */
export const DEFAULT_CORPUS_PACKAGE = "nlp-corpus";

/**
 * The default corpus's sentences are independent of one another (it is a sample of sentences from
 * many sources); consecutive sentences of one build file are joined with spaces into documents of
 * at least this many characters (about a thousand tokens with a small BPE).
 */
export const DEFAULT_CORPUS_DOCUMENT_CHARS = 4096;

const READ_CHUNK_BYTES = 1 << 20;

export type DocumentFormat = "text" | "jsonl";

/** The document format of a path by its extension, or undefined when it is neither .txt nor .jsonl. */
export function documentFormat(path: string): DocumentFormat | undefined {
  const ext = extname(path).toLowerCase();
  if (ext === ".txt") return "text";
  if (ext === ".jsonl") return "jsonl";
  return undefined;
}

function checkReadableFile(path: string): void {
  if (!existsSync(path)) throw new Error(`data file not found: ${path}`);
  if (!statSync(path).isFile()) throw new Error(`data path is not a file: ${path}`);
}

/**
 * The lines of a UTF-8 file without their terminators ("\n" or "\r\n"), read in 1 MiB chunks.
 * A byte-order mark at the start is dropped.
 */
export function* readLines(path: string): Generator<string> {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    const decoder = new TextDecoder("utf-8");
    let pending = "";
    let first = true;
    for (;;) {
      const n = readSync(fd, buffer, 0, buffer.length, null);
      let text = n > 0 ? decoder.decode(buffer.subarray(0, n), { stream: true }) : decoder.decode();
      if (first && text.length > 0) {
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
        first = false;
      }
      pending += text;
      let start = 0;
      for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n", start)) {
        const end = nl > start && pending.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
        yield pending.slice(start, end);
        start = nl + 1;
      }
      pending = pending.slice(start);
      if (n === 0) break;
    }
    if (pending.length > 0) yield pending.endsWith("\r") ? pending.slice(0, -1) : pending;
  } finally {
    closeSync(fd);
  }
}

function* textDocuments(path: string): Generator<string> {
  let lines: string[] = [];
  let count = 0;
  for (const line of readLines(path)) {
    if (line.trim().length === 0) {
      if (lines.length > 0) {
        count++;
        yield lines.join("\n");
        lines = [];
      }
    } else {
      lines.push(line);
    }
  }
  if (lines.length > 0) {
    count++;
    yield lines.join("\n");
  }
  if (count === 0) throw new Error(`data file has no documents (it is empty or blank): ${path}`);
}

function* jsonlDocuments(path: string): Generator<string> {
  let lineNumber = 0;
  let count = 0;
  for (const line of readLines(path)) {
    lineNumber++;
    if (line.trim().length === 0) continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new Error(`${path}:${lineNumber}: not valid JSON (${(err as Error).message})`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(`${path}:${lineNumber}: expected a JSON object with a string "text" field`);
    }
    const text = (value as { text?: unknown }).text;
    if (typeof text !== "string") {
      throw new Error(`${path}:${lineNumber}: the object has no string "text" field`);
    }
    if (text.length === 0) continue;
    count++;
    yield text;
  }
  if (count === 0) throw new Error(`data file has no documents (no line with a non-empty "text"): ${path}`);
}

/**
 * The documents of one .txt or .jsonl file (formats above). The extension and the file's existence
 * are checked at once; parse errors and "no documents" surface while iterating.
 */
export function readDocuments(path: string): Generator<string> {
  const format = documentFormat(path);
  if (format === undefined) {
    throw new Error(`unknown data file extension "${extname(path)}": ${path} (expected .txt or .jsonl; pre-tokenized shards end in .bin)`);
  }
  checkReadableFile(path);
  return format === "text" ? textDocuments(path) : jsonlDocuments(path);
}

/** The directory of the installed `nlp-corpus` package (found through module resolution). */
export function defaultCorpusDirectory(): string {
  let resolved: string;
  try {
    resolved = fileURLToPath(import.meta.resolve(DEFAULT_CORPUS_PACKAGE));
  } catch (err) {
    throw new Error(`the default corpus needs the npm package ${DEFAULT_CORPUS_PACKAGE} (npm install ${DEFAULT_CORPUS_PACKAGE}): ${(err as Error).message}`);
  }
  // The resolved file is the package's main module; its root is the nearest folder whose
  // package.json names the package.
  for (let dir = dirname(resolved); ; dir = dirname(dir)) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest)) {
      const name = (JSON.parse(readFileSync(manifest, "utf8")) as { name?: unknown }).name;
      if (name === DEFAULT_CORPUS_PACKAGE) return dir;
    }
    if (dirname(dir) === dir) throw new Error(`cannot find the root folder of ${DEFAULT_CORPUS_PACKAGE} above ${resolved}`);
  }
}

/** The build files of the default corpus (`builds/doc-N.json`), in numeric order. */
export function defaultCorpusFiles(): string[] {
  const builds = join(defaultCorpusDirectory(), "builds");
  if (!existsSync(builds)) throw new Error(`${DEFAULT_CORPUS_PACKAGE} has no builds folder: ${builds}`);
  const files = readdirSync(builds)
    .map((name) => ({ name, match: /^doc-(\d+)\.json$/.exec(name) }))
    .filter((f) => f.match !== null)
    .sort((a, b) => Number(a.match![1]) - Number(b.match![1]))
    .map((f) => join(builds, f.name));
  if (files.length === 0) throw new Error(`${DEFAULT_CORPUS_PACKAGE} has no doc-N.json files in ${builds}`);
  return files;
}

/**
 * The default corpus (100,000 English sentences, 8.9 million characters): consecutive sentences of each
 * build file joined with single spaces into documents of at least `documentChars` characters
 * (the last document of a file may be shorter).
 */
export function* defaultCorpusDocuments(documentChars = DEFAULT_CORPUS_DOCUMENT_CHARS): Generator<string> {
  if (!Number.isInteger(documentChars) || documentChars < 1) throw new Error(`documentChars must be a positive integer, got ${documentChars}`);
  for (const file of defaultCorpusFiles()) {
    const sentences = JSON.parse(readFileSync(file, "utf8")) as unknown;
    if (!Array.isArray(sentences)) throw new Error(`${file}: expected a JSON array of sentences`);
    let parts: string[] = [];
    let chars = 0;
    for (const sentence of sentences) {
      if (typeof sentence !== "string") throw new Error(`${file}: expected a JSON array of strings`);
      const s = sentence.trim();
      if (s.length === 0) continue;
      parts.push(s);
      chars += (parts.length > 1 ? 1 : 0) + s.length;
      if (chars >= documentChars) {
        yield parts.join(" ");
        parts = [];
        chars = 0;
      }
    }
    if (parts.length > 0) yield parts.join(" ");
  }
}

/**
 * The documents of several files in order, or of the default corpus when `paths` is empty. Every
 * path is checked (extension, existence) before the first document is produced.
 */
export function corpusDocuments(paths: readonly string[]): Iterable<string> {
  if (paths.length === 0) return defaultCorpusDocuments();
  const readers = paths.map((p) => readDocuments(p));
  return (function* () {
    for (const reader of readers) yield* reader;
  })();
}
