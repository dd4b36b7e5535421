// Where tests find the shared fixtures: `../shared` beside the repository root, or the folder
// DSV3_SHARED_DIR names (the GPU machine gets a copy inside the work tree). Compiled tests run
// from dist/test/, two levels below the root.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedDir = process.env.DSV3_SHARED_DIR ? path.resolve(process.env.DSV3_SHARED_DIR) : path.resolve(repoRoot, '..', 'shared');
export const tinyModelDir = path.join(sharedDir, 'fixtures', 'hf-dsv3-tiny');
export const bpeTokenizerDir = path.join(sharedDir, 'fixtures', 'bpe-tokenizer');
