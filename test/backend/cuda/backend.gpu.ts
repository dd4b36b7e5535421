// The CUDA backend against the CPU backend on the GPU, op by op, in FP32 and BF16 mode, with
// GPU-sized problems (backend-cases.ts; the same suite runs on the CPU emulator in
// emulated-backend.test.ts). Skipped with the reason where there is no GPU.

import { registerBackendCases } from './backend-cases.js';
import { gpuBackends } from './suite-backends.js';

const { skip, backend } = gpuBackends();

registerBackendCases({ label: 'cuda', skip, large: true, backend });
