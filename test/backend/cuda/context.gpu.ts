// The CUDA context on a real GPU: device description, stream-ordered allocation, host↔device
// copies of every typed array, device copies and memsets, events, and errors that name the
// call and the code. Skipped with the reason where there is no GPU.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { openGpu, seededRandom, randomNormal } from './gpu-helpers.js';
import { check } from '../../../src/backend/cuda/ffi/driver.js';

const { ctx, skip } = openGpu();
after(() => ctx?.dispose());

test('describe() reports the device, versions and library paths', { skip }, () => {
  const info = ctx!.describe();
  console.log(JSON.stringify(info, null, 2));
  assert.ok(info.name.length > 0);
  assert.match(info.computeCapability, /^\d+\.\d+$/);
  assert.ok(info.smCount > 0);
  assert.ok(info.totalMemoryBytes > 2 ** 30);
  assert.ok(info.freeMemoryBytes > 0 && info.freeMemoryBytes <= info.totalMemoryBytes);
  assert.match(info.driverVersion, /^\d+\.\d+$/);
  assert.match(info.nvrtcVersion, /^\d+\.\d+$/);
  assert.match(info.cublasLtVersion, /^\d+\.\d+\.\d+$/);
  assert.ok(info.libraries.cuda && info.libraries.cublasLt && info.libraries.nvrtc, 'library paths');
  if (info.computeCapability === '9.0') assert.equal(info.arch, 'sm_90a');
});

test('alloc, copy in, copy out: every typed array round-trips', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const arrays = [
    randomNormal(rng, 1000),
    Float64Array.from({ length: 333 }, () => rng.normal()),
    Int32Array.from({ length: 777 }, () => rng.int(-1e9, 1e9)),
    Uint16Array.from({ length: 1001 }, () => rng.int(0, 65535)),
    Uint8Array.from({ length: 17 }, () => rng.int(0, 255)),
  ];
  for (const a of arrays) {
    const ptr = c.upload(a);
    assert.equal(ptr % 256, 0, 'pool allocations are 256-byte aligned');
    const back = new (a.constructor as new (n: number) => typeof a)(a.length);
    c.copyToHost(back, ptr);
    assert.deepEqual(back, a, `${a.constructor.name} (seed ${rng.seed})`);
    c.free(ptr);
  }
  // A large copy (64 MiB) and a subarray (offset into a shared buffer).
  const big = randomNormal(rng, 16 * 2 ** 20);
  const ptr = c.upload(big);
  const back = new Float32Array(big.length);
  c.copyToHost(back, ptr);
  assert.ok(back.every((v, i) => v === big[i]));
  const part = new Float32Array(100);
  c.copyToHost(part, ptr + 4 * 1000);
  assert.deepEqual(part, big.subarray(1000, 1100));
  const window = new Float32Array(300).fill(-1);
  c.copyToHost(window.subarray(100, 200), ptr);
  assert.deepEqual(window.subarray(100, 200), big.subarray(0, 100));
  assert.equal(window[99], -1);
  assert.equal(window[200], -1);
  c.free(ptr);
  assert.equal(c.alloc(0), 0);
  c.free(0);
});

test('device copies and memsets', { skip }, () => {
  const c = ctx!;
  const src = Int32Array.from({ length: 1024 }, (_, i) => i * 7 - 300);
  const a = c.upload(src);
  const b = c.alloc(src.byteLength);
  c.copyDeviceToDevice(b, a, src.byteLength);
  const back = new Int32Array(src.length);
  c.copyToHost(back, b);
  assert.deepEqual(back, src);
  c.memset32(b, 0x3f800000, 512); // 1.0f in the first half
  c.memset8(b + 2048, 0xff, 2048); // all ones: -1 as i32
  const f = new Float32Array(1024);
  c.copyToHost(f, b);
  assert.ok(f.subarray(0, 512).every((v) => v === 1));
  const i = new Int32Array(1024);
  c.copyToHost(i, b);
  assert.ok(i.subarray(512).every((v) => v === -1));
  c.free(a);
  c.free(b);
  c.synchronize();
});

test('freed memory stays in the pool and is reused', { skip }, () => {
  const c = ctx!;
  const bytes = 256 * 2 ** 20;
  const p1 = c.alloc(bytes);
  c.free(p1);
  c.synchronize();
  const before = c.memoryInfo().freeBytes;
  const p2 = c.alloc(bytes);
  c.synchronize();
  const after = c.memoryInfo().freeBytes;
  console.log(`# pool: first ${p1.toString(16)}, second ${p2.toString(16)}, free before ${before}, after ${after}`);
  assert.ok(before - after < bytes / 2, 'the second allocation is served from the pool, not the driver');
  c.free(p2);
  c.synchronize();
});

test('events time the stream', { skip }, () => {
  const c = ctx!;
  const start = c.createEvent(), end = c.createEvent();
  const p = c.alloc(64 * 2 ** 20);
  start.record();
  for (let i = 0; i < 10; i++) c.memset8(p, i, 64 * 2 ** 20);
  end.record();
  end.synchronize();
  const ms = end.elapsedSince(start);
  console.log(`# 10 memsets of 64 MiB: ${ms.toFixed(3)} ms`);
  assert.ok(ms > 0 && ms < 1000);
  c.free(p);
  start.destroy();
  end.destroy();
});

test('failures name the call and the CUDA error code', { skip }, () => {
  const c = ctx!;
  assert.throws(() => c.alloc(2 ** 50), /^Error: cuMemAllocAsync\(\d+ bytes\) failed: CUDA_ERROR_\w+ \(\d+\)$/);
  assert.throws(() => check('cuFake', 1), { message: 'cuFake failed: CUDA_ERROR_INVALID_VALUE (1)' });
  // The context is still usable afterwards.
  const p = c.upload(new Float32Array([1, 2, 3]));
  const back = new Float32Array(3);
  c.copyToHost(back, p);
  assert.deepEqual([...back], [1, 2, 3]);
  c.free(p);
});
