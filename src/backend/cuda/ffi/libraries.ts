// Finding the CUDA shared libraries (DESIGN §2). No native build step: koffi opens the
// libraries directly, so we look where CUDA lives on real machines — CUDA_HOME/CUDA_PATH,
// LD_LIBRARY_PATH, the dynamic loader's own cache, the usual system folders and the lib
// folders of Python's `nvidia-*` wheels — and when nothing loads, say exactly what is missing.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';

export type CudaLibraryId = 'cuda' | 'nvrtc' | 'cublasLt' | 'nccl';

export interface LibrarySpec {
  /** Human name used in messages ("the CUDA driver (libcuda)"). */
  what: string;
  /** File names to try, most preferred first; versioned sonames before the bare .so. */
  names: string[];
  /** Sub-folders of a Python site-packages folder holding wheel-installed copies. */
  wheelDirs: string[];
  /** Try the loader's own search (ld.so.cache, LD_LIBRARY_PATH) before explicit folders. */
  preferSystem: boolean;
  /** How to make the library available. */
  fix: string;
}

export const LIBRARIES: Record<CudaLibraryId, LibrarySpec> = {
  cuda: {
    what: 'the CUDA driver API (libcuda)',
    names: ['libcuda.so.1', 'libcuda.so'],
    wheelDirs: [],
    preferSystem: true,
    fix: 'install the NVIDIA GPU driver (libcuda.so.1 ships with the driver, not with the CUDA toolkit); in a container, start it with the NVIDIA container runtime (docker run --gpus all)',
  },
  nvrtc: {
    what: 'NVRTC, the CUDA runtime compiler (libnvrtc)',
    names: ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so'],
    wheelDirs: ['nvidia/cu13/lib', 'nvidia/cuda_nvrtc/lib', 'nvidia/cu12/lib'],
    preferSystem: false,
    fix: 'install the CUDA toolkit (12.x or 13.x) and set CUDA_HOME, or `pip install nvidia-cuda-nvrtc nvidia-cublas` (CUDA 13 wheels; the older names nvidia-cuda-nvrtc-cu13 nvidia-cublas-cu13 also work, nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12 for CUDA 12)',
  },
  cublasLt: {
    what: 'cuBLASLt (libcublasLt)',
    names: ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so'],
    wheelDirs: ['nvidia/cu13/lib', 'nvidia/cublas/lib', 'nvidia/cu12/lib'],
    preferSystem: false,
    fix: 'install the CUDA toolkit (12.9 or newer for FP8 block scaling) and set CUDA_HOME, or `pip install nvidia-cublas nvidia-cuda-nvrtc` (CUDA 13 wheels; the older names nvidia-cublas-cu13 nvidia-cuda-nvrtc-cu13 also work)',
  },
  nccl: {
    what: 'NCCL (libnccl)',
    names: ['libnccl.so.2', 'libnccl.so'],
    wheelDirs: ['nvidia/nccl/lib', 'nvidia/cu13/lib'],
    preferSystem: false,
    fix: 'install NCCL (the libnccl2 package from NVIDIA\'s repository) or `pip install nvidia-nccl-cu13`',
  },
};

export interface LoadedLibrary {
  lib: koffi.IKoffiLib;
  /** The file that was opened (resolved through /proc/self/maps when the loader found it). */
  path: string;
}

export interface LocateOptions {
  /** Environment to read CUDA_HOME, CUDA_PATH and LD_LIBRARY_PATH from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Python site-packages folders; default: asked from `python3` once, lazily. */
  sitePackages?: () => string[];
  /** Extra folders searched first (tests). */
  extraDirs?: string[];
  /** Skip the loader's own search by bare soname (tests, so a system copy cannot be found). */
  noSystemSearch?: boolean;
  /** Skip the built-in system folders (tests). */
  noDefaultDirs?: boolean;
}

const SYSTEM_DIRS = [
  '/usr/local/cuda/lib64',
  '/usr/local/cuda/targets/x86_64-linux/lib',
  '/usr/local/cuda/targets/sbsa-linux/lib',
  '/usr/lib/x86_64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/usr/lib64',
  '/usr/lib',
  '/usr/local/lib',
  '/usr/local/nvidia/lib64',
  '/usr/local/nvidia/lib',
  '/usr/lib/wsl/lib',
];

function cudaRootDirs(env: NodeJS.ProcessEnv): string[] {
  const dirs: string[] = [];
  for (const v of ['CUDA_HOME', 'CUDA_PATH']) {
    const root = env[v];
    if (!root) continue;
    dirs.push(join(root, 'lib64'), join(root, 'lib'), join(root, 'targets/x86_64-linux/lib'), join(root, 'targets/sbsa-linux/lib'));
  }
  return dirs;
}

function ldLibraryDirs(env: NodeJS.ProcessEnv): string[] {
  return (env.LD_LIBRARY_PATH ?? '').split(':').filter((d) => d.length > 0);
}

let pythonSitePackagesCache: string[] | undefined;

/** site-packages folders of `python3` (asked once per process, 3 s at most; [] when there is no python3). */
export function pythonSitePackages(): string[] {
  if (pythonSitePackagesCache) return pythonSitePackagesCache;
  const script = 'import site,sys\nd=list(site.getsitepackages())\ntry:\n d.append(site.getusersitepackages())\nexcept Exception:\n pass\nprint("\\n".join(d))';
  try {
    const out = execFileSync('python3', ['-c', script], { timeout: 3000, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    pythonSitePackagesCache = out.split('\n').map((s) => s.trim()).filter((s) => s.length > 0);
  } catch {
    pythonSitePackagesCache = [];
  }
  return pythonSitePackagesCache;
}

/** Drop duplicates and the toolkit's `stubs` folders, whose libcuda only answers CUDA_ERROR_STUB_LIBRARY. */
function cleanDirs(dirs: string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const d of dirs) {
    const norm = d.replace(/\/+$/, '');
    if (norm.length === 0 || seen.has(norm) || /(^|\/)stubs$/.test(norm)) continue;
    seen.add(norm);
    out.push(norm);
  }
  return out;
}

/** The path the loader actually mapped for a library whose file name starts with `stem`. */
export function mappedPath(stem: string): string | undefined {
  try {
    const maps = readFileSync('/proc/self/maps', 'utf8');
    for (const line of maps.split('\n')) {
      const slash = line.indexOf('/');
      if (slash < 0) continue;
      const path = line.slice(slash);
      const base = path.slice(path.lastIndexOf('/') + 1);
      if (base.startsWith(stem)) return path;
    }
  } catch {
    // Not Linux: fall through.
  }
  return undefined;
}

function soStem(name: string): string {
  const i = name.indexOf('.so');
  return i < 0 ? name : name.slice(0, i + 3);
}

/** Open the first loadable candidate of `spec`, or throw one Error saying what is missing and how to fix it. */
export function locateLibrary(spec: LibrarySpec, options: LocateOptions = {}): LoadedLibrary {
  const env = options.env ?? process.env;
  const failures: string[] = [];
  const tryPath = (path: string): LoadedLibrary | undefined => {
    try {
      const lib = koffi.load(path);
      return { lib, path };
    } catch (e) {
      failures.push(`${path}: ${(e as Error).message.split('\n')[0]}`);
      return undefined;
    }
  };
  const trySystem = (): LoadedLibrary | undefined => {
    for (const name of spec.names) {
      try {
        const lib = koffi.load(name);
        return { lib, path: mappedPath(soStem(name)) ?? name };
      } catch {
        // Not known to the loader under this name.
      }
    }
    return undefined;
  };
  const tryDirs = (dirs: string[]): LoadedLibrary | undefined => {
    for (const dir of dirs) {
      for (const name of spec.names) {
        const path = join(dir, name);
        if (!existsSync(path)) continue;
        const found = tryPath(path);
        if (found) return found;
      }
    }
    return undefined;
  };

  const searched: string[] = [];
  const first = cleanDirs([...(options.extraDirs ?? []), ...cudaRootDirs(env), ...ldLibraryDirs(env)]);
  searched.push(...first);
  if (spec.preferSystem && !options.noSystemSearch) {
    const found = trySystem();
    if (found) return found;
  }
  let found = tryDirs(first);
  if (found) return found;
  if (!spec.preferSystem && !options.noSystemSearch) {
    found = trySystem();
    if (found) return found;
  }
  if (!options.noDefaultDirs) {
    const system = cleanDirs(SYSTEM_DIRS).filter((d) => !searched.includes(d));
    searched.push(...system);
    found = tryDirs(system);
    if (found) return found;
  }
  if (spec.wheelDirs.length > 0) {
    const sites = (options.sitePackages ?? pythonSitePackages)();
    const wheels = cleanDirs(sites.flatMap((s) => spec.wheelDirs.map((w) => join(s, w)))).filter((d) => !searched.includes(d));
    searched.push(...wheels);
    found = tryDirs(wheels);
    if (found) return found;
  }
  const loaderNote = options.noSystemSearch ? '' : ' and the dynamic loader\'s default search path';
  const failed = failures.length > 0 ? `; found but failed to load: ${failures.join('; ')}` : '';
  throw new Error(
    `${spec.what} not found: tried ${spec.names.join(', ')} in ${searched.length > 0 ? searched.join(', ') : '(no folders)'}${loaderNote}${failed}. ` +
      `To fix: ${spec.fix}; or point CUDA_HOME or LD_LIBRARY_PATH at the folder that holds it.`,
  );
}

const loaded = new Map<CudaLibraryId, LoadedLibrary>();

/** Load one of the CUDA libraries once per process. */
export function loadLibrary(id: CudaLibraryId): LoadedLibrary {
  let lib = loaded.get(id);
  if (!lib) {
    lib = locateLibrary(LIBRARIES[id]);
    loaded.set(id, lib);
  }
  return lib;
}

/** Paths of the CUDA libraries loaded so far (for `dsv3 info`). */
export function loadedLibraryPaths(): Partial<Record<CudaLibraryId, string>> {
  const out: Partial<Record<CudaLibraryId, string>> = {};
  for (const [id, lib] of loaded) out[id] = lib.path;
  return out;
}
