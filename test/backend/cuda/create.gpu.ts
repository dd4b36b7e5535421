// Choosing the backend on a machine with a GPU: auto and cuda give the CUDA backend (BF16 by
// default, FP32 on request), and it runs a forward op.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createBackend } from '../../../src/backend/create.js';
import type { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import { openGpu } from './gpu-helpers.js';

const gpu = openGpu();
gpu.ctx?.dispose();

test('device auto and cuda pick the GPU: BF16 by default, FP32 on request', { skip: gpu.skip }, async () => {
  for (const [opts, dtype] of [[{ device: 'auto' as const }, 'bf16'], [{ device: 'cuda' as const }, 'bf16'], [{ device: 'cuda' as const, dtype: 'f32' as const }, 'f32']] as const) {
    const b = (await createBackend(opts)) as CudaBackend;
    assert.equal(b.name, 'cuda');
    assert.equal(b.floatDType, dtype);
    const x = b.upload(Float32Array.from([1, 2, 3, 4]), [2, 2]);
    assert.deepEqual([...b.download(b.add(x, x))], [2, 4, 6, 8]);
    b.dispose();
  }
  await assert.rejects(createBackend({ device: 'cuda', dtype: 'f64' }), /--device cuda: .*not f64/);
});
