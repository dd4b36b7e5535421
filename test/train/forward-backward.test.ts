// forwardBackward's input checks: token ids are checked on the host before anything is uploaded
// (on the GPU a target outside the vocabulary would only turn the summed loss into NaN).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { forwardBackward } from '../../src/train/forward-backward.js';
import { microTrainer } from '../helpers/micro-trainer.js';
import { seededRandom } from '../helpers/random.js';

test('a token id outside the vocabulary is refused by name', () => {
  const b = new CpuBackend('f32');
  const { model } = microTrainer(b, 1, 1);
  const rng = seededRandom();
  const seq = 8, window = seq + 1 + model.mtp.length;
  const V = model.config.vocabSize;
  const opts = { mtpWeight: 0.3, balanceAlpha: 1e-4, recompute: { norms: false, upProjections: false } };
  const tokens = Int32Array.from({ length: 2 * window }, () => rng.int(0, V - 1));
  assert.ok(Number.isFinite(forwardBackward(model, tokens, 2, seq, opts).loss), 'valid ids train');
  for (const bad of [V, -1]) {
    const at = rng.int(0, tokens.length - 1);
    const wrong = Int32Array.from(tokens);
    wrong[at] = bad;
    assert.throws(() => forwardBackward(model, wrong, 2, seq, opts), new RegExp(`training data: token id ${bad} outside the model's vocabulary of ${V}`));
  }
});
