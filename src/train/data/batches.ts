// Training and evaluation batches from a token stream.
//
// Windows. The stream (L tokens) is cut into windows of W = windowLength tokens whose starts are
// S = stride apart (default S = W: windows that do not overlap at all). The trainer asks for
// W = seqLen + 1 + mtpDepth and S = seqLen: window k covers tokens [k*S, k*S + W), its first
// seqLen tokens are the inputs, tokens [1 + d, seqLen + 1 + d) the targets of prediction depth d
// (d = 0 the next token, d >= 1 the MTP modules). The inputs of consecutive windows tile the stream
// with no gap and no overlap; only the 1 + mtpDepth target-only tokens at a window's end are read
// again as the next window's first inputs, so no token is wasted as a target and none is trained
// on twice per epoch as an input.
//
// Held-out split. With N = floor((L - W) / S) + 1 windows in the whole stream, the last
// E = max(1, floor(N * evalFraction)) windows' worth of tokens is held out: the evaluation windows
// are the E windows ending exactly at the end of the stream (starts L - (E - 1) * S - W + j * S), and
// the training windows are those starting at 0, S, 2S, ... that end at or before the first
// evaluation token. Training and evaluation therefore share no token. The split depends on the
// data, W, S and evalFraction only, never on the seed, and is fixed before any shuffling.
//
// Order. Each epoch visits every training window once in an order shuffled by Fisher–Yates with
// `Random` seeded from (seed, epoch); `nextBatch` runs on into the next epoch when one ends. The
// position is (epoch, cursor), so `state` is three numbers and `restore` continues with exactly
// the batches the uninterrupted run would have produced.

import { Random } from "../../util/random.js";
import type { TokenStore } from "./token-store.js";

export const DEFAULT_EVAL_FRACTION = 0.05;

export interface BatchSamplerOptions {
  /** Tokens per window (the trainer's seqLen + 1 + mtpDepth). */
  windowLength: number;
  /** Distance between consecutive window starts, 1..windowLength (the trainer's seqLen). Default windowLength. */
  stride?: number;
  /** Seed of the per-epoch shuffles (any safe integer). */
  seed: number;
  /** Share of the windows held out for evaluation, in (0, 1); at least one window. Default 0.05. */
  evalFraction?: number;
}

/** Where a sampler stands: plain JSON numbers, saved with a checkpoint. */
export interface BatchSamplerState {
  /** Epochs completed. */
  epoch: number;
  /** Windows of the current epoch already handed out. */
  cursor: number;
  seed: number;
  /** Training windows of the sampler that saved the state: a check that the data and windows are unchanged. */
  windows?: number;
}

// murmur3's finalizer: a bijection on uint32 that spreads every input bit over the output.
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The Random seed of one epoch's shuffle: distinct epochs of one seed get distinct seeds. */
export function epochShuffleSeed(seed: number, epoch: number): number {
  const low = seed >>> 0;
  const high = Math.floor(seed / 4294967296) >>> 0;
  const h = mix32(mix32(low ^ 0x243f6a88) ^ high);
  return mix32(h ^ mix32((epoch >>> 0) ^ 0x9e3779b9));
}

function checkInteger(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new Error(`${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

export class BatchSampler {
  readonly windowLength: number;
  readonly stride: number;
  readonly evalFraction: number;
  /** Number of training windows (one epoch). */
  readonly trainWindows: number;
  /** Number of held-out windows. */
  readonly evalWindows: number;
  /** First token of the held-out region; every training window ends at or before it. */
  readonly evalStart: number;

  private seedValue: number;
  private epochValue = 0;
  private cursorValue = 0;
  private order: Uint32Array;

  constructor(
    readonly store: TokenStore,
    options: BatchSamplerOptions,
  ) {
    const w = checkInteger("windowLength", options.windowLength, 2);
    const s = checkInteger("stride", options.stride ?? w, 1, w);
    const fraction = options.evalFraction ?? DEFAULT_EVAL_FRACTION;
    if (!(fraction > 0 && fraction < 1)) throw new Error(`evalFraction must be in (0, 1), got ${fraction}`);
    this.seedValue = checkInteger("seed", options.seed, Number.MIN_SAFE_INTEGER);
    this.windowLength = w;
    this.stride = s;
    this.evalFraction = fraction;

    const length = store.length;
    if (length < 2 * w) {
      throw new Error(
        `the corpus has ${length} tokens, too few for two windows of ${w} tokens (one to train on, one held out): ` +
          `at least ${2 * w} tokens are needed; add data or shorten the sequence`,
      );
    }
    const total = Math.floor((length - w) / s) + 1;
    this.evalWindows = Math.max(1, Math.floor(total * fraction));
    this.evalStart = length - (this.evalWindows - 1) * s - w;
    this.trainWindows = this.evalStart >= w ? Math.floor((this.evalStart - w) / s) + 1 : 0;
    if (this.trainWindows < 1) {
      throw new Error(
        `the corpus has ${length} tokens; holding out ${this.evalWindows} windows (evalFraction ${fraction}) of ${w} tokens ` +
          `leaves none to train on: at least ${this.evalWindows * s - s + 2 * w} tokens are needed`,
      );
    }
    this.order = this.epochOrder(0);
  }

  get seed(): number {
    return this.seedValue;
  }

  /** Epochs completed so far. */
  get epoch(): number {
    return this.epochValue;
  }

  /** Windows of the current epoch handed out so far. */
  get cursor(): number {
    return this.cursorValue;
  }

  /** Stream position of training window `index` (0 <= index < trainWindows). */
  trainWindowStart(index: number): number {
    checkInteger("training window index", index, 0, this.trainWindows - 1);
    return index * this.stride;
  }

  /** Stream position of held-out window `index` (0 <= index < evalWindows). */
  evalWindowStart(index: number): number {
    checkInteger("held-out window index", index, 0, this.evalWindows - 1);
    return this.evalStart + index * this.stride;
  }

  /** The order in which `epoch` visits the training windows (a permutation of 0..trainWindows-1). */
  epochOrder(epoch: number): Uint32Array {
    checkInteger("epoch", epoch, 0);
    const n = this.trainWindows;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    const random = new Random(epochShuffleSeed(this.seedValue, epoch));
    for (let i = n - 1; i > 0; i--) {
      const j = random.int(i + 1);
      const t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    return order;
  }

  /** The next `batchSize` training windows, row-major [batchSize, windowLength]. */
  nextBatch(batchSize: number): Int32Array {
    checkInteger("batchSize", batchSize, 1);
    const w = this.windowLength;
    const out = new Int32Array(batchSize * w);
    for (let row = 0; row < batchSize; row++) {
      const index = this.order[this.cursorValue];
      out.set(this.store.read(index * this.stride, w), row * w);
      this.cursorValue++;
      if (this.cursorValue === this.trainWindows) {
        this.epochValue++;
        this.cursorValue = 0;
        this.order = this.epochOrder(this.epochValue);
      }
    }
    return out;
  }

  /**
   * The held-out windows in stream order, `batchSize` per batch ([rows, windowLength] row-major);
   * the last batch holds the remaining rows and may be smaller. At most `maxBatches` batches.
   * Does not move the training position.
   */
  *evalBatches(batchSize: number, maxBatches = Infinity): Generator<Int32Array> {
    checkInteger("batchSize", batchSize, 1);
    if (!(maxBatches >= 0)) throw new Error(`maxBatches must be >= 0, got ${maxBatches}`);
    const w = this.windowLength;
    let batches = 0;
    for (let first = 0; first < this.evalWindows && batches < maxBatches; first += batchSize, batches++) {
      const rows = Math.min(batchSize, this.evalWindows - first);
      const out = new Int32Array(rows * w);
      for (let r = 0; r < rows; r++) out.set(this.store.read(this.evalWindowStart(first + r), w), r * w);
      yield out;
    }
  }

  get state(): BatchSamplerState {
    return { epoch: this.epochValue, cursor: this.cursorValue, seed: this.seedValue, windows: this.trainWindows };
  }

  /** Continue from a saved `state` (the seed comes with it). */
  restore(state: BatchSamplerState): void {
    if (state === null || typeof state !== "object") throw new Error("sampler state must be an object { epoch, cursor, seed }");
    if (state.windows !== undefined && state.windows !== this.trainWindows) {
      throw new Error(
        `sampler state was saved with ${String(state.windows)} training windows but this data gives ${this.trainWindows} ` +
          `(different data, window length, stride or evalFraction)`,
      );
    }
    const epoch = checkInteger("state.epoch", state.epoch, 0);
    const cursor = checkInteger("state.cursor", state.cursor, 0, this.trainWindows - 1);
    const seed = checkInteger("state.seed", state.seed, Number.MIN_SAFE_INTEGER);
    this.seedValue = seed;
    this.epochValue = epoch;
    this.cursorValue = cursor;
    this.order = this.epochOrder(epoch);
  }
}
