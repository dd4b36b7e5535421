// Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD).

export interface ScheduleConfig {
  kind: 'cosine' | 'wsd';
  peakLr: number;
  minLr: number;
  warmupSteps: number;
  totalSteps: number;
  /** WSD only: the fraction of steps, at the end, over which the rate falls linearly to minLr. */
  decayFraction: number;
}

/** Learning rate of 1-based step `step`. */
export function learningRate(s: ScheduleConfig, step: number): number {
  if (s.warmupSteps > 0 && step <= s.warmupSteps) return (s.peakLr * step) / s.warmupSteps;
  const after = Math.max(0, s.totalSteps - s.warmupSteps);
  const t = after === 0 ? 1 : Math.min(1, (step - s.warmupSteps) / after);
  if (s.kind === 'cosine') return s.minLr + 0.5 * (s.peakLr - s.minLr) * (1 + Math.cos(Math.PI * t));
  const decayStart = 1 - s.decayFraction;
  if (t <= decayStart) return s.peakLr;
  return s.peakLr + (s.minLr - s.peakLr) * ((t - decayStart) / s.decayFraction);
}
