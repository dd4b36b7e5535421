// Where the GEMM time goes: with DSV3_GEMM_PROFILE=1, every cuBLASLt GEMM is bracketed by a pair of
// CUDA events and its time is added to its problem's row; the table (time, calls, TFLOP/s per
// problem, longest first) goes to stderr when the GEMM runner is disposed. For finding slow shapes,
// not for timing a whole step: the events cost host time, and under graph capture nothing is timed.

import type { CudaContext, CudaEvent } from './context.js';

interface Row {
  calls: number;
  ms: number;
  flops: number;
}

interface Pending {
  key: string;
  flops: number;
  start: CudaEvent;
  end: CudaEvent;
}

/** Pending measurements folded into the rows at once (waiting on the oldest end event). */
const FOLD_AFTER = 1024;

export class GemmProfile {
  private readonly rows = new Map<string, Row>();
  private pending: Pending[] = [];
  private readonly spare: CudaEvent[] = [];

  private constructor(private readonly ctx: CudaContext) {}

  /** A profile when DSV3_GEMM_PROFILE is set to something other than 0, else null. */
  static fromEnvironment(ctx: CudaContext): GemmProfile | null {
    const v = process.env.DSV3_GEMM_PROFILE;
    return v && v !== '0' ? new GemmProfile(ctx) : null;
  }

  /** Run `launch` (which enqueues one GEMM of `flops` floating-point operations) between two events. */
  time(key: string, flops: number, launch: () => number): number {
    if (this.ctx.isCapturing) return launch();
    const start = this.spare.pop() ?? this.ctx.createEvent(), end = this.spare.pop() ?? this.ctx.createEvent();
    start.record();
    const status = launch();
    end.record();
    this.pending.push({ key, flops, start, end });
    if (this.pending.length >= FOLD_AFTER) this.fold();
    return status;
  }

  private fold(): void {
    const last = this.pending[this.pending.length - 1];
    last?.end.synchronize();
    for (const p of this.pending) {
      const row = this.rows.get(p.key) ?? { calls: 0, ms: 0, flops: 0 };
      row.calls++;
      row.ms += p.end.elapsedSince(p.start);
      row.flops += p.flops;
      this.rows.set(p.key, row);
      this.spare.push(p.start, p.end);
    }
    this.pending = [];
  }

  /** Print the table to stderr and release the events. */
  report(): void {
    this.fold();
    for (const e of this.spare) e.destroy();
    this.spare.length = 0;
    const rows = [...this.rows.entries()].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((s, [, r]) => s + r.ms, 0);
    const lines = [`GEMM profile (DSV3_GEMM_PROFILE): ${total.toFixed(1)} ms over ${rows.reduce((s, [, r]) => s + r.calls, 0)} calls`,
      `${'ms'.padStart(9)} ${'calls'.padStart(6)} ${'TFLOP/s'.padStart(8)}  problem`];
    for (const [key, r] of rows.slice(0, 60)) {
      lines.push(`${r.ms.toFixed(2).padStart(9)} ${String(r.calls).padStart(6)} ${(r.flops / (r.ms * 1e-3) / 1e12).toFixed(0).padStart(8)}  ${key}`);
    }
    process.stderr.write(lines.join('\n') + '\n');
  }
}
