// The whole-model checks (model-cases.ts) on the CPU emulator of the kernels: the fixture forward
// against transformers and a few training steps against the CPU backend, in FP32 and BF16.

import { after } from 'node:test';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import type { Mode } from './backend-cases.js';
import { emulatedDevice } from './emulator/emulator.js';
import { registerModelCases } from './model-cases.js';

const device = await emulatedDevice();
const skip = typeof device === 'string' ? `no CUDA emulator: ${device}` : false;
if (skip) console.log(`# skipping: ${skip}`);
const backends = new Map<Mode, CudaBackend>();
after(() => {
  for (const b of backends.values()) b.dispose();
});

registerModelCases({
  label: 'emulated',
  skip,
  trainSteps: { f32: 3, bf16: 3 },
  backend: (mode) => {
    let b = backends.get(mode);
    if (!b) {
      if (typeof device === 'string') throw new Error(device);
      b = new CudaBackend(device.context(), { dtype: mode, matmul: device.matmul(), flashAttention: false });
      backends.set(mode, b);
    }
    return b;
  },
});
