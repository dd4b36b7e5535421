// Whole-model checks on the GPU (model-cases.ts): the tiny fixture's logits and hidden states
// against transformers in FP32 and BF16 mode, greedy decoding through the latent cache, and ten
// training steps of a micro model whose losses track the CPU backend's.

import { after } from 'node:test';
import { CudaContext } from '../../../src/backend/cuda/context.js';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import type { Mode } from './backend-cases.js';
import { openGpu } from './gpu-helpers.js';
import { registerModelCases } from './model-cases.js';

const gpu = openGpu();
const backends = new Map<Mode, CudaBackend>();
after(() => {
  for (const b of backends.values()) b.dispose();
  if (backends.size === 0) gpu.ctx?.dispose();
});

registerModelCases({
  label: 'cuda',
  skip: gpu.skip,
  trainSteps: { f32: 10, bf16: 10 },
  backend: (mode) => {
    let b = backends.get(mode);
    if (!b) {
      const ctx = backends.size === 0 ? gpu.ctx! : CudaContext.create(0);
      b = new CudaBackend(ctx, { dtype: mode });
      backends.set(mode, b);
    }
    return b;
  },
});
