import { test } from "node:test";
import assert from "node:assert/strict";
import { Random } from "../../../src/util/random.js";
import { BatchSampler, type BatchSamplerState } from "../../../src/train/data/batches.js";
import { MemoryTokenStore } from "../../../src/train/data/token-store.js";

const seed = Math.floor(Math.random() * 2 ** 32);
const random = new Random(seed);
const note = `(random seed ${seed})`;

/** Random tokens from a large vocabulary, so every window's content is distinct. */
function randomStore(length: number): MemoryTokenStore {
  const tokens = new Int32Array(length);
  for (let i = 0; i < length; i++) tokens[i] = random.int(1 << 30);
  return new MemoryTokenStore(tokens);
}

function rows(batch: Int32Array, windowLength: number): Int32Array[] {
  const out: Int32Array[] = [];
  for (let r = 0; r * windowLength < batch.length; r++) out.push(batch.subarray(r * windowLength, (r + 1) * windowLength));
  return out;
}

// The trainer's shape: seqLen inputs + 1 next-token target + mtpDepth further targets.
const seqLen = 16 + random.int(16);
const mtpDepth = random.int(3);
const windowLength = seqLen + 1 + mtpDepth;

test("one epoch visits every training window once; their inputs tile the training split", () => {
  const store = randomStore(50 * windowLength + random.int(10 * windowLength));
  const sampler = new BatchSampler(store, { windowLength, stride: seqLen, seed: random.int(1000) });
  const n = sampler.trainWindows;
  const startOf = new Map<string, number>(); // window content -> its stream position
  for (let i = 0; i < n; i++) startOf.set(store.read(i * seqLen, windowLength).join(","), i * seqLen);

  const seen = new Set<number>();
  const batchSize = 3 + random.int(5);
  let taken = 0;
  while (taken < n) {
    const batch = sampler.nextBatch(Math.min(batchSize, n - taken));
    for (const row of rows(batch, windowLength)) {
      const start = startOf.get(row.join(","));
      assert.ok(start !== undefined, `a batch row is not a training window ${note}`);
      assert.ok(!seen.has(start), `window at ${start} twice in one epoch ${note}`);
      seen.add(start);
      taken++;
    }
  }
  assert.equal(seen.size, n);
  assert.equal(sampler.epoch, 1);
  assert.equal(sampler.cursor, 0);
  // inputs (the first seqLen tokens of each window) cover [0, n * seqLen) with no gap or overlap
  const starts = [...seen].sort((a, b) => a - b);
  starts.forEach((s, i) => assert.equal(s, i * seqLen));
  // the last training window ends at or before the held-out region, with less than a stride unused
  const trainEnd = (n - 1) * seqLen + windowLength;
  assert.ok(trainEnd <= sampler.evalStart && sampler.evalStart - trainEnd < seqLen, `${trainEnd} vs ${sampler.evalStart}`);
  // the next epoch is another order of the same windows
  const nextEpoch = rows(sampler.nextBatch(n), windowLength).map((r) => startOf.get(r.join(","))!);
  assert.deepEqual([...nextEpoch].sort((a, b) => a - b), starts);
  assert.notDeepEqual(nextEpoch, starts.slice(0)); // shuffled, not stream order (n! orders: a tie has negligible odds)
});

test("the held-out split: the last windows, disjoint from training, the same for every seed", () => {
  const length = 200 * windowLength + random.int(windowLength * 20);
  const store = randomStore(length);
  const a = new BatchSampler(store, { windowLength, stride: seqLen, seed: random.int(1 << 30) });
  const b = new BatchSampler(store, { windowLength, stride: seqLen, seed: random.int(1 << 30) + (1 << 30) });
  const total = Math.floor((length - windowLength) / seqLen) + 1;
  assert.equal(a.evalWindows, Math.max(1, Math.floor(total * 0.05)));
  assert.equal(a.evalWindowStart(a.evalWindows - 1) + windowLength, length, "the last held-out window ends the stream");
  for (const key of ["evalStart", "evalWindows", "trainWindows"] as const) assert.equal(a[key], b[key]);

  const batchSize = 4;
  const evalA = [...a.evalBatches(batchSize)];
  const evalB = [...b.evalBatches(batchSize)];
  assert.deepEqual(evalA, evalB);
  assert.equal(evalA.length, Math.ceil(a.evalWindows / batchSize));
  const evalRows = evalA.flatMap((batch) => rows(batch, windowLength));
  assert.equal(evalRows.length, a.evalWindows);
  evalRows.forEach((row, j) => assert.deepEqual(row, store.read(a.evalStart + j * seqLen, windowLength), `held-out window ${j} in order`));
  assert.equal([...a.evalBatches(batchSize, 2)].length, Math.min(2, evalA.length));

  // no training batch touches a held-out token (all tokens are distinct with overwhelming odds)
  const heldOut = new Set(store.read(a.evalStart, length - a.evalStart));
  for (let i = 0; i < 3 * a.trainWindows; i += 8) {
    for (const t of a.nextBatch(8)) assert.ok(!heldOut.has(t), `training batch holds a held-out token ${note}`);
  }
  // evaluating does not move the training position
  const before = a.state;
  [...a.evalBatches(2)];
  assert.deepEqual(a.state, before);

  // a larger fraction holds out more, still at least one window
  const c = new BatchSampler(store, { windowLength, stride: seqLen, seed: 1, evalFraction: 0.25 });
  assert.equal(c.evalWindows, Math.floor(total * 0.25));
  const tiny = new BatchSampler(randomStore(3 * windowLength), { windowLength, seed: 1, evalFraction: 0.01 });
  assert.equal(tiny.evalWindows, 1);
  assert.equal(tiny.trainWindows, 2);
});

test("the same seed gives the same batches, a different seed different ones, over several epochs", () => {
  const store = randomStore(40 * windowLength);
  const s = random.int(1 << 30);
  const options = { windowLength, stride: seqLen, seed: s };
  const a = new BatchSampler(store, options);
  const b = new BatchSampler(store, options);
  const c = new BatchSampler(store, { ...options, seed: s + 1 });
  let differ = 0;
  const batchSize = 5;
  const batches = Math.ceil((3 * a.trainWindows) / batchSize);
  for (let i = 0; i < batches; i++) {
    const ba = a.nextBatch(batchSize);
    const bc = c.nextBatch(batchSize);
    assert.deepEqual(ba, b.nextBatch(batchSize), `batch ${i} ${note}`);
    if (!ba.every((v, k) => v === bc[k])) differ++;
  }
  assert.ok(a.epoch >= 2);
  assert.ok(differ > batches / 2, `${differ} of ${batches} batches differ between seeds ${note}`);
  // compare whole epochs between the seeds
  assert.notDeepEqual(a.epochOrder(0), c.epochOrder(0), note);
  assert.notDeepEqual(a.epochOrder(0), a.epochOrder(1), note);
});

test("state and restore: a resumed sampler continues with exactly the same batches", () => {
  const store = randomStore(30 * windowLength + random.int(windowLength));
  const options = { windowLength, stride: seqLen, seed: random.int(1 << 30) };
  const batchSize = 3;
  for (const skip of [0, 1 + random.int(7), 13 + random.int(20)]) {
    const original = new BatchSampler(store, options);
    for (let i = 0; i < skip; i++) original.nextBatch(batchSize);
    const saved = JSON.parse(JSON.stringify(original.state)) as BatchSamplerState;
    assert.deepEqual(Object.keys(saved).sort(), ["cursor", "epoch", "seed", "windows"]);
    const resumed = new BatchSampler(store, { ...options, seed: options.seed + 12345 }); // the seed comes with the state
    resumed.restore(saved);
    for (let i = 0; i < 20; i++) assert.deepEqual(resumed.nextBatch(batchSize), original.nextBatch(batchSize), `batch ${i} after ${skip} ${note}`);
    assert.ok(original.epoch >= 1 || skip === 0);
    assert.deepEqual(resumed.state, original.state);
  }
  // a state without the window check is accepted; one from other data is refused
  const sampler = new BatchSampler(store, options);
  sampler.restore({ epoch: 2, cursor: 1, seed: 7 });
  assert.deepEqual(sampler.state, { epoch: 2, cursor: 1, seed: 7, windows: sampler.trainWindows });
  assert.throws(() => sampler.restore({ epoch: 0, cursor: 0, seed: 1, windows: sampler.trainWindows + 1 }), /training windows/);
  assert.throws(() => sampler.restore({ epoch: 0, cursor: sampler.trainWindows, seed: 1 }), /state\.cursor/);
  assert.throws(() => sampler.restore({ epoch: -1, cursor: 0, seed: 1 }), /state\.epoch/);
  assert.throws(() => sampler.restore({ epoch: 0.5, cursor: 0, seed: 1 }), /state\.epoch/);
});

test("a corpus too short for two windows is a clear error with the token counts", () => {
  const w = 64 + random.int(64);
  const length = w + random.int(w); // fewer than 2w
  assert.throws(
    () => new BatchSampler(randomStore(length), { windowLength: w, seed: 0 }),
    (err: Error) => err.message.includes(`${length} tokens`) && err.message.includes(`${2 * w} tokens are needed`),
  );
  // exactly two windows is enough
  const ok = new BatchSampler(randomStore(2 * w), { windowLength: w, seed: 0 });
  assert.equal(ok.trainWindows, 1);
  assert.equal(ok.evalWindows, 1);
  assert.equal(ok.nextBatch(2).length, 2 * w);
  // a fraction that leaves nothing to train on
  assert.throws(() => new BatchSampler(randomStore(4 * w), { windowLength: w, stride: Math.floor(w / 2), seed: 0, evalFraction: 0.9 }), /leaves none to train on/);
  assert.throws(() => new BatchSampler(randomStore(4 * w), { windowLength: w, seed: 0, evalFraction: 0 }), /evalFraction/);
  assert.throws(() => new BatchSampler(randomStore(4 * w), { windowLength: w, stride: w + 1, seed: 0 }), /stride/);
  assert.throws(() => ok.nextBatch(0), /batchSize/);
});
