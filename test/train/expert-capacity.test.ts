// The captured step's expert capacities (ExpertCapacities): what they start at, how they grow after
// a step that dropped slots, and when they shrink, on loads drawn at random.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CAPACITY_ROWS, ExpertCapacities, SHRINK_BELOW, SHRINK_WINDOW } from '../../src/train/expert-capacity.js';
import { seededRandom } from '../helpers/random.js';

const rng = seededRandom();
/** Uniform in [lo, hi). */
const between = (lo: number, hi: number) => lo + (hi - lo) * rng.uniform();
const LAYERS = 6;
const WORST = 16384;

/** Loads of a few hundred slots per layer. */
function randomLoads(): number[] {
  return Array.from({ length: LAYERS }, () => rng.int(200, 2000));
}

/** Whether `c` is a capacity for a largest load of `count` with `headroom`: the smallest multiple of CAPACITY_ROWS at or above count · headroom. */
function fits(c: number, count: number, headroom: number): boolean {
  return c % CAPACITY_ROWS === 0 && c >= count * headroom && c - CAPACITY_ROWS < count * headroom;
}

test('capacities start at the measured largest loads with headroom, in whole rows, within the worst case', () => {
  const loads = randomLoads();
  const caps = new ExpertCapacities(WORST, 1.25, loads);
  caps.rows.forEach((c, i) => assert.ok(fits(c, loads[i]!, 1.25), `seed ${rng.seed}: layer ${i}: ${c} for a load of ${loads[i]}`));
  assert.deepEqual(new ExpertCapacities(40, 1.25, [0, 39]).rows, [CAPACITY_ROWS, 40], 'at least one block of rows, at most the worst case');
});

test('after a step that dropped slots, the layers that dropped some double (or more), those within their headroom grow to it', () => {
  const loads = randomLoads();
  const caps = new ExpertCapacities(WORST, 1.25, loads);
  const before = [...caps.rows];
  // layers 0 and 1 dropped slots, 0 a few, 1 more than its capacity again; layer 2 did not, but came
  // within its headroom; the others stayed below
  const largest = before.map((c) => Math.floor(c * between(0.3, 0.7)));
  largest[0] = before[0]! + rng.int(1, 100);
  largest[1] = 2 * before[1]! + rng.int(1, 100);
  largest[2] = before[2]! - 1;
  assert.equal(caps.update(largest, true), true);
  assert.equal(caps.rows[0], 2 * before[0]!, `seed ${rng.seed}: a layer that dropped a few doubles`);
  assert.ok(fits(caps.rows[1]!, largest[1]!, 1.25), `seed ${rng.seed}: a layer that needed more than double: ${caps.rows[1]} for ${largest[1]}`);
  assert.ok(fits(caps.rows[2]!, largest[2]!, 1.25), `seed ${rng.seed}: the layer within its headroom: ${caps.rows[2]} for ${largest[2]}`);
  assert.deepEqual(caps.rows.slice(3), before.slice(3), 'the layers with room keep their capacity');
  // never past the worst case
  const small = new ExpertCapacities(1000, 1.25, [700]);
  small.update([990], true);
  assert.deepEqual(small.rows, [1000]);
});

test('a headroom below 1 still grows a layer to at least the load that dropped slots', () => {
  const caps = new ExpertCapacities(WORST, 0.25, [1000]);
  assert.equal(caps.rows[0], 256);
  caps.update([1003], true);
  assert.equal(caps.rows[0], 1008);
  caps.update([1009], true);
  assert.equal(caps.rows[0], 2016);
});

test(`capacities shrink only after ${SHRINK_WINDOW} steps without a drop, to the window's largest loads`, () => {
  const caps = new ExpertCapacities(WORST, 1.25, randomLoads());
  const before = [...caps.rows];
  // layers 0 and 1 now need far less; layer 1 had one busy step in the window; layer 2 needs a little less
  const quiet = () => before.map((c, i) => (i < 2 ? Math.floor((c / 1.25) * between(0.2, 0.4)) : Math.floor(c / 1.25)));
  const spike = Math.floor(before[1]! / 1.25);
  const seen = [0, 0];
  for (let step = 1; step <= SHRINK_WINDOW; step++) {
    const largest = quiet();
    if (step === 5) largest[1] = spike;
    seen[0] = Math.max(seen[0]!, largest[0]!);
    seen[1] = Math.max(seen[1]!, largest[1]!);
    const changed = caps.update(largest, false);
    assert.equal(changed, step === SHRINK_WINDOW, `step ${step}`);
    if (step < SHRINK_WINDOW) assert.deepEqual(caps.rows, before, `seed ${rng.seed}: step ${step}: no change inside the window`);
  }
  assert.ok(fits(caps.rows[0]!, seen[0]!, 1.25), `seed ${rng.seed}: layer 0 shrank to its window's largest load: ${caps.rows[0]} for ${seen[0]}`);
  assert.ok(caps.rows[0]! <= SHRINK_BELOW * before[0]!);
  assert.equal(caps.rows[1], before[1], 'layer 1: its busy step keeps it');
  assert.deepEqual(caps.rows.slice(2), before.slice(2), 'a layer that would shrink by little keeps its capacity');
});

test('a drop restarts the shrink window', () => {
  const caps = new ExpertCapacities(WORST, 1.25, [1000, 1000]);
  const small = () => [rng.int(10, 100), rng.int(10, 100)];
  for (let step = 1; step < SHRINK_WINDOW; step++) caps.update(small(), false);
  caps.update([1300, 10], true); // layer 0 grows; the window starts again
  const grown = [...caps.rows];
  for (let step = 1; step < SHRINK_WINDOW; step++) assert.equal(caps.update(small(), false), false, `step ${step} after the drop`);
  assert.deepEqual(caps.rows, grown);
  assert.equal(caps.update(small(), false), true, 'a full window after the drop');
  assert.ok(caps.rows.every((c) => c <= 128), `seed ${rng.seed}: ${caps.rows}`);
});

test('bad arguments are refused', () => {
  assert.throws(() => new ExpertCapacities(WORST, 0, randomLoads()), /headroom 0/);
  assert.throws(() => new ExpertCapacities(WORST, 1.25, randomLoads()).update([1], false), /1 loads for 6 MoE layers/);
});
