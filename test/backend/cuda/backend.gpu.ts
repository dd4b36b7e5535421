// The CUDA backend against the CPU backend on the GPU, op by op, in FP32 and BF16 mode, with
// GPU-sized problems (backend-cases.ts; the same suite runs on the CPU emulator in
// emulated-backend.test.ts). Skipped with the reason where there is no GPU.

import { after } from 'node:test';
import { CudaContext } from '../../../src/backend/cuda/context.js';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import { registerBackendCases, type Mode } from './backend-cases.js';
import { openGpu } from './gpu-helpers.js';

const gpu = openGpu();
const backends = new Map<Mode, CudaBackend>();
after(() => {
  for (const b of backends.values()) b.dispose();
  if (backends.size === 0) gpu.ctx?.dispose();
});

registerBackendCases({
  label: 'cuda',
  skip: gpu.skip,
  large: true,
  backend: (mode) => {
    let b = backends.get(mode);
    if (!b) {
      // One context per backend: dispose() releases its own.
      const ctx = backends.size === 0 ? gpu.ctx! : CudaContext.create(0);
      b = new CudaBackend(ctx, { dtype: mode });
      backends.set(mode, b);
    }
    return b;
  },
});
