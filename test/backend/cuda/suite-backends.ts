// The backends the shared suites (backend-cases.ts, model-cases.ts) run on: one CudaBackend per
// mode, made when a case first asks for it and disposed after the file's tests, on the GPU
// (backend.gpu.ts, model.gpu.ts) or on the CPU emulator of the kernels (emulated-*.test.ts).

import { after } from 'node:test';
import { CudaContext } from '../../../src/backend/cuda/context.js';
import { CudaBackend } from '../../../src/backend/cuda/cuda-backend.js';
import type { Mode } from './backend-cases.js';
import { emulatedDevice, type EmulatedDevice } from './emulator/emulator.js';
import { openGpu } from './gpu-helpers.js';

export interface SuiteBackends {
  /** false when the backends can be made, else why the suite is skipped. */
  skip: string | false;
  backend: (mode: Mode) => CudaBackend;
}

/** One backend per mode from `make` (`first`: none made before), all disposed after the file's tests, then `afterwards`. */
function backendPerMode(make: (mode: Mode, first: boolean) => CudaBackend, afterwards?: (made: number) => void): (mode: Mode) => CudaBackend {
  const backends = new Map<Mode, CudaBackend>();
  after(() => {
    for (const b of backends.values()) b.dispose();
    afterwards?.(backends.size);
  });
  return (mode) => {
    let b = backends.get(mode);
    if (!b) {
      b = make(mode, backends.size === 0);
      backends.set(mode, b);
    }
    return b;
  };
}

/**
 * Backends on GPU 0: the first takes openGpu's context, each later one a context of its own
 * (dispose() releases a backend's own); openGpu's context is released here when no case ran.
 */
export function gpuBackends(): SuiteBackends {
  const gpu = openGpu();
  const backend = backendPerMode(
    (mode, first) => new CudaBackend(first ? gpu.ctx! : CudaContext.create(0), { dtype: mode }),
    (made) => {
      if (made === 0) gpu.ctx?.dispose();
    },
  );
  return { skip: gpu.skip, backend };
}

/**
 * Backends on the emulated device (its reference GEMM in place of cuBLASLt, no flash attention:
 * those kernels are inline PTX), with the device (undefined when skipped) for its launch record.
 */
export async function emulatedBackends(): Promise<SuiteBackends & { device: EmulatedDevice | undefined }> {
  const device = await emulatedDevice();
  const skip = typeof device === 'string' ? `no CUDA emulator: ${device}` : false;
  if (skip) console.log(`# skipping: ${skip}`);
  const backend = backendPerMode((mode) => {
    if (typeof device === 'string') throw new Error(device);
    return new CudaBackend(device.context(), { dtype: mode, matmul: device.matmul(), flashAttention: false });
  });
  return { skip, backend, device: typeof device === 'string' ? undefined : device };
}
