// The library's public entry: loadModel → logits([[…]]) and generate(…), as the README shows.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { loadModel } from '../src/index.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { tinyModelDir } from './shared-paths.js';

test('loadModel(dir).logits matches the reference; generate streams the greedy tokens', async () => {
  const model = await loadModel(tinyModelDir, { device: 'cpu' });
  const ref = SafetensorsFile.open(path.join(tinyModelDir, 'reference.safetensors'));
  const ids = ref.readInt('input_ids');
  const [batch, seq] = ref.info('input_ids').shape;
  const rows = Array.from({ length: batch }, (_, b) => ids.slice(b * seq, (b + 1) * seq));
  const { data, shape } = model.logits(rows);
  assert.deepEqual(shape, [batch, seq, model.config.vocabSize]);
  const want = ref.readFloat32('logits');
  assert.ok(data.every((x, i) => Math.abs(x - want[i]) <= 1e-4));
  const greedy = ref.readInt('greedy');
  const streamed: number[] = [];
  const out = model.generate(greedy.slice(0, 8), { maxNewTokens: greedy.length - 8, stopTokens: [], onToken: (t) => streamed.push(t) });
  assert.deepEqual(out.tokens, greedy.slice(8));
  assert.deepEqual(streamed, out.tokens);
  assert.throws(() => model.logits([[1, 2], [3]]), /same length/);
  assert.throws(() => model.generate('text'), /no tokenizer\.json/);
  ref.close();
});
