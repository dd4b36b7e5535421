// The expert capacities of a captured training step (CapturedTrainStep): the rows per expert that
// each MoE layer's fixed-capacity permutation pads to, so that a graph can run it without reading
// the counts. Every padding row costs GEMM work, and the loads move as training goes: routing at
// initialisation can send four times the mean to one expert, and the auxiliary-loss-free bias
// update evens that out over the first hundreds of steps. So the capacities follow the loads that
// the permutations measure on the device:
//   - at first, the largest load of a measured micro-batch with headroom;
//   - after a step that dropped slots (and was redone eagerly), each layer that dropped some at
//     least doubles, to what it needed with headroom if that is more (early in training the loads
//     can climb for many steps, and each change costs a new capture); a layer that came within its
//     headroom grows to it; the others keep their capacity;
//   - after SHRINK_WINDOW steps without a drop, a layer whose largest load in them, with headroom,
//     fits in SHRINK_BELOW of its capacity shrinks to it.
// A change means a new capture; the window keeps that rare.

/** Capacity over the largest load measured (by default). */
export const CAPACITY_HEADROOM = 1.25;
/** Capacities are multiples of this (tensor-core GEMM tiles take rows in multiples of 8). */
export const CAPACITY_ROWS = 8;
/** Steps whose loads are watched before any layer shrinks. */
export const SHRINK_WINDOW = 16;
/** A layer shrinks only when its fitted capacity is at most this fraction of its current one. */
export const SHRINK_BELOW = 0.75;

export class ExpertCapacities {
  private readonly current: number[];
  /** Per layer, the largest load seen since the window began. */
  private windowLargest: number[];
  private windowSteps = 0;

  /**
   * `worstCase`: the most rows an expert can get in a micro-batch (a capacity that can never drop a
   * slot, and the most any layer gets); `largest` per MoE layer: the largest load of the first
   * micro-batch measured. `headroom` below 1 only serves tests that need drops.
   */
  constructor(private readonly worstCase: number, private readonly headroom: number, largest: readonly number[]) {
    if (!(headroom > 0)) throw new Error(`expert capacity headroom ${headroom} (must be > 0)`);
    this.current = largest.map((count) => this.fit(count, headroom));
    this.windowLargest = largest.map(() => 0);
  }

  /** Rows per expert, per MoE layer. */
  get rows(): readonly number[] {
    return this.current;
  }

  /**
   * After a step run at these capacities: `largest` per layer, the most slots any expert was routed
   * in any of its micro-batches; `dropped` whether some slot got no row. Returns whether a capacity
   * changed (the graph must then be captured again).
   */
  update(largest: readonly number[], dropped: boolean): boolean {
    if (largest.length !== this.current.length) throw new Error(`expert capacities: ${largest.length} loads for ${this.current.length} MoE layers`);
    if (dropped) {
      this.restartWindow();
      return this.set(this.current.map((c, i) => {
        // at least the load itself, whatever the headroom
        const needed = this.fit(largest[i]!, Math.max(this.headroom, 1));
        return largest[i]! > c ? Math.max(needed, Math.min(2 * c, this.worstCase)) : Math.max(c, needed);
      }));
    }
    this.windowLargest = this.windowLargest.map((most, i) => Math.max(most, largest[i]!));
    if (++this.windowSteps < SHRINK_WINDOW) return false;
    const fitted = this.windowLargest.map((most) => this.fit(most, this.headroom));
    this.restartWindow();
    return this.set(this.current.map((c, i) => (fitted[i]! <= SHRINK_BELOW * c ? fitted[i]! : c)));
  }

  /** The capacity for a largest load of `count`: with headroom, in whole CAPACITY_ROWS, at most the worst case. */
  private fit(count: number, headroom: number): number {
    const rows = Math.max(CAPACITY_ROWS, Math.ceil((count * headroom) / CAPACITY_ROWS) * CAPACITY_ROWS);
    return Math.min(rows, this.worstCase);
  }

  private restartWindow(): void {
    this.windowLargest = this.windowLargest.map(() => 0);
    this.windowSteps = 0;
  }

  private set(next: number[]): boolean {
    const changed = next.some((c, i) => c !== this.current[i]);
    next.forEach((c, i) => (this.current[i] = c));
    return changed;
  }
}
