// The CUDA backend's op-level suite (backend-cases.ts) on the CPU emulator of the kernels
// (emulator/): the real CudaBackend, launchers and kernel sources, each CUDA thread a fiber and
// cuBLASLt replaced by a reference GEMM. Runs without a GPU; skipped where g++ or the CUDA
// headers are missing. Every kernel of the table must have run once by the end, so a new kernel
// comes with a case here (kernel files with inline PTX are not emulated).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerBackendCases } from './backend-cases.js';
import { emulatedKernels } from './emulator/emulator.js';
import { emulatedBackends } from './suite-backends.js';

const { skip, backend, device } = await emulatedBackends();

registerBackendCases({ label: 'emulated', skip, large: false, backend });

test('every kernel of the table ran in the suite above', { skip }, () => {
  if (!device) return;
  const launched = new Set(device.launches);
  assert.deepEqual(emulatedKernels().filter((k) => !launched.has(k)), []);
});
