// Reuse of freed device memory by exact size, on top of the stream-ordered pool. cuMemAllocAsync
// and cuMemFreeAsync cost a few microseconds each on the host, and a training step allocates the
// same sizes in the same order every step: a block freed (stream-ordered, on the one stream) can
// serve the next request of its size at once, since every kernel that used it was enqueued
// before every kernel of its next user.
//
// Bounds: a block left unused for a whole epoch goes back to the pool. An epoch ends at
// `advance()` — the backend calls it when an allocation scope is released (a training step's
// end) — or after EPOCH_FREES frees, for code that never releases a scope. A failed
// allocation returns every cached block to the pool and tries once more.
//
// Graph capture: while the context captures, allocations and frees go straight to the pool (the
// graph owns them); a block freed during capture is not cached, nor is memory allocated then.

import type { CudaContext } from './context.js';

/** Frees after which an epoch ends even without advance(). */
const EPOCH_FREES = 1 << 16;

interface FreeBlocks {
  /** Addresses in the order they were freed. */
  ptrs: number[];
  /** The epoch in which each was freed. */
  epochs: number[];
}

export class BlockCache {
  /** Size of every block handed out and not yet freed. */
  private readonly sizes = new Map<number, number>();
  /** Freed blocks by exact size. */
  private readonly blocks = new Map<number, FreeBlocks>();
  private epoch = 0;
  private freesThisEpoch = 0;
  private cached = 0;
  /** Requests served from the cache and from the pool, and blocks returned to the pool unused. */
  readonly stats = { hits: 0, misses: 0, released: 0 };

  constructor(private readonly ctx: CudaContext) {}

  /** Bytes held in the cache (freed, not yet back in the pool). */
  get cachedBytes(): number {
    return this.cached;
  }

  alloc(bytes: number): number {
    if (bytes <= 0) return 0;
    if (this.ctx.isCapturing) return this.ctx.alloc(bytes);
    const list = this.blocks.get(bytes);
    let ptr: number;
    if (list && list.ptrs.length > 0) {
      // the most recently freed block: the likeliest to be warm in L2
      ptr = list.ptrs.pop()!;
      list.epochs.pop();
      this.cached -= bytes;
      this.stats.hits++;
    } else {
      ptr = this.allocFresh(bytes);
      this.stats.misses++;
    }
    this.sizes.set(ptr, bytes);
    return ptr;
  }

  free(ptr: number): void {
    if (ptr === 0) return;
    const bytes = this.sizes.get(ptr);
    if (bytes === undefined) {
      // not from this cache (allocated during capture, or by the context directly)
      this.ctx.free(ptr);
      return;
    }
    this.sizes.delete(ptr);
    if (this.ctx.isCapturing) {
      this.ctx.free(ptr);
      return;
    }
    let list = this.blocks.get(bytes);
    if (!list) this.blocks.set(bytes, (list = { ptrs: [], epochs: [] }));
    list.ptrs.push(ptr);
    list.epochs.push(this.epoch);
    this.cached += bytes;
    if (++this.freesThisEpoch >= EPOCH_FREES) this.advance();
  }

  /**
   * End an epoch: blocks freed before the previous one ended and unused since go back to the pool.
   * Not while capturing: those frees would be recorded into the graph and repeated at every replay.
   */
  advance(): void {
    if (this.ctx.isCapturing) return;
    for (const [bytes, list] of this.blocks) {
      let old = 0;
      while (old < list.epochs.length && list.epochs[old]! < this.epoch) old++;
      if (old > 0) {
        for (let i = 0; i < old; i++) this.ctx.free(list.ptrs[i]!);
        list.ptrs.splice(0, old);
        list.epochs.splice(0, old);
        this.cached -= old * bytes;
        this.stats.released += old;
      }
      if (list.ptrs.length === 0) this.blocks.delete(bytes);
    }
    this.epoch++;
    this.freesThisEpoch = 0;
  }

  /** Return every cached block to the pool. */
  flush(): void {
    for (const list of this.blocks.values()) for (const p of list.ptrs) this.ctx.free(p);
    this.blocks.clear();
    this.cached = 0;
  }

  private allocFresh(bytes: number): number {
    try {
      return this.ctx.alloc(bytes);
    } catch (e) {
      if (this.cached === 0) throw e;
      // out of memory, say: what the cache holds may be enough once the pool has it back
      this.flush();
      return this.ctx.alloc(bytes);
    }
  }
}

/**
 * `ctx` with alloc and free going through `cache`: every other member is the context's own
 * (through the prototype chain), so ops launchers and flash-attention helpers take it as it is.
 */
export function cachingContext(ctx: CudaContext, cache: BlockCache): CudaContext {
  return Object.create(ctx, {
    alloc: { value: (bytes: number) => cache.alloc(bytes) },
    free: { value: (ptr: number) => cache.free(ptr) },
  }) as CudaContext;
}
