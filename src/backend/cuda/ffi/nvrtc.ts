// NVRTC, the CUDA runtime compiler, through koffi: the C signatures used, and one `check`.
// NVRTC needs no GPU, so this binding also works on machines that only have the toolkit.

import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { loadLibrary } from './libraries.js';
import { handleType } from './driver.js';

handleType('nvrtcProgram');

const SIGNATURES = {
  nvrtcGetErrorString: 'const char *nvrtcGetErrorString(int result)',
  nvrtcVersion: 'int nvrtcVersion(_Out_ int *major, _Out_ int *minor)',
  nvrtcCreateProgram:
    'int nvrtcCreateProgram(_Out_ nvrtcProgram *prog, const char *src, const char *name, int numHeaders, const char **headers, const char **includeNames)',
  nvrtcDestroyProgram: 'int nvrtcDestroyProgram(_Inout_ nvrtcProgram *prog)',
  nvrtcCompileProgram: 'int nvrtcCompileProgram(nvrtcProgram prog, int numOptions, const char **options)',
  nvrtcGetProgramLogSize: 'int nvrtcGetProgramLogSize(nvrtcProgram prog, _Out_ size_t *size)',
  nvrtcGetProgramLog: 'int nvrtcGetProgramLog(nvrtcProgram prog, void *log)',
  nvrtcGetCUBINSize: 'int nvrtcGetCUBINSize(nvrtcProgram prog, _Out_ size_t *size)',
  nvrtcGetCUBIN: 'int nvrtcGetCUBIN(nvrtcProgram prog, void *cubin)',
} as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
export type NvrtcApi = { [K in keyof typeof SIGNATURES]: CFunction } & { path: string };

let api: NvrtcApi | undefined;

/** The bound NVRTC API (libnvrtc is located and opened on first use). */
export function nvrtc(): NvrtcApi {
  if (api) return api;
  const { lib, path } = loadLibrary('nvrtc');
  const fns: Record<string, CFunction> = {};
  for (const [name, proto] of Object.entries(SIGNATURES)) fns[name] = lib.func(proto);
  api = { ...(fns as { [K in keyof typeof SIGNATURES]: CFunction }), path };
  return api;
}

/** Throw `Error("nvrtcCompileProgram failed: NVRTC_ERROR_COMPILATION (6)")` unless status is NVRTC_SUCCESS. */
export function check(call: string, status: number): void {
  if (status === 0) return;
  let name = 'NVRTC_ERROR';
  try {
    name = nvrtc().nvrtcGetErrorString(status) ?? name;
  } catch {
    // Keep the generic name.
  }
  throw new Error(`${call} failed: ${name} (${status})`);
}

/** "13.0" */
export function nvrtcVersion(): string {
  const major = [0], minor = [0];
  check('nvrtcVersion', nvrtc().nvrtcVersion(major, minor));
  return `${major[0]}.${minor[0]}`;
}

/**
 * The CUDA include folder that belongs with the NVRTC in use (the one holding cuda_bf16.h), or
 * undefined when there is none: the toolkit's `include` beside its `lib64`, or the wheel's
 * `nvidia/cu13/include` beside `nvidia/cu13/lib`.
 */
export function cudaIncludeDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const candidates: string[] = [];
  const libDir = dirname(nvrtc().path);
  candidates.push(join(libDir, '..', 'include'), join(libDir, '..', '..', 'include'));
  for (const v of ['CUDA_HOME', 'CUDA_PATH']) {
    const root = env[v];
    if (root) candidates.push(join(root, 'include'), join(root, 'targets/x86_64-linux/include'));
  }
  candidates.push('/usr/local/cuda/include', '/usr/local/cuda/targets/x86_64-linux/include');
  return candidates.find((d) => existsSync(join(d, 'cuda_bf16.h')));
}

export interface NvrtcResult {
  cubin: Buffer;
  log: string;
}

function programLog(prog: unknown): string {
  const n = nvrtc();
  const size = [0];
  if (n.nvrtcGetProgramLogSize(prog, size) !== 0 || size[0]! <= 1) return '';
  const buf = Buffer.alloc(size[0]!);
  if (n.nvrtcGetProgramLog(prog, buf) !== 0) return '';
  return buf.toString('utf8', 0, size[0]! - 1).trim();
}

/** Compile one CUDA C++ source to CUBIN; a compile error throws with the NVRTC log. */
export function compileToCubin(source: string, name: string, options: string[]): NvrtcResult {
  const n = nvrtc();
  const prog: unknown[] = [null];
  check('nvrtcCreateProgram', n.nvrtcCreateProgram(prog, source, name, 0, null, null));
  try {
    const status = n.nvrtcCompileProgram(prog[0], options.length, options);
    const log = programLog(prog[0]);
    if (status !== 0) {
      let what = `NVRTC_ERROR (${status})`;
      try {
        what = `${n.nvrtcGetErrorString(status)} (${status})`;
      } catch {
        // Keep the generic name.
      }
      throw new Error(`nvrtcCompileProgram failed for ${name}: ${what}\noptions: ${options.join(' ')}\n${log}`);
    }
    const size = [0];
    check('nvrtcGetCUBINSize', n.nvrtcGetCUBINSize(prog[0], size));
    if (!size[0]) throw new Error(`nvrtcGetCUBINSize returned 0 bytes for ${name}: the architecture option must name a real GPU (sm_XY), not a virtual one`);
    const cubin = Buffer.alloc(size[0]);
    check('nvrtcGetCUBIN', n.nvrtcGetCUBIN(prog[0], cubin));
    return { cubin, log };
  } finally {
    check('nvrtcDestroyProgram', n.nvrtcDestroyProgram(prog));
  }
}

