// The captured training step (Trainer with captureGraph) gives the losses, gradient norms and
// weights of eager steps — on the CPU, where a "graph" replays the recorded body — including
// steps whose expert loads overflow the captured capacities and are redone eagerly.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { TrainerOptions } from '../../src/train/trainer.js';
import { microTrainer } from '../helpers/micro-trainer.js';

/** Per-step (loss, grad norm) and the final weights of `steps` steps. */
function run(steps: number, overrides: Partial<TrainerOptions>) {
  const trainer = microTrainer(new CpuBackend('f64'), 5, steps, { gradAccum: 2, ...overrides });
  const metrics = Array.from({ length: steps }, () => trainer.trainStep());
  const weights = trainer.model.params.all().map((p) => trainer.model.backend.download(p.value));
  return { metrics, weights, trainer };
}

function assertSameRun(got: ReturnType<typeof run>, want: ReturnType<typeof run>, what: string): void {
  got.metrics.forEach((m, i) => {
    const w = want.metrics[i]!;
    assert.ok(Math.abs(m.loss - w.loss) <= 1e-12 * w.loss, `${what}: step ${i + 1} loss ${m.loss} vs ${w.loss}`);
    assert.ok(Math.abs(m.grad_norm - w.grad_norm) <= 1e-10 * w.grad_norm, `${what}: step ${i + 1} grad norm ${m.grad_norm} vs ${w.grad_norm}`);
    assert.deepEqual(m.expert_load, w.expert_load, `${what}: step ${i + 1} expert loads`);
  });
  let worst = 0;
  got.weights.forEach((g, t) => g.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - want.weights[t]![i]!)))));
  assert.ok(worst <= 1e-12, `${what}: weights differ by up to ${worst}`);
}

test('captured training steps (2 micro-batches each) equal eager ones', () => {
  const steps = 4;
  const eager = run(steps, {});
  const captured = run(steps, { captureGraph: true });
  assertSameRun(captured, eager, 'captured');
});

test('a step whose expert loads overflow the captured capacities is redone eagerly, with the eager result', () => {
  const steps = 4;
  const eager = run(steps, {});
  // capacities below the loads first measured: the first captured micro-batch must overflow
  const captured = run(steps, { captureGraph: true, captureHeadroom: 0.25 });
  assertSameRun(captured, eager, 'overflowing');
  assert.ok(captured.trainer.capturedOverflows > 0, 'no step overflowed its capacities');
});
