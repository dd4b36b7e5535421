// Choosing a backend for `--device`: cpu, cuda, or auto (cuda when a usable GPU is present).

import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu-backend.js';

export type DeviceName = 'cpu' | 'cuda' | 'auto';

export interface BackendOptions {
  device?: DeviceName;
  /**
   * Compute precision. CPU: f32 (default) or f64 (gradient checks). CUDA: bf16 (default; BF16
   * activations, FP32 master weights, gradients and moments) or f32 (everything FP32).
   */
  dtype?: 'f32' | 'f64' | 'bf16';
  /**
   * CUDA in BF16: dtype of uploaded and zero-initialised tensors (default f32, what training
   * needs; bf16 halves the memory of inference, which keeps no gradients or optimizer state).
   */
  storageDType?: 'f32' | 'bf16';
}

/**
 * `device: 'cuda'` fails with the one-line reason when there is no usable GPU (a missing library,
 * no device); `auto` takes the GPU when the driver, NVRTC and cuBLASLt load and a device exists,
 * and the CPU otherwise, silently.
 */
export async function createBackend(opts: BackendOptions = {}): Promise<Backend> {
  const device = opts.device ?? 'auto';
  if (device === 'cpu') return cpuBackend(opts);
  if (device === 'cuda') {
    try {
      return await cudaBackend(opts);
    } catch (e) {
      throw new Error(`--device cuda: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (opts.dtype === 'f64') return cpuBackend(opts);
  try {
    return await cudaBackend(opts);
  } catch (e) {
    if (opts.dtype === 'bf16') throw new Error(`--device auto: bf16 needs a GPU, and none is usable (${(e as Error).message.split('\n')[0]})`);
    return cpuBackend(opts);
  }
}

function cpuBackend(opts: BackendOptions): Backend {
  if (opts.dtype === 'bf16') throw new Error('--device cpu computes in f32 or f64, not bf16');
  return new CpuBackend(opts.dtype ?? 'f32');
}

async function cudaBackend(opts: BackendOptions): Promise<Backend> {
  if (opts.dtype === 'f64') throw new Error('the CUDA backend computes in bf16 or f32, not f64');
  // Loaded only when a GPU is asked for: the CPU path never touches the CUDA bindings.
  const { CudaContext } = await import('./cuda/context.js');
  const { nvrtcVersion } = await import('./cuda/ffi/nvrtc.js');
  const { CudaBackend } = await import('./cuda/cuda-backend.js');
  const ctx = CudaContext.create(0);
  try {
    // Kernels compile on first use: find NVRTC now, so a missing one is reported here and not mid-run.
    nvrtcVersion();
    return new CudaBackend(ctx, { dtype: opts.dtype ?? 'bf16', storageDType: opts.storageDType });
  } catch (e) {
    ctx.dispose();
    throw e;
  }
}
