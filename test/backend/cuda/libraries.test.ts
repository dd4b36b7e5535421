// Library discovery without a GPU: a missing library gives one line that names it, the names
// tried, the folders searched and the fix; present libraries are found under versioned names;
// the toolkit's stub folders are never used.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LIBRARIES, loadLibrary, locateLibrary, mappedPath, pythonSitePackages, type LibrarySpec } from '../../../src/backend/cuda/ffi/libraries.js';
import { withTempDir } from '../../helpers/temp-dir.js';

const fake: LibrarySpec = {
  what: 'the dsv3 test library (libdsv3test)',
  names: ['libdsv3test.so.7', 'libdsv3test.so'],
  wheelDirs: ['nvidia/dsv3test/lib'],
  preferSystem: false,
  fix: 'nothing to install: this library exists only in tests',
};

/** A real shared library on this machine to stand in for a CUDA one (the C library node runs on). */
function someLoadableLibrary(): string {
  const libc = mappedPath('libc.so') ?? mappedPath('libc-');
  assert.ok(libc, 'libc is mapped into this process');
  return libc;
}

test('a missing library gives one line naming it, the names, the folders and the fix', () => {
  withTempDir('dsv3-libs-', (dir) => {
    const err = (() => {
      try {
        locateLibrary(fake, { env: { CUDA_HOME: join(dir, 'cuda'), LD_LIBRARY_PATH: join(dir, 'ld') }, extraDirs: [dir], sitePackages: () => [join(dir, 'site')], noSystemSearch: true, noDefaultDirs: true });
      } catch (e) {
        return e as Error;
      }
      return undefined;
    })();
    assert.ok(err, 'locateLibrary throws');
    const msg = err.message;
    console.log(msg);
    assert.ok(!msg.includes('\n'), 'one line');
    assert.match(msg, /^the dsv3 test library \(libdsv3test\) not found/);
    for (const name of fake.names) assert.ok(msg.includes(name), `names ${name}`);
    for (const d of [dir, join(dir, 'cuda', 'lib64'), join(dir, 'cuda', 'targets/x86_64-linux/lib'), join(dir, 'ld'), join(dir, 'site', 'nvidia/dsv3test/lib')]) {
      assert.ok(msg.includes(d), `lists folder ${d}`);
    }
    assert.ok(msg.includes(fake.fix), 'says how to fix it');
  });
});

test('a library is found by its versioned soname in CUDA_HOME, LD_LIBRARY_PATH or a wheel folder', () => {
  const real = someLoadableLibrary();
  withTempDir('dsv3-libs-', (dir) => {
    mkdirSync(join(dir, 'cuda', 'lib64'), { recursive: true });
    symlinkSync(real, join(dir, 'cuda', 'lib64', 'libdsv3test.so.7'));
    const found = locateLibrary(fake, { env: { CUDA_HOME: join(dir, 'cuda') }, sitePackages: () => [], noSystemSearch: true, noDefaultDirs: true });
    assert.equal(found.path, join(dir, 'cuda', 'lib64', 'libdsv3test.so.7'));
  });
  withTempDir('dsv3-libs-', (dir) => {
    symlinkSync(real, join(dir, 'libdsv3test.so'));
    const found = locateLibrary(fake, { env: { LD_LIBRARY_PATH: `/nonexistent:${dir}` }, sitePackages: () => [], noSystemSearch: true, noDefaultDirs: true });
    assert.equal(found.path, join(dir, 'libdsv3test.so'));
  });
  withTempDir('dsv3-libs-', (dir) => {
    const wheel = join(dir, 'site', 'nvidia', 'dsv3test', 'lib');
    mkdirSync(wheel, { recursive: true });
    symlinkSync(real, join(wheel, 'libdsv3test.so.7'));
    let asked = 0;
    const found = locateLibrary(fake, { env: {}, sitePackages: () => (asked++, [join(dir, 'site')]), noSystemSearch: true, noDefaultDirs: true });
    assert.equal(found.path, join(wheel, 'libdsv3test.so.7'));
    assert.equal(asked, 1);
  });
});

test('python is not asked when an earlier folder has the library', () => {
  const real = someLoadableLibrary();
  withTempDir('dsv3-libs-', (dir) => {
    symlinkSync(real, join(dir, 'libdsv3test.so.7'));
    const found = locateLibrary(fake, { env: {}, extraDirs: [dir], sitePackages: () => assert.fail('site-packages asked for'), noSystemSearch: true, noDefaultDirs: true });
    assert.equal(found.path, join(dir, 'libdsv3test.so.7'));
  });
});

test('stub folders are skipped and unloadable files are reported', () => {
  const real = someLoadableLibrary();
  withTempDir('dsv3-libs-', (dir) => {
    mkdirSync(join(dir, 'stubs'));
    symlinkSync(real, join(dir, 'stubs', 'libdsv3test.so.7'));
    writeFileSync(join(dir, 'libdsv3test.so'), 'not an ELF file');
    const err = (() => {
      try {
        locateLibrary(fake, { env: {}, extraDirs: [join(dir, 'stubs'), dir], sitePackages: () => [], noSystemSearch: true, noDefaultDirs: true });
      } catch (e) {
        return e as Error;
      }
      return undefined;
    })();
    assert.ok(err);
    assert.ok(!err.message.includes('stubs'), 'the stubs folder is not searched');
    assert.match(err.message, /found but failed to load: .*libdsv3test\.so/);
    assert.ok(!err.message.includes('\n'));
  });
});

test('the CUDA library table prefers versioned sonames and names the pip packages', () => {
  for (const spec of Object.values(LIBRARIES)) {
    const bare = spec.names.findIndex((n) => n.endsWith('.so'));
    assert.equal(bare, spec.names.length - 1, `${spec.what}: the bare .so comes last`);
  }
  assert.deepEqual(LIBRARIES.cuda.names, ['libcuda.so.1', 'libcuda.so']);
  assert.ok(LIBRARIES.nvrtc.names.includes('libnvrtc.so.13') && LIBRARIES.nvrtc.names.includes('libnvrtc.so.12'));
  assert.ok(LIBRARIES.cublasLt.names.includes('libcublasLt.so.13') && LIBRARIES.cublasLt.names.includes('libcublasLt.so.12'));
  assert.match(LIBRARIES.nvrtc.fix, /pip install nvidia-cuda-nvrtc/);
  assert.match(LIBRARIES.cublasLt.fix, /pip install nvidia-cublas/);
  assert.match(LIBRARIES.cuda.fix, /driver/);
  for (const w of ['nvidia/cu13/lib', 'nvidia/cuda_nvrtc/lib']) assert.ok(LIBRARIES.nvrtc.wheelDirs.includes(w));
  for (const w of ['nvidia/cu13/lib', 'nvidia/cublas/lib']) assert.ok(LIBRARIES.cublasLt.wheelDirs.includes(w));
  assert.ok(LIBRARIES.nccl.wheelDirs.includes('nvidia/nccl/lib'));
});

test('python site-packages are asked for once', () => {
  const first = pythonSitePackages();
  assert.ok(Array.isArray(first));
  assert.equal(pythonSitePackages(), first, 'cached');
});

test('the real libraries either load or say what is missing', () => {
  for (const id of ['cuda', 'nvrtc', 'cublasLt'] as const) {
    try {
      const lib = loadLibrary(id);
      console.log(`${id}: ${lib.path}`);
      assert.ok(lib.path.length > 0);
    } catch (e) {
      const msg = (e as Error).message;
      console.log(`${id}: ${msg}`);
      assert.ok(msg.startsWith(LIBRARIES[id].what), msg);
      assert.ok(msg.includes(LIBRARIES[id].names[0]!), msg);
      assert.ok(!msg.includes('\n'));
    }
  }
});
