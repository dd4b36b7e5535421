// dsv3 tokenizer train: a byte-level BPE tokenizer.json trained on text or JSONL files (or the
// default corpus), checked by loading it back through @huggingface/tokenizers.

import { Tokenizer } from '../io/tokenizer.js';
import { DEFAULT_SPECIAL_TOKENS, saveTokenizer, trainByteLevelBpe } from '../train/bpe-trainer.js';
import { corpusDocuments, DEFAULT_CORPUS_PACKAGE } from '../train/data/documents.js';
import { numberFlag, stringFlag, UsageError, type Command } from './args.js';

// The trained tokenizer is checked on (and its compression reported for) the first this-many
// characters of the data, kept while the trainer streams the documents.
const SAMPLE_CHARS = 1 << 20;
const PROGRESS_SECONDS = 5;

function millionChars(chars: number): string {
  return `${(chars / 1e6).toFixed(1)} M characters`;
}

export const tokenizerCommand: Command = {
  name: 'tokenizer',
  summary: 'train a byte-level BPE tokenizer (tokenizer.json) on text',
  usage: `dsv3 tokenizer train [--data PATH]... --vocab-size N --out FILE [--min-frequency F]

Trains a byte-level BPE (GPT-2 / DeepSeek style, DeepSeek's special tokens at ids 0-4) and writes
a Hugging Face tokenizer.json that @huggingface/tokenizers and transformers read.

  --data PATH          training text, repeatable: .txt (documents separated by blank lines) or
                       .jsonl (one {"text": ...} object per line); default: the built-in corpus
                       (npm package ${DEFAULT_CORPUS_PACKAGE}, about 9 MB of English sentences)
  --vocab-size N       vocabulary size, special tokens included (at least ${DEFAULT_SPECIAL_TOKENS.length + 256})
  --out FILE           tokenizer.json to write (a path not ending in .json is a directory that
                       receives tokenizer.json)
  --min-frequency F    merge only pairs seen at least F times (default 2)`,
  options: {
    data: { type: 'string', multiple: true },
    'vocab-size': { type: 'string' },
    out: { type: 'string' },
    'min-frequency': { type: 'string' },
  },
  subcommands: ['train'],
  async run(values, positionals) {
    if (positionals[0] !== 'train' || positionals.length > 1) {
      const got = positionals.length === 0 ? 'nothing' : `"${positionals.join(' ')}"`;
      throw new UsageError(`tokenizer: expected "dsv3 tokenizer train ...", got ${got} (see dsv3 tokenizer --help)`);
    }
    const vocabSize = numberFlag(values, 'vocab-size', { min: DEFAULT_SPECIAL_TOKENS.length + 256, integer: true });
    if (vocabSize === undefined) throw new UsageError('missing required flag --vocab-size');
    const out = stringFlag(values, 'out', true);
    const minFrequency = numberFlag(values, 'min-frequency', { fallback: 2, min: 1, integer: true })!;
    const paths = (values.data as string[] | undefined) ?? [];

    const documents = corpusDocuments(paths); // checks every path before training starts
    const source = paths.length === 0 ? `the default corpus (${DEFAULT_CORPUS_PACKAGE})` : paths.length === 1 ? paths[0] : `${paths.length} files`;
    console.log(`training a ${vocabSize}-token byte-level BPE on ${source}`);
    const started = performance.now();
    let documentCount = 0;
    let characters = 0;
    const sample: string[] = [];
    let sampleChars = 0;
    let lastReport = started;
    const counted = (function* () {
      for (const doc of documents) {
        documentCount++;
        characters += doc.length;
        if (sampleChars < SAMPLE_CHARS) {
          sample.push(doc);
          sampleChars += doc.length;
        }
        const now = performance.now();
        if (now - lastReport > PROGRESS_SECONDS * 1000) {
          console.log(`  read ${documentCount} documents, ${millionChars(characters)} (${((now - started) / 1000).toFixed(0)} s)`);
          lastReport = now;
        }
        yield doc;
      }
    })();
    const json = trainByteLevelBpe(counted, { vocabSize, minFrequency });
    const trainedSeconds = (performance.now() - started) / 1000;
    const learned = Object.keys(json.model.vocab).length;
    console.log(
      `read ${documentCount} documents, ${millionChars(characters)}; ${json.model.merges.length} merges, vocabulary ${learned} ` +
        `in ${trainedSeconds.toFixed(1)} s`,
    );
    if (learned < vocabSize) console.log(`  (no pair reached --min-frequency ${minFrequency} beyond ${learned} tokens: the data is too small for ${vocabSize})`);

    // Load it back the way every reader will, and check that it reproduces the sample exactly.
    const tokenizer = new Tokenizer(json);
    const sampleText = sample.join('\n');
    const ids = tokenizer.encode(sampleText, { addSpecialTokens: false });
    if (tokenizer.decode(ids) !== sampleText) throw new Error('the trained tokenizer does not decode its own encoding back to the text (a bug in the trainer)');
    console.log(`sample of ${millionChars(sampleText.length)}: ${ids.length} tokens, ${(sampleText.length / Math.max(1, ids.length)).toFixed(2)} characters per token`);

    const file = saveTokenizer(json, out);
    console.log(`wrote ${file}`);
  },
};
