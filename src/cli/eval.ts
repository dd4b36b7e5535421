// dsv3 eval: held-out loss and perplexity of a model on text or token shards.

import { checkTokenIds, chunkedCrossEntropy, shifted } from '../train/forward-backward.js';
import { openTokenStore } from '../train/data/token-store.js';
import { loadModel } from '../infer/language-model.js';
import { deviceFlag, deviceOption, numberFlag, stringFlag, UsageError, type Command } from './args.js';

export const evalCommand: Command = {
  name: 'eval',
  summary: 'loss and perplexity of a model on data',
  usage: `dsv3 eval --model DIR --data PATH [options]

Cuts the data into consecutive sequences and prints the model's mean next-token loss and perplexity.

  --model DIR            Hugging Face model directory (with tokenizer.json unless the data are token shards)
  --data PATH            .txt, .jsonl or token shards (.bin / .u16.bin / .u32.bin); repeatable
  --seq-len T            tokens per sequence (default 128)
  --batch-size B         sequences per forward (default 8)
  --max-batches N        stop after N batches (default: all the data)
  --device cpu|cuda|auto where to run (default auto)`,
  options: {
    model: { type: 'string' }, data: { type: 'string', multiple: true }, 'seq-len': { type: 'string' },
    'batch-size': { type: 'string' }, 'max-batches': { type: 'string' }, ...deviceOption,
  },
  async run(values) {
    const dir = stringFlag(values, 'model', true);
    const data = (values.data as string[] | undefined) ?? [];
    if (data.length === 0) throw new UsageError('missing required flag --data');
    const seq = numberFlag(values, 'seq-len', { fallback: 128, min: 1, integer: true })!;
    const batch = numberFlag(values, 'batch-size', { fallback: 8, min: 1, integer: true })!;
    const maxBatches = numberFlag(values, 'max-batches', { min: 1, integer: true }) ?? Infinity;
    const lm = await loadModel(dir, { device: deviceFlag(values) });
    const model = lm.model;
    if (seq > model.config.maxPositionEmbeddings) throw new UsageError(`--seq-len ${seq} exceeds the model's limit of ${model.config.maxPositionEmbeddings} positions`);
    const store = openTokenStore(data, lm.tokenizer);
    const windows = Math.floor((store.length - 1) / seq);
    if (windows < 1) throw new Error(`the data hold ${store.length} tokens: too few for one sequence of ${seq} tokens and its target`);
    const b = model.backend;
    const sums = b.zeros([2], 'f32');
    let batches = 0;
    for (let w = 0; w < windows && batches < maxBatches; w += batch, batches++) {
      const rows = Math.min(batch, windows - w);
      const tokens = new Int32Array(rows * (seq + 1));
      for (let r = 0; r < rows; r++) tokens.set(store.read((w + r) * seq, seq + 1), r * (seq + 1));
      checkTokenIds(tokens, model.config.vocabSize, 'evaluation data');
      const h = model.hidden(shifted(tokens, rows, seq + 1, seq, 0), rows, seq);
      const targets = b.uploadInt(shifted(tokens, rows, seq + 1, seq, 1), [rows * seq]);
      chunkedCrossEntropy(b, h, model.lmHead, targets, 1, 1024, false, sums);
      b.free(h);
      b.free(targets);
    }
    const [lossSum, count] = b.download(sums);
    b.free(sums);
    const loss = lossSum / count;
    console.log(`loss ${loss.toFixed(4)}  perplexity ${Math.exp(loss).toFixed(2)}  (${count} tokens in ${batches} batches of up to ${batch}×${seq})`);
  },
};
