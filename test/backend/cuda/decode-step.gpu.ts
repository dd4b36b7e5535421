// Decoding with a captured step on the GPU, BF16 weights as served (storageDType 'bf16'): a
// DecodeStep — eager once, captured into a CUDA graph, then replayed — gives the greedy tokens
// of eager decoding through model.logits and logits close to them, at batch 1 and 8 (the tensor-core
// MLA decode kernel with positions read on the device, the MoE's experts straight from the routing);
// and moeExpertsDirect at DeepSeek-V2-Lite's expert widths matches the CPU and the permuted path.
// Prints eager and replayed milliseconds per step.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../../../src/backend/cpu/cpu-backend.js';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import { DecodeStep } from '../../../src/infer/decode-step.js';
import { LatentCache } from '../../../src/infer/latent-cache.js';
import { argmax } from '../../../src/infer/sampling.js';
import { DeepseekV3 } from '../../../src/model/model.js';
import { ParameterSet } from '../../../src/model/parameters.js';
import { RandomParameters } from '../../../src/model/random-parameters.js';
import { presetConfig } from '../../../src/train/presets.js';
import { randomExpertChoices } from '../../helpers/random.js';
import { assertClose, openGpu, randomNormal, roundBf16, seededRandom } from './gpu-helpers.js';

const gpu = openGpu();
const backend = gpu.ctx ? new CudaBackend(gpu.ctx, { dtype: 'bf16', storageDType: 'bf16' }) : undefined;
after(() => backend?.dispose());

test('DecodeStep (CUDA graph replay) decodes the greedy tokens of eager model.logits, BF16, batch 1 and 8', { skip: gpu.skip }, () => {
  const b = backend!;
  const rng = seededRandom();
  const V = 512;
  const config = presetConfig('tiny', V, { bos: 0, eos: 1 });
  // a large init makes the random model decisive: greedy choices far from ties
  const model = new DeepseekV3(b, config, new ParameterSet(new RandomParameters(b, { seed: rng.seed, std: 0.3, vectors: 'random' })));
  for (const B of [1, 8]) {
    const prompt = 20, steps = 40;
    const eagerCache = new LatentCache(b, config, B, prompt + steps), stepCache = new LatentCache(b, config, B, prompt + steps);
    const ids = Int32Array.from({ length: B * prompt }, () => rng.int(0, V - 1));
    const greedy = (logits: Float32Array | Float64Array) => Int32Array.from({ length: B }, (_, r) => argmax(logits.subarray(r * V, (r + 1) * V)));
    let next = greedy(b.download(model.logits(ids, B, prompt, { cache: eagerCache, lastOnly: true })));
    b.free(model.logits(ids, B, prompt, { cache: stepCache, lastOnly: true }));
    const step = new DecodeStep(model, stepCache);
    assert.ok(step.capturable);
    let eagerMs = 0, replayMs = 0;
    for (let t = 0; t < steps; t++) {
      b.synchronize();
      const t0 = performance.now();
      const eagerLogits = model.logits(next, B, 1, { cache: eagerCache, lastOnly: true });
      b.synchronize();
      const t1 = performance.now();
      const replayedLogits = step.run(next, stepCache.length);
      b.synchronize();
      const t2 = performance.now();
      // the first two runs are the eager warm-up and the capture
      if (t >= 2) {
        eagerMs += t1 - t0;
        replayMs += t2 - t1;
      }
      const eager = b.download(eagerLogits), replayed = b.download(replayedLogits);
      b.free(eagerLogits);
      assertClose(`batch ${B} step ${t}: replayed logits`, replayed, eager, 1e-2, rng.seed);
      assert.deepEqual(greedy(replayed), greedy(eager), `batch ${B} step ${t}: greedy tokens (seed ${rng.seed})`);
      next = greedy(eager);
    }
    console.log(`# batch ${B}: eager ${(eagerMs / (steps - 2)).toFixed(3)} ms/step, replayed ${(replayMs / (steps - 2)).toFixed(3)} ms/step`);
    step.free();
    eagerCache.free();
    stepCache.free();
  }
});

test('moeExpertsDirect with BF16 weights at V2-Lite expert widths: the CPU and the permuted path', { skip: gpu.skip }, () => {
  const b = backend!;
  const cpu = new CpuBackend('f32');
  const rng = seededRandom();
  const E = 16, K = 6, d = 2048, I = 1408;
  const pair = (shape: number[], scale: number) => {
    const data = roundBf16(randomNormal(rng, shape.reduce((p, s) => p * s, 1), scale));
    return { g: b.upload(data, shape), c: cpu.upload(data, shape) };
  };
  const gate = Array.from({ length: E }, () => pair([I, d], 0.03)), up = Array.from({ length: E }, () => pair([I, d], 0.03));
  const down = Array.from({ length: E }, () => pair([d, I], 0.03));
  const g = (ws: typeof gate) => ws.map((w) => w.g), c = (ws: typeof gate) => ws.map((w) => w.c);
  for (const N of [1, 32]) {
    const idx = randomExpertChoices(rng, N, K, E);
    const indices = { g: b.uploadInt(idx, [N, K]), c: cpu.uploadInt(idx, [N, K]) };
    const w = Float32Array.from({ length: N * K }, () => rng.uniform());
    const weights = { g: b.upload(w, [N, K], 'f32'), c: cpu.upload(w, [N, K]) };
    const x = pair([N, d], 1);
    const direct = b.moeExpertsDirect(x.g, indices.g, weights.g, g(gate), g(up), g(down));
    const want = cpu.download(cpu.moeExpertsDirect(x.c, indices.c, weights.c, c(gate), c(up), c(down)));
    // BF16 roundings of gate, up, their SwiGLU, each slot's output and the sum (see backend-cases.ts),
    // in a different order on each path: both are held to the same distance from the FP32 CPU
    assertClose(`moeExpertsDirect N=${N} K=${K} E=${E} d=${d} I=${I} against the CPU`, b.download(direct), want, 3e-2, rng.seed);
    const perm = b.moePermute(x.g, indices.g, E, { blockRows: 8, maxRatio: Infinity });
    const h = b.swiglu(b.groupedLinear(perm.rows, g(gate)), b.groupedLinear(perm.rows, g(up)));
    const permuted = b.moeUnpermute(b.groupedLinear(h, g(down)), perm.sourceSlot, weights.g);
    assertClose(`the permuted path N=${N} against the CPU`, b.download(permuted), want, 3e-2, rng.seed);
    for (const t of [direct, perm.rows, perm.sourceSlot, h, permuted, x.g, indices.g, weights.g]) b.free(t);
  }
  for (const w of [...gate, ...up, ...down]) b.free(w.g);
});
