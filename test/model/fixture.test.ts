// The model against Hugging Face transformers' own outputs for the tiny fixture: logits, every
// hidden state, and greedy continuations with and without the latent cache.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { generate } from '../../src/infer/generate.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadPretrained } from '../../src/model/load.js';
import { tinyModelDir } from '../shared-paths.js';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const reference = SafetensorsFile.open(path.join(tinyModelDir, 'reference.safetensors'));
const inputIds = Int32Array.from(reference.readInt('input_ids'), Number);
const [batch, seq] = reference.info('input_ids').shape;
const backend = new CpuBackend('f32');
const { model, config } = loadPretrained(tinyModelDir, backend);

test('logits and every hidden state match transformers (max abs error ≤ 1e-4)', () => {
  const hidden: import('../../src/tensor/tensor.js').Tensor[] = [];
  const logits = backend.download(model.logits(inputIds, batch, seq, { hiddenStates: hidden }));
  const refNames = reference.names().filter((n) => n.startsWith('hidden_states.')).sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1]));
  // transformers reports the embedding, each layer's output, with the last one replaced by the final norm's.
  assert.equal(refNames.length, config.numHiddenLayers + 1);
  const ours = [...hidden.slice(0, config.numHiddenLayers), hidden[hidden.length - 1]];
  refNames.forEach((name, i) => {
    const err = maxAbsDiff(backend.download(ours[i]), reference.readFloat32(name));
    console.log(`${name}: max abs error ${err.toExponential(2)}`);
    assert.ok(err <= 1e-4, `${name}: ${err}`);
  });
  const err = maxAbsDiff(logits, reference.readFloat32('logits'));
  console.log(`logits: max abs error ${err.toExponential(2)}`);
  assert.ok(err <= 1e-4, `logits: ${err}`);
});

for (const useCache of [true, false]) {
  test(`greedy generation reproduces transformers' tokens ${useCache ? 'with' : 'without'} the latent cache`, () => {
    const greedy = Array.from(reference.readInt('greedy'), Number);
    const prompt = greedy.slice(0, 8);
    const result = generate(model, prompt, { maxNewTokens: greedy.length - 8, useCache, stopTokens: [] });
    assert.deepEqual(result.tokens, greedy.slice(8));
  });
}

test('absorbed MLA over the cache gives the naive logits (≤ 1e-5) on the fixture', async () => {
  const { LatentCache } = await import('../../src/infer/latent-cache.js');
  const naive = backend.download(model.logits(inputIds, batch, seq));
  const cache = new LatentCache(backend, config, batch, seq);
  // prefill half, then the rest token by token: exercises the cache offsets and the causal mask
  const half = seq / 2;
  const rows = (from: number, to: number) => {
    const ids = new Int32Array(batch * (to - from));
    for (let b = 0; b < batch; b++) ids.set(inputIds.subarray(b * seq + from, b * seq + to), b * (to - from));
    return ids;
  };
  const absorbed = new Float32Array(naive.length);
  const V = config.vocabSize;
  const place = (logits: Float32Array | Float64Array, from: number, to: number) => {
    const T = to - from;
    for (let b = 0; b < batch; b++) absorbed.set(logits.subarray(b * T * V, (b + 1) * T * V), (b * seq + from) * V);
  };
  place(backend.download(model.logits(rows(0, half), batch, half, { cache })), 0, half);
  for (let t = half; t < seq; t++) place(backend.download(model.logits(rows(t, t + 1), batch, 1, { cache })), t, t + 1);
  const err = maxAbsDiff(absorbed, naive);
  console.log(`absorbed vs naive: max abs error ${err.toExponential(2)}`);
  assert.ok(err <= 1e-5, `${err}`);
});
