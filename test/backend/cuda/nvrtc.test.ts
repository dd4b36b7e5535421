// Run-time compilation without a GPU: NVRTC compiles every kernel file for sm_90a with the
// options the backend uses, the disk cache answers the second time, and a broken source fails
// with NVRTC's log. Skipped (saying why) where libnvrtc is not installed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { loadLibrary } from '../../../src/backend/cuda/ffi/libraries.js';
import { nvrtcVersion } from '../../../src/backend/cuda/ffi/nvrtc.js';
import { clearKernelMemoryCache, compileKernelFile, compileSource, kernelSourceFiles } from '../../../src/backend/cuda/compile.js';
import { withTempDir } from '../../helpers/temp-dir.js';

let skip: string | false = false;
try {
  loadLibrary('nvrtc');
} catch (e) {
  skip = `libnvrtc not available (${(e as Error).message.split(': tried')[0]})`;
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

/** `body` with an empty kernel cache folder and no CUBIN in memory (before or after). */
function withCacheDir(body: (dir: string) => void): void {
  withTempDir('dsv3-kernel-cache-', (dir) => {
    clearKernelMemoryCache();
    try {
      body(dir);
    } finally {
      clearKernelMemoryCache();
    }
  });
}

test('NVRTC compiles every kernel file for sm_90a', { skip }, () => {
  console.log(`NVRTC ${nvrtcVersion()}`);
  withCacheDir((cacheDir) => {
    const files = kernelSourceFiles();
    assert.ok(files.length >= 9);
    for (const file of files) {
      const t0 = performance.now();
      const k = compileKernelFile(file, { arch: 'sm_90a', cacheDir });
      console.log(`${file}: ${k.cubin.length} bytes of CUBIN in ${(performance.now() - t0).toFixed(0)} ms`);
      assert.equal(k.source, 'nvrtc');
      assert.deepEqual([...k.cubin.subarray(0, 4)], ELF_MAGIC, `${file} gives an ELF CUBIN`);
      assert.ok(k.options.includes('--gpu-architecture=sm_90a'));
      assert.ok(k.options.includes('-std=c++17'));
      assert.ok(!k.options.includes('--use_fast_math'));
    }
    assert.equal(readdirSync(cacheDir).filter((f) => f.endsWith('.cubin')).length, files.length);
  });
});

test('the second compile of a file comes from memory, then from the disk cache', { skip }, () => {
  withCacheDir((cacheDir) => {
    const first = compileKernelFile('rmsnorm.cu', { arch: 'sm_90a', cacheDir });
    assert.equal(first.source, 'nvrtc');
    const again = compileKernelFile('rmsnorm.cu', { arch: 'sm_90a', cacheDir });
    assert.equal(again.source, 'memory');
    clearKernelMemoryCache();
    const fromDisk = compileKernelFile('rmsnorm.cu', { arch: 'sm_90a', cacheDir });
    assert.equal(fromDisk.source, 'disk');
    assert.equal(fromDisk.key, first.key);
    assert.ok(fromDisk.cubin.equals(first.cubin));
    // Other options are another key.
    const other = compileKernelFile('rmsnorm.cu', { arch: 'sm_90a', cacheDir, fastMath: true });
    assert.equal(other.source, 'nvrtc');
    assert.notEqual(other.key, first.key);
    assert.ok(other.options.includes('--use_fast_math'));
  });
});

test('a compile error throws with the NVRTC log', { skip }, () => {
  withCacheDir((cacheDir) => {
    const broken = '#include "common.cuh"\nextern "C" __global__ void broken(float* y) { y[0] = undefined_identifier_dsv3; }\n';
    assert.throws(() => compileSource('broken.cu', broken, { arch: 'sm_90a', cacheDir }), (e: Error) => {
      console.log(e.message);
      assert.match(e.message, /nvrtcCompileProgram failed for broken\.cu: NVRTC_ERROR_COMPILATION \(6\)/);
      assert.match(e.message, /undefined_identifier_dsv3/);
      assert.match(e.message, /error/);
      return true;
    });
    assert.equal(readdirSync(cacheDir).length, 0, 'nothing cached');
  });
});
