// Whole-model checks on the GPU (model-cases.ts): the tiny fixture's logits and hidden states
// against transformers in FP32 and BF16 mode, greedy decoding through the latent cache, and ten
// training steps of a micro model whose losses track the CPU backend's.

import { registerModelCases } from './model-cases.js';
import { gpuBackends } from './suite-backends.js';

const { skip, backend } = gpuBackends();

registerModelCases({ label: 'cuda', skip, trainSteps: { f32: 10, bf16: 10 }, backend });
