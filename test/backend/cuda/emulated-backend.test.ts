// The CUDA backend's op-level suite (backend-cases.ts) on the CPU emulator of the kernels
// (emulator/): the real CudaBackend, launchers and kernel sources, each CUDA thread a fiber and
// cuBLASLt replaced by a reference GEMM. Runs without a GPU; skipped where g++ or the CUDA
// headers are missing. Every kernel of the table must have run once by the end, so a new kernel
// comes with a case here (kernel files with inline PTX are not emulated).

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import { registerBackendCases, type Mode } from './backend-cases.js';
import { emulatedDevice, emulatedKernels } from './emulator/emulator.js';

const device = await emulatedDevice();
const skip = typeof device === 'string' ? `no CUDA emulator: ${device}` : false;
if (skip) console.log(`# skipping: ${skip}`);
const backends = new Map<Mode, CudaBackend>();
after(() => {
  for (const b of backends.values()) b.dispose();
});

registerBackendCases({
  label: 'emulated',
  skip,
  large: false,
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

test('every kernel of the table ran in the suite above', { skip }, () => {
  if (typeof device === 'string') return;
  const launched = new Set(device.launches);
  assert.deepEqual(emulatedKernels().filter((k) => !launched.has(k)), []);
});
