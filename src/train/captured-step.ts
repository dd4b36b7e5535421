// The forward and backward of a training micro-batch recorded once into a graph and replayed
// (DESIGN §7): on the GPU the step's thousands of kernel launches and GEMM calls then cost one
// launch. What changes from one micro-batch to the next lives in fixed device buffers: the token
// ids (uploaded before each replay, outside the graph); the gradients and the StepSums accumulate
// in place.
//
// A MoE layer's permutation needs its rows per expert before its GEMMs. Eagerly they are read
// from the device; a graph cannot read, so each MoE layer permutes to a fixed capacity chosen
// from the loads of the first micro-batch, with headroom. Should a later micro-batch send more
// tokens to an expert than its capacity, the permutation drops them and raises a flag; runStep
// reads the flag after the step, has the caller redo the whole step eagerly, and doubles the
// capacities for the next capture. Tokens are never dropped from a step that counts.
//
// Lifecycle, micro-batch after micro-batch (runStep): the first runs eagerly and measures the
// loads; the second runs eagerly at the fixed capacities (making the GEMM plans and kernels the
// capture needs); the third is captured and replayed, and every later one replays.

import type { Backend, CapturedGraph } from '../backend/backend.js';
import type { ForwardContext } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import type { MoE } from '../model/moe.js';
import type { Tensor } from '../tensor/tensor.js';
import { forwardBackwardOnDevice, StepSums, uploadStepInputs, type LossOptions, type StepInputs } from './forward-backward.js';

/**
 * Capacity over the largest count first seen (by default), and the rows capacities are rounded up
 * to (tensor-core GEMM tiles take rows in multiples of 8).
 */
const CAPACITY_HEADROOM = 1.25;
const CAPACITY_ROWS = 8;

export class CapturedTrainStep {
  private readonly b: Backend;
  private readonly inputs: StepInputs;
  private readonly ctx: ForwardContext;
  /** [1] i32: non-zero once a fixed-capacity permutation dropped a token (zeroed by `runStep`). */
  private readonly overflow: Tensor;
  /** The MoE layers in StepSums.loads order, with their index there. */
  private readonly moe: { index: number; ffn: MoE }[];
  /** Rows per expert for each MoE layer (as `moe`), once measured. */
  private capacities: number[] | null = null;
  private warmedAtCapacity = false;
  private graph: CapturedGraph | null = null;

  constructor(
    readonly model: DeepseekV3, readonly batch: number, readonly seq: number, readonly opts: LossOptions, readonly sums: StepSums,
    private readonly headroom = CAPACITY_HEADROOM,
  ) {
    this.b = model.backend;
    const b = this.b;
    const D = model.mtp.length;
    this.inputs = { byShift: Array.from({ length: D + 2 }, () => b.uploadInt(new Int32Array(batch * seq), [batch * seq])) };
    // the positions and RoPE tables, made once: the graph reads them
    this.ctx = model.context(batch, seq, 0);
    this.overflow = b.uploadInt(new Int32Array(1), [1]);
    this.moe = [...model.layers, ...model.mtp.map((m) => m.block)]
      .map((layer, index) => ({ index, ffn: layer.ffn }))
      .filter((l): l is { index: number; ffn: MoE } => 'experts' in l.ffn);
  }

  /**
   * Forward and backward of a step's micro-batches (each tokens [batch, seq + 1 + D]) into the
   * gradients and `sums`. When a micro-batch overflowed an expert's capacity the capacities double
   * (for the next capture) and `redoEagerly` must start the step again: returns whether it was called.
   */
  runStep(batches: Int32Array[], redoEagerly: () => void): boolean {
    this.b.copyFromHostInt(this.overflow, new Int32Array(1));
    for (const tokens of batches) this.run(tokens);
    if (this.b.downloadInt(this.overflow)[0] === 0) return false;
    this.grow();
    redoEagerly();
    return true;
  }

  private run(tokens: Int32Array): void {
    uploadStepInputs(this.model, tokens, this.batch, this.seq, this.inputs);
    if (!this.capacities) {
      this.capacities = this.measureCapacities();
      return;
    }
    if (!this.warmedAtCapacity) {
      this.atFixedCapacity(() => this.body());
      this.warmedAtCapacity = true;
      return;
    }
    if (!this.graph) this.graph = this.atFixedCapacity(() => this.b.captureGraph(() => this.body()));
    this.graph.replay();
  }

  /** After an overflow: double every capacity (the next `run` warms up and captures again). */
  private grow(): void {
    this.capacities = this.capacities && this.capacities.map((c, i) => Math.min(2 * c, this.worstCase(i)));
    this.dropGraph();
  }

  free(): void {
    this.dropGraph();
    for (const t of [...this.inputs.byShift, this.ctx.positions, this.overflow]) this.b.free(t);
  }

  private dropGraph(): void {
    this.graph?.free();
    this.graph = null;
    this.warmedAtCapacity = false;
  }

  private body(sums = this.sums): void {
    const mark = this.b.markAllocations();
    try {
      forwardBackwardOnDevice(this.model, this.ctx, this.inputs, this.opts, sums);
    } finally {
      this.b.releaseAllocations(mark);
    }
  }

  /** The first micro-batch, eagerly with capacities read from the device; its loads give every layer's capacity. */
  private measureCapacities(): number[] {
    const own = new StepSums(this.b, this.model);
    try {
      this.body(own);
      const { expertLoad } = own.read(this.opts.mtpWeight, 1);
      this.b.addInPlace(this.sums.all, own.all);
      return this.moe.map(({ index }, i) => {
        const most = Math.max(...expertLoad[index]);
        return Math.min(Math.max(CAPACITY_ROWS, Math.ceil((most * this.headroom) / CAPACITY_ROWS) * CAPACITY_ROWS), this.worstCase(i));
      });
    } finally {
      own.free();
    }
  }

  /** Every slot of the micro-batch on one expert: a capacity that can never overflow. */
  private worstCase(i: number): number {
    const slots = this.batch * this.seq * this.moe[i].ffn.router.topK;
    return Math.ceil(slots / CAPACITY_ROWS) * CAPACITY_ROWS;
  }

  /** Run `body` with every MoE layer permuting to its fixed capacity. */
  private atFixedCapacity<R>(body: () => R): R {
    this.moe.forEach(({ ffn }, i) => (ffn.fixedCapacity = { capacity: this.capacities![i], overflow: this.overflow }));
    try {
      return body();
    } finally {
      for (const { ffn } of this.moe) ffn.fixedCapacity = null;
    }
  }
}
