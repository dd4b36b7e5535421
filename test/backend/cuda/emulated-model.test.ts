// The whole-model checks (model-cases.ts) on the CPU emulator of the kernels: the fixture forward
// against transformers and a few training steps against the CPU backend, in FP32 and BF16.

import { registerModelCases } from './model-cases.js';
import { emulatedBackends } from './suite-backends.js';

const { skip, backend } = await emulatedBackends();

registerModelCases({ label: 'emulated', skip, trainSteps: { f32: 3, bf16: 3 }, backend });
