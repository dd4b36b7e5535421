// CPU checks of the launch machinery: argument packing for cuLaunchKernel (values in 8-byte
// slots, an array of their addresses), the kernel table against the `extern "C"` signatures of
// kernels/*.cu, the architecture names, and where the kernel sources are found from dist/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';
import { KernelArgs, dim3, type KernelArgType } from '../../../src/backend/cuda/launch.js';
import { KERNELS } from '../../../src/backend/cuda/kernels.js';
import { gpuArchitecture, kernelDir, kernelSourceFiles, defaultCacheDir } from '../../../src/backend/cuda/compile.js';
import { repoRoot } from '../../shared-paths.js';

test('kernel arguments are packed one per 8-byte slot, with an array of slot addresses', () => {
  const types: KernelArgType[] = ['ptr', 'i32', 'f32', 'u32', 'i64', 'f64', 'ptr', 'i64'];
  const args = new KernelArgs(types);
  const ptr = 0x7f12_3456_7890; // a device address above 2^32
  args.set([ptr, -5, 1.5, 0xfffffff0, -3, Math.PI, 0, 2 ** 40 + 7]);
  const view = (i: number) => new DataView(args.slotBytes(i).buffer, args.slotBytes(i).byteOffset, 8);
  assert.equal(view(0).getBigUint64(0, true), BigInt(ptr));
  assert.equal(view(1).getInt32(0, true), -5);
  assert.equal(view(2).getFloat32(0, true), 1.5);
  assert.equal(view(3).getUint32(0, true), 0xfffffff0);
  assert.equal(view(4).getBigInt64(0, true), -3n);
  assert.equal(view(5).getFloat64(0, true), Math.PI);
  assert.equal(view(6).getBigUint64(0, true), 0n);
  assert.equal(view(7).getBigInt64(0, true), BigInt(2 ** 40 + 7));

  const { slotsAddress, pointers } = args.layout();
  assert.equal(pointers.length, types.length);
  pointers.forEach((p, i) => assert.equal(p, slotsAddress + BigInt(8 * i)));

  // Read each value back through the pointer array with the C library's memcpy, the way the
  // driver dereferences kernelParams[i].
  const libc = koffi.load('libc.so.6');
  const memcpy = libc.func('void *memcpy(void *dst, uint64_t src, size_t n)');
  for (let i = 0; i < types.length; i++) {
    const out = Buffer.alloc(8);
    memcpy(out, Number(pointers[i]), 8);
    assert.deepEqual([...out], [...args.slotBytes(i)], `slot ${i} through kernelParams[${i}]`);
  }
  assert.throws(() => args.set([1, 2]), /takes 8 arguments, got 2/);
  const none = new KernelArgs([]);
  none.set([]);
  assert.equal(none.layout().pointers.length, 1);
});

test('dim3 fills missing dimensions with 1', () => {
  assert.deepEqual(dim3(7), [7, 1, 1]);
  assert.deepEqual(dim3([7, 2]), [7, 2, 1]);
  assert.deepEqual(dim3([7, 2, 3]), [7, 2, 3]);
});

/** Parse `extern "C" __global__ void name(params)` signatures, expanding the file's #defines. */
function kernelSignatures(source: string): Map<string, KernelArgType[]> {
  const defines = new Map<string, string>();
  for (const m of source.matchAll(/^#define\s+(\w+)\s+(.*)$/gm)) defines.set(m[1]!, m[2]!.trim());
  const out = new Map<string, KernelArgType[]>();
  for (const m of source.matchAll(/extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)/g)) {
    let params = m[2]!;
    for (const [k, v] of defines) params = params.replace(new RegExp(`\\b${k}\\b`, 'g'), v);
    const types = params.split(',').map((p) => p.trim()).filter((p) => p.length > 0).map((p): KernelArgType => {
      if (p.includes('*')) return 'ptr';
      const type = p.replace(/\s+\w+$/, '').replace(/\bconst\b/g, '').trim();
      switch (type) {
        case 'int': return 'i32';
        case 'unsigned': case 'unsigned int': return 'u32';
        case 'float': return 'f32';
        case 'double': return 'f64';
        case 'i64': case 'long long': return 'i64';
        default: throw new Error(`unknown parameter type '${type}' in ${m[1]}`);
      }
    });
    out.set(m[1]!, types);
  }
  return out;
}

test('every kernel in the table exists in its file with the declared parameter types', () => {
  const dir = kernelDir();
  const byFile = new Map<string, Map<string, KernelArgType[]>>();
  for (const [name, spec] of Object.entries(KERNELS)) {
    let sigs = byFile.get(spec.file);
    if (!sigs) {
      sigs = kernelSignatures(readFileSync(join(dir, spec.file), 'utf8'));
      byFile.set(spec.file, sigs);
    }
    const actual = sigs.get(name);
    assert.ok(actual, `${name} is defined in ${spec.file}`);
    assert.deepEqual(actual, [...spec.args], `${name}(${actual.join(', ')})`);
  }
});

test('the multi-tensor kernels are in the table: one launch over a table of tensors, AdamW among them', () => {
  for (const name of ['sum_squares_many', 'scale_many', 'cast_f32_to_bf16_many', 'add_many'] as const) {
    assert.equal(KERNELS[name].file, 'multi-tensor.cu', name);
    assert.deepEqual(KERNELS[name].args.slice(0, 4), ['ptr', 'i32', 'i32', 'i64'], `${name}: table, tensors, chunks, chunkElems`);
  }
  // adamw_many beside adamw_f32, whose arithmetic it shares: table, tensors, chunks, chunkElems;
  // the step's scalars in device memory (hyper = [lr, c1, c2], gradScale, skip); β1, β2, 1 − β1,
  // 1 − β2, eps; momentsBf16, writeCopies (the weight decay, the gradient and moment types and the
  // BF16 copy are per tensor, in the table)
  assert.equal(KERNELS.adamw_many.file, 'optimizer.cu');
  assert.equal(KERNELS.adamw_f32.file, 'optimizer.cu');
  assert.deepEqual([...KERNELS.adamw_many.args], ['ptr', 'i32', 'i32', 'i64', 'ptr', 'ptr', 'ptr', 'f32', 'f32', 'f32', 'f32', 'f32', 'i32', 'i32']);
});

test('architecture names: sm_90a on Hopper, sm_XY elsewhere', () => {
  assert.equal(gpuArchitecture(9, 0), 'sm_90a');
  assert.equal(gpuArchitecture(8, 0), 'sm_80');
  assert.equal(gpuArchitecture(8, 9), 'sm_89');
  assert.equal(gpuArchitecture(10, 0), 'sm_100');
  assert.equal(gpuArchitecture(12, 0), 'sm_120');
});

test('kernel sources are found from the compiled code, and the cache folder follows the environment', () => {
  assert.equal(kernelDir(), join(repoRoot, 'src', 'backend', 'cuda', 'kernels'));
  const files = kernelSourceFiles();
  for (const f of ['elementwise.cu', 'rmsnorm.cu', 'swiglu.cu', 'embedding.cu', 'rope.cu', 'columns.cu', 'router.cu', 'moe.cu', 'attention.cu', 'rmsnorm-backward.cu',
    'swiglu-backward.cu', 'embedding-backward.cu', 'columns-backward.cu', 'attention-backward.cu', 'moe-backward.cu', 'router-backward.cu', 'loss.cu',
    'reduce.cu', 'optimizer.cu', 'multi-tensor.cu', 'fp8-quantize.cu']) assert.ok(files.includes(f), f);
  assert.equal(defaultCacheDir({ DSV3_CACHE_DIR: '/x/y' }), join('/x/y', 'kernels'));
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: '/c' }), join('/c', 'dsv3', 'kernels'));
  assert.match(defaultCacheDir({}), /\.cache\/dsv3\/kernels$/);
});
