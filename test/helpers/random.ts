// Seeded random draws for tests: the library's generator (src/util/random.ts), seeded at random
// unless a seed is given, with the seed kept so that a failure message can name it and the run
// can be replayed with seededRandom(thatSeed).

import { Random } from '../../src/util/random.js';

export interface TestRandom {
  readonly seed: number;
  /** A uniformly distributed 32-bit unsigned integer. */
  uint32(): number;
  /** Uniform in [0, 1). */
  uniform(): number;
  /** Standard normal. */
  normal(): number;
  /** A uniform integer in [lo, hi], both ends included. */
  int(lo: number, hi: number): number;
}

export function seededRandom(seed = (Math.random() * 2 ** 32) >>> 0): TestRandom {
  const rng = new Random(seed);
  return {
    seed,
    uint32: () => rng.nextUint32(),
    uniform: () => rng.next(),
    normal: () => rng.normal(),
    int: (lo, hi) => lo + rng.int(hi - lo + 1),
  };
}

/** Row n of the result [N, K]: K distinct experts out of E for token n, as a router chooses them. */
export function randomExpertChoices(rng: TestRandom, N: number, K: number, E: number): Int32Array {
  const idx = new Int32Array(N * K);
  for (let n = 0; n < N; n++) {
    const experts = Array.from({ length: E }, (_, e) => e);
    for (let j = 0; j < K; j++) {
      const pick = rng.int(j, E - 1);
      [experts[j], experts[pick]] = [experts[pick]!, experts[j]!];
    }
    idx.set(experts.slice(0, K), n * K);
  }
  return idx;
}
