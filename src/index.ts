// The dsv3 library: load Hugging Face DeepSeek-V3 checkpoints, compute logits, generate.

export { loadModel, LanguageModel, type Logits } from './infer/language-model.js';
export type { GenerateOptions, GenerateResult } from './infer/generate.js';
export { DecodeStep } from './infer/decode-step.js';
export type { SamplingOptions } from './infer/sampling.js';
export { createBackend, type BackendOptions, type DeviceName } from './backend/create.js';
export type { Backend } from './backend/backend.js';
export type { Tensor } from './tensor/tensor.js';
export { parseConfig, type ModelConfig } from './model/config.js';
export { DeepseekV3 } from './model/model.js';
export { loadPretrained } from './model/load.js';
export { loadTokenizer, type Tokenizer } from './io/tokenizer.js';
