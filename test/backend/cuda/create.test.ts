// Choosing the backend for --device on a machine without a usable GPU: cpu and auto give the CPU
// backend (auto silently), cuda fails with one line naming what is missing, also through the CLI.
// On a machine with a GPU the GPU side is checked by create.gpu.ts instead.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { createBackend } from '../../../src/backend/create.js';
import { openGpu } from './gpu-helpers.js';
import { repoRoot, tinyModelDir } from '../../shared-paths.js';

const gpu = openGpu();
gpu.ctx?.dispose();
const hasGpu = gpu.skip === false;

test('device cpu: the CPU backend in f32 or f64, not bf16', async () => {
  const b = await createBackend({ device: 'cpu' });
  assert.equal(b.name, 'cpu');
  assert.equal(b.floatDType, 'f32');
  assert.equal((await createBackend({ device: 'cpu', dtype: 'f64' })).floatDType, 'f64');
  await assert.rejects(createBackend({ device: 'cpu', dtype: 'bf16' }), /not bf16/);
});

test('device auto without a GPU: the CPU backend, silently', { skip: hasGpu && 'this machine has a GPU (create.gpu.ts checks auto there)' }, async () => {
  const b = await createBackend({ device: 'auto' });
  assert.equal(b.name, 'cpu');
  assert.equal((await createBackend()).name, 'cpu');
});

test('device cuda without a GPU: one line saying what is missing', { skip: hasGpu && 'this machine has a GPU' }, async () => {
  await assert.rejects(createBackend({ device: 'cuda' }), (e: Error) => {
    assert.match(e.message, /^--device cuda: /);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
  const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
  const r = spawnSync(process.execPath, [cli, 'generate', '--model', tinyModelDir, '--prompt-ids', '1,2,3', '--max-new-tokens', '2', '--device', 'cuda'],
    { encoding: 'utf8', env: { ...process.env, DSV3_DEBUG: '' } });
  assert.notEqual(r.status, 0);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /^dsv3: --device cuda: /);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});
