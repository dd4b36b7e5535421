// The forward and backward of a training micro-batch recorded once into a graph and replayed
// (DESIGN §7): on the GPU the step's thousands of kernel launches and GEMM calls then cost one
// launch. What changes from one micro-batch to the next lives in fixed device buffers: the token
// ids (uploaded before each replay, outside the graph); the gradients and the StepSums accumulate
// in place.
//
// A MoE layer's permutation needs its rows per expert before its GEMMs. Eagerly they are read
// from the device; a graph cannot read, so each MoE layer permutes to a fixed capacity
// (ExpertCapacities), first chosen from the loads of the first micro-batch with headroom. Each
// layer's permutation counts on the device the slots it dropped and the capacity it needed; runStep
// reads those after the step. A step that dropped a slot is redone eagerly by the caller, so tokens
// are never dropped from a step that counts; the capacities then grow to what was needed, or later
// shrink as the routing evens out, and the next micro-batch captures again.
//
// Lifecycle, micro-batch after micro-batch (runStep): the first runs eagerly and measures the
// loads; the second runs eagerly at the fixed capacities (making the GEMM plans and kernels the
// capture needs); the third is captured and replayed, and every later one replays, until the
// capacities change.

import type { Backend, CapturedGraph } from '../backend/backend.js';
import type { ForwardContext } from '../model/mla.js';
import type { DeepseekV3 } from '../model/model.js';
import type { MoE } from '../model/moe.js';
import type { Tensor } from '../tensor/tensor.js';
import { CAPACITY_HEADROOM, CAPACITY_ROWS, ExpertCapacities } from './expert-capacity.js';
import { forwardBackwardOnDevice, StepSums, uploadStepInputs, type LossOptions, type StepInputs } from './forward-backward.js';

export class CapturedTrainStep {
  private readonly b: Backend;
  private readonly inputs: StepInputs;
  private readonly ctx: ForwardContext;
  /**
   * [2 per MoE layer] i32, zeroed by `runStep`: each layer's slots dropped and largest expert load
   * (MoeFixedCapacity.stats), in `moe` order; `layerStats` are its views, one per layer.
   */
  private readonly stats: Tensor;
  private readonly layerStats: Tensor[];
  /** The MoE layers in StepSums.loads order, with their index there. */
  private readonly moe: { index: number; ffn: MoE }[];
  /** Rows per expert for each MoE layer (as `moe`), once measured. */
  private capacities: ExpertCapacities | null = null;
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
    this.moe = [...model.layers, ...model.mtp.map((m) => m.block)]
      .map((layer, index) => ({ index, ffn: layer.ffn }))
      .filter((l): l is { index: number; ffn: MoE } => 'experts' in l.ffn);
    this.stats = b.uploadInt(new Int32Array(2 * this.moe.length), [2 * this.moe.length]);
    this.layerStats = this.moe.map((_, i) => b.rows(this.stats, 2 * i, 2));
  }

  /** Rows per expert of each MoE layer (main stack, then MTP blocks) once measured, else null. */
  get capacityRows(): readonly number[] | null {
    return this.capacities?.rows ?? null;
  }

  /**
   * Forward and backward of a step's micro-batches (each tokens [batch, seq + 1 + D]) into the
   * gradients and `sums`. When a micro-batch dropped a slot past an expert's capacity,
   * `redoEagerly` must start the step again: returns whether it was called. Either way the
   * capacities follow the loads measured (ExpertCapacities), and a change drops the graph.
   */
  runStep(batches: Int32Array[], redoEagerly: () => void): boolean {
    this.b.copyFromHostInt(this.stats, new Int32Array(2 * this.moe.length));
    let atCapacity = 0;
    for (const tokens of batches) if (this.run(tokens)) atCapacity++;
    // only the micro-batch that measured the first loads ran (eagerly): nothing to read
    if (atCapacity === 0) return false;
    const stats = this.b.downloadInt(this.stats);
    const dropped = this.moe.some((_, i) => stats[2 * i]! > 0);
    if (this.capacities!.update(this.moe.map((_, i) => stats[2 * i + 1]!), dropped)) this.dropGraph();
    if (dropped) redoEagerly();
    return dropped;
  }

  /** One micro-batch; returns whether it ran at the fixed capacities (adding to `stats`). */
  private run(tokens: Int32Array): boolean {
    uploadStepInputs(this.model, tokens, this.batch, this.seq, this.inputs);
    if (!this.capacities) {
      this.capacities = new ExpertCapacities(this.worstCase(), this.headroom, this.measureLargestLoads());
      return false;
    }
    if (!this.warmedAtCapacity) {
      this.atFixedCapacity(() => this.body());
      this.warmedAtCapacity = true;
    } else {
      this.graph ??= this.atFixedCapacity(() => this.b.captureGraph(() => this.body()));
      this.graph.replay();
    }
    return true;
  }

  free(): void {
    this.dropGraph();
    for (const t of [...this.inputs.byShift, this.ctx.positions, this.stats]) this.b.free(t);
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

  /** The first micro-batch, eagerly with the counts read from the device: each MoE layer's largest expert load. */
  private measureLargestLoads(): number[] {
    const own = new StepSums(this.b, this.model);
    try {
      this.body(own);
      const { expertLoad } = own.read(this.opts.mtpWeight, 1);
      this.b.addInPlace(this.sums.all, own.all);
      return this.moe.map(({ index }) => Math.max(...expertLoad[index]!));
    } finally {
      own.free();
    }
  }

  /**
   * Every token of the micro-batch on one expert (a token's K experts are distinct, so no expert
   * gets more): a capacity that can never drop a slot.
   */
  private worstCase(): number {
    return Math.ceil((this.batch * this.seq) / CAPACITY_ROWS) * CAPACITY_ROWS;
  }

  /** Run `body` with every MoE layer permuting to its fixed capacity. */
  private atFixedCapacity<R>(body: () => R): R {
    const rows = this.capacities!.rows;
    this.moe.forEach(({ ffn }, i) => (ffn.fixedCapacity = { capacity: rows[i]!, stats: this.layerStats[i]! }));
    try {
      return body();
    } finally {
      for (const { ffn } of this.moe) ffn.fixedCapacity = null;
    }
  }
}
