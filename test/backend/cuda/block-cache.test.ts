// The CUDA backend's cache of freed device memory (block-cache.ts) on a stand-in context that
// records what reaches the pool: reuse by exact size, blocks returned after an unused epoch,
// graph capture going straight to the pool, and a failed allocation retried after the cache is
// emptied.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockCache, cachingContext } from '../../../src/backend/cuda/block-cache.js';
import type { CudaContext } from '../../../src/backend/cuda/context.js';

function fakeContext(limitBytes = Infinity) {
  let next = 4096, inUse = 0;
  const sizes = new Map<number, number>();
  const calls = { alloc: 0, free: 0 };
  const ctx = {
    isCapturing: false,
    smCount: 7,
    alloc(bytes: number): number {
      calls.alloc++;
      if (inUse + bytes > limitBytes) throw new Error(`cuMemAllocAsync(${bytes} bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2)`);
      const p = next;
      next += Math.ceil(bytes / 256) * 256;
      sizes.set(p, bytes);
      inUse += bytes;
      return p;
    },
    free(ptr: number): void {
      calls.free++;
      const bytes = sizes.get(ptr);
      assert.ok(bytes !== undefined, `free of ${ptr}, which the pool did not hand out`);
      sizes.delete(ptr);
      inUse -= bytes;
    },
  };
  return { ctx: ctx as unknown as CudaContext & { isCapturing: boolean }, calls, inUse: () => inUse };
}

test('a freed block serves the next request of its size, and only of its size', () => {
  const { ctx, calls } = fakeContext();
  const cache = new BlockCache(ctx);
  const a = cache.alloc(1000), b = cache.alloc(1000);
  cache.free(a);
  assert.equal(cache.cachedBytes, 1000);
  assert.equal(cache.alloc(1000), a, 'the freed block comes back');
  assert.notEqual(cache.alloc(999), b, 'another size comes from the pool');
  assert.deepEqual(calls, { alloc: 3, free: 0 });
  assert.equal(cache.alloc(0), 0);
  cache.free(0);
  assert.deepEqual(cache.stats, { hits: 1, misses: 3, released: 0 });
});

test('a block unused for a whole epoch goes back to the pool', () => {
  const { ctx, calls, inUse } = fakeContext();
  const cache = new BlockCache(ctx);
  const a = cache.alloc(512), b = cache.alloc(512);
  cache.free(a);
  cache.free(b);
  cache.advance(); // both were freed in this epoch: kept
  assert.equal(cache.cachedBytes, 1024);
  assert.equal(cache.alloc(512), b, 'the most recently freed first');
  cache.advance(); // a stayed unused through a whole epoch
  assert.equal(calls.free, 1);
  assert.equal(cache.cachedBytes, 0);
  assert.equal(inUse(), 512);
  cache.free(b);
  cache.flush();
  assert.equal(inUse(), 0);
  assert.equal(cache.stats.released, 1);
});

test('during graph capture allocations and frees go straight to the pool', () => {
  const { ctx, calls } = fakeContext();
  const cache = new BlockCache(ctx);
  const before = cache.alloc(256);
  ctx.isCapturing = true;
  const inside = cache.alloc(256);
  cache.free(before); // freed inside the capture: not cached
  ctx.isCapturing = false;
  cache.free(inside); // allocated inside the capture: not cached either
  assert.equal(cache.cachedBytes, 0);
  assert.deepEqual(calls, { alloc: 2, free: 2 });
});

test('a failed allocation empties the cache into the pool and tries again', () => {
  const { ctx, calls, inUse } = fakeContext(3000);
  const cache = new BlockCache(ctx);
  const a = cache.alloc(1000), b = cache.alloc(1000);
  cache.free(a);
  cache.free(b);
  const c = cache.alloc(2500); // the pool holds 2000 of 3000 for the cache: fails, then fits
  assert.ok(c > 0);
  assert.equal(inUse(), 2500);
  assert.equal(cache.cachedBytes, 0);
  assert.deepEqual(calls, { alloc: 4, free: 2 });
  assert.throws(() => cache.alloc(1000), /OUT_OF_MEMORY/, 'nothing cached: the failure stands');
});

test('the caching context allocates through the cache and keeps every other member', () => {
  const { ctx } = fakeContext();
  const cache = new BlockCache(ctx);
  const wrapped = cachingContext(ctx, cache);
  const p = wrapped.alloc(300);
  wrapped.free(p);
  assert.equal(cache.cachedBytes, 300);
  assert.equal(wrapped.smCount, 7);
  ctx.isCapturing = true;
  assert.equal(wrapped.isCapturing, true);
});
