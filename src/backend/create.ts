// Choosing a backend for `--device`: cpu, cuda, or auto (cuda when a usable GPU is present).

import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu-backend.js';

export type DeviceName = 'cpu' | 'cuda' | 'auto';

export interface BackendOptions {
  device?: DeviceName;
  /** CPU compute precision (default f32); FP64 is for gradient checks. */
  dtype?: 'f32' | 'f64';
}

export async function createBackend(opts: BackendOptions = {}): Promise<Backend> {
  const device = opts.device ?? 'auto';
  if (device === 'cpu' || device === 'auto') return new CpuBackend(opts.dtype ?? 'f32');
  throw new Error('--device cuda: this build has no CUDA backend yet; use --device cpu');
}
