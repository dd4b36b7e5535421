// A synchronous worker pool for the own GEMM. The caller posts the job description to as many
// workers as the job has tiles beyond its own first one, stores the job's generation in each
// one's wake word (a SharedArrayBuffer) and wakes it with Atomics.notify; then it claims tiles
// itself like any worker and finally blocks in Atomics.wait until the tiles that workers
// claimed are done. Workers sleep in Atomics.wait between jobs and read the
// job with receiveMessageOnPort, so SharedArrayBuffer-backed arrays in it are shared, not
// copied, and no event loop turn is needed on either side.
//
// Tiles are claimed with a compare-and-swap on one word holding (generation << 12 | next
// tile), so a worker that wakes late for an old job can never take a tile of a newer one, and
// a worker that has not started yet costs nothing: the caller simply does more tiles itself.

import { Worker } from 'node:worker_threads';
import { ownEngine, dtypeOf, type TilePlan } from './own.js';
import type { AnyGemmArgs } from './types.js';

// Layout of the control words (Int32Array over a SharedArrayBuffer).
export const CTRL_CLAIM = 1; // (gen << TASK_BITS) | next unclaimed tile
export const CTRL_DONE = 2; // tiles finished in the current job
export const CTRL_FAILED = 3; // 1 once a tile threw
export const CTRL_WORKER_TILES = 4; // statistics: tiles run by workers, all jobs
export const CTRL_ERROR_LEN = 5; // length of the first error message
export const CTRL_ERROR_TEXT = 16; // its UTF-16 code units
const ERROR_CHARS = 512;
export const CTRL_WAKE_BASE = CTRL_ERROR_TEXT + ERROR_CHARS; // + worker index: the job generation it is woken for

const TASK_BITS = 12;
const TASK_MASK = (1 << TASK_BITS) - 1;
const GEN_LIMIT = 1 << (31 - TASK_BITS); // keeps the claim word a positive int32

export interface PoolJob {
  gen: number;
  args: AnyGemmArgs;
  plan: TilePlan;
}

/**
 * Claim and run tiles of `job` until none is left; returns how many this thread ran. Workers
 * pass `fromWorker` so the statistics word is counted before the caller can see the job done.
 */
export function runClaimedTiles(ctrl: Int32Array, job: PoolJob, fromWorker: boolean): number {
  const engine = ownEngine(dtypeOf(job.args.a));
  let ran = 0;
  for (;;) {
    const word = Atomics.load(ctrl, CTRL_CLAIM);
    if (word >>> TASK_BITS !== job.gen) return ran;
    const t = word & TASK_MASK;
    if (t >= job.plan.count) return ran;
    if (Atomics.compareExchange(ctrl, CTRL_CLAIM, word, word + 1) !== word) continue;
    try {
      engine.runTask(job.args, job.plan, t);
    } catch (e) {
      recordFailure(ctrl, e);
    }
    ran++;
    if (fromWorker) Atomics.add(ctrl, CTRL_WORKER_TILES, 1);
    Atomics.add(ctrl, CTRL_DONE, 1);
    Atomics.notify(ctrl, CTRL_DONE);
  }
}

function recordFailure(ctrl: Int32Array, e: unknown): void {
  if (Atomics.compareExchange(ctrl, CTRL_FAILED, 0, 1) !== 0) return;
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  const n = Math.min(text.length, ERROR_CHARS);
  for (let i = 0; i < n; i++) ctrl[CTRL_ERROR_TEXT + i] = text.charCodeAt(i);
  Atomics.store(ctrl, CTRL_ERROR_LEN, n);
}

export class GemmPool {
  readonly ctrl: Int32Array;
  private readonly workers: Worker[] = [];
  private gen = 0;
  /** Tiles run by the calling thread, all jobs (workers count theirs in CTRL_WORKER_TILES). */
  callerTiles = 0;
  jobs = 0;
  /** Why a worker died, if one did (its tiles fall to the others). */
  workerError: string | undefined;

  constructor(readonly workerCount: number) {
    this.ctrl = new Int32Array(new SharedArrayBuffer((CTRL_WAKE_BASE + workerCount) * 4));
    const url = new URL('./worker.js', import.meta.url);
    for (let i = 0; i < workerCount; i++) {
      const worker = new Worker(url, { workerData: { ctrl: this.ctrl, index: i } });
      // A worker that fails to start never claims a tile, so the caller does its share;
      // the listener keeps the failure from becoming an uncaught exception.
      worker.on('error', (e) => {
        this.workerError ??= e instanceof Error ? e.message : String(e);
      });
      worker.unref();
      this.workers.push(worker);
    }
  }

  get workerTiles(): number {
    return Atomics.load(this.ctrl, CTRL_WORKER_TILES);
  }

  /**
   * Runs every tile of `plan` with the calling thread and up to `maxHelpers` workers; returns
   * when all are written. The arrays must be SharedArrayBuffer-backed.
   */
  run(args: AnyGemmArgs, plan: TilePlan, maxHelpers: number): void {
    const ctrl = this.ctrl;
    this.gen = (this.gen % (GEN_LIMIT - 1)) + 1;
    const job: PoolJob = { gen: this.gen, args, plan };
    Atomics.store(ctrl, CTRL_DONE, 0);
    Atomics.store(ctrl, CTRL_CLAIM, this.gen << TASK_BITS);
    const helpers = Math.min(this.workers.length, plan.count - 1, maxHelpers);
    for (let i = 0; i < helpers; i++) {
      this.workers[i].postMessage(job);
      Atomics.store(ctrl, CTRL_WAKE_BASE + i, this.gen);
      Atomics.notify(ctrl, CTRL_WAKE_BASE + i);
    }
    this.jobs++;
    this.callerTiles += runClaimedTiles(ctrl, job, false);
    for (;;) {
      const done = Atomics.load(ctrl, CTRL_DONE);
      if (done >= plan.count) break;
      Atomics.wait(ctrl, CTRL_DONE, done);
    }
    if (Atomics.load(ctrl, CTRL_FAILED) !== 0) {
      const n = Atomics.load(ctrl, CTRL_ERROR_LEN);
      const text = String.fromCharCode(...ctrl.subarray(CTRL_ERROR_TEXT, CTRL_ERROR_TEXT + n));
      Atomics.store(ctrl, CTRL_FAILED, 0);
      throw new Error(`gemm: a tile failed: ${text}`);
    }
  }
}
