// The safetensors reader and writer, and checkpoint directories (single file or sharded): round
// trips of every dtype on random data, the byte layout the writer produces, the Hugging Face
// fixture, positional reads of one tensor at a time, and one test per header validation error,
// each checking that the message names the file and the tensor.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { INDEX_FILE_NAME, SafetensorsFile, writeSafetensors, writeShardedSafetensors,
  type TensorToWrite } from '../../src/io/safetensors.js';
import { openCheckpoint } from '../../src/io/checkpoint-files.js';
import { bytesPerElement, decodeToFloat32, decodeToFloat64, encodeFromFloat, isIntegerDType, STORAGE_DTYPES,
  type StorageDType } from '../../src/tensor/dtypes.js';
import { seededRandom, type TestRandom } from '../helpers/random.js';
import { tinyModelDir } from '../shared-paths.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-safetensors-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let dirCount = 0;
function freshDir(): string {
  const dir = path.join(tmpRoot, `case-${dirCount++}`);
  fs.mkdirSync(dir);
  return dir;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Random valid bytes for a tensor: any bit pattern for numbers (NaNs included), 0/1 for BOOL. */
function randomTensor(name: string, dtype: StorageDType, shape: number[], rng: TestRandom): TensorToWrite & { data: Uint8Array } {
  const data = new Uint8Array(numel(shape) * bytesPerElement(dtype));
  for (let i = 0; i < data.length; i++) data[i] = dtype === 'BOOL' ? rng.uint32() & 1 : rng.uint32() & 0xff;
  return { name, dtype, shape, data };
}

function sameFloats(actual: Float32Array | Float64Array, expected: Float32Array | Float64Array, where: string): void {
  assert.equal(actual.length, expected.length, where);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(Object.is(actual[i], expected[i]) || actual[i] === expected[i], `${where}: element ${i}: ${actual[i]} vs ${expected[i]}`);
  }
}

test('every dtype, a 0-dim scalar and an empty tensor round-trip with random data', () => {
  const rng = seededRandom();
  const tensors = STORAGE_DTYPES.map((dtype, i) => randomTensor(`layer.${i}.${dtype.toLowerCase()}`, dtype, [rng.int(1, 5), rng.int(1, 7), 3], rng));
  tensors.push(randomTensor('scalar', 'F32', [], rng));
  tensors.push(randomTensor('empty', 'BF16', [0, 4], rng));
  tensors.push({ name: 'token_ids', dtype: 'I64', shape: [4], data: encodeFromFloat('I64', new Float64Array([-3, 0, 2 ** 40 + 7, rng.int(1, 1e9)])) });
  const file = path.join(freshDir(), 'all.safetensors');
  writeSafetensors(file, tensors, { format: 'pt', note: `seed ${rng.seed}` });

  const reader = SafetensorsFile.open(file);
  try {
    assert.deepEqual(reader.metadata, { format: 'pt', note: `seed ${rng.seed}` });
    assert.deepEqual([...reader.names()].sort(), tensors.map((t) => t.name).sort());
    for (const t of tensors) {
      const where = `seed ${rng.seed}: ${t.name}`;
      assert.deepEqual(reader.info(t.name), { dtype: t.dtype, shape: t.shape, byteLength: t.data.length }, where);
      assert.deepEqual(reader.readBytes(t.name), t.data, where);
      sameFloats(reader.readFloat32(t.name), decodeToFloat32(t.dtype, t.data, numel(t.shape)), where);
      sameFloats(reader.readFloat64(t.name), decodeToFloat64(t.dtype, t.data, numel(t.shape)), where);
      if (isIntegerDType(t.dtype) && t.dtype !== 'I64') {
        assert.deepEqual(reader.readInt(t.name), [...decodeToFloat64(t.dtype, t.data, numel(t.shape))], where);
      }
    }
    assert.equal(reader.readFloat32('scalar').length, 1);
    assert.equal(reader.readFloat32('empty').length, 0);
    assert.deepEqual(reader.readInt('token_ids').slice(0, 3), [-3, 0, 2 ** 40 + 7]);
    assert.throws(() => reader.readInt('scalar'), /all\.safetensors: tensor "scalar": readInt needs an integer dtype/);
  } finally {
    reader.close();
  }
});

test('written files: header padded with spaces to 8 bytes, every tensor aligned to its element size', () => {
  const rng = seededRandom();
  const dir = freshDir();
  for (let trial = 0; trial < 8; trial++) {
    const dtypes: StorageDType[] = ['U8', 'F64', 'F16', 'I32', 'BOOL', 'BF16', 'I64', 'F8_E4M3', 'F32', 'I16'];
    const tensors = dtypes.map((dtype, i) => randomTensor(`t${rng.int(0, 999)}_${i}`, dtype, [rng.int(1, 9), rng.int(1, 3)], rng));
    const file = path.join(dir, `layout-${trial}.safetensors`);
    writeSafetensors(file, tensors, trial % 2 === 0 ? { format: 'pt' } : undefined);
    const bytes = fs.readFileSync(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    assert.equal(headerLength % 8, 0, `seed ${rng.seed}: header length ${headerLength}`);
    const headerText = bytes.subarray(8, 8 + headerLength).toString('utf8');
    const json = headerText.trimEnd();
    assert.ok(/^ *$/.test(headerText.slice(json.length)), 'padding is spaces');
    assert.ok(headerText.length - json.length < 8, 'padding is less than 8 bytes');
    const header = JSON.parse(json) as Record<string, { dtype: StorageDType; data_offsets: [number, number] }>;
    let expectedNext = 0;
    const entries = Object.entries(header).filter(([name]) => name !== '__metadata__')
      .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
    for (const [name, entry] of entries) {
      const [begin, end] = entry.data_offsets;
      assert.equal(begin, expectedNext, `seed ${rng.seed}: ${name} follows without a hole`);
      assert.equal((8 + headerLength + begin) % bytesPerElement(entry.dtype), 0, `seed ${rng.seed}: ${name} (${entry.dtype}) at file offset ${8 + headerLength + begin}`);
      const tensor = tensors.find((t) => t.name === name)!;
      assert.deepEqual(bytes.subarray(8 + headerLength + begin, 8 + headerLength + end), Buffer.from(tensor.data));
      expectedNext = end;
    }
    assert.equal(8 + headerLength + expectedNext, bytes.length, 'no bytes after the last tensor');
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temporary files left');
  }
});

test('reads the Hugging Face fixture: shapes follow config.json', () => {
  const config = JSON.parse(fs.readFileSync(path.join(tinyModelDir, 'config.json'), 'utf8'));
  const d = config.hidden_size;
  const heads = config.num_attention_heads;
  const expected: Record<string, number[]> = {
    'model.embed_tokens.weight': [config.vocab_size, d],
    'lm_head.weight': [config.vocab_size, d],
    'model.norm.weight': [d],
    'model.layers.0.mlp.gate_proj.weight': [config.intermediate_size, d],
    'model.layers.0.self_attn.q_a_proj.weight': [config.q_lora_rank, d],
    'model.layers.0.self_attn.q_b_proj.weight': [heads * (config.qk_nope_head_dim + config.qk_rope_head_dim), config.q_lora_rank],
    'model.layers.1.self_attn.kv_a_proj_with_mqa.weight': [config.kv_lora_rank + config.qk_rope_head_dim, d],
    'model.layers.1.self_attn.kv_b_proj.weight': [heads * (config.qk_nope_head_dim + config.v_head_dim), config.kv_lora_rank],
    'model.layers.2.self_attn.o_proj.weight': [d, heads * config.v_head_dim],
    'model.layers.1.mlp.gate.weight': [config.n_routed_experts, d],
    'model.layers.1.mlp.gate.e_score_correction_bias': [config.n_routed_experts],
    [`model.layers.2.mlp.experts.${config.n_routed_experts - 1}.down_proj.weight`]: [d, config.moe_intermediate_size],
    'model.layers.2.mlp.shared_experts.up_proj.weight': [config.moe_intermediate_size * config.n_shared_experts, d],
  };
  const file = SafetensorsFile.open(path.join(tinyModelDir, 'model.safetensors'));
  try {
    assert.equal(file.metadata.format, 'pt');
    for (const [name, shape] of Object.entries(expected)) {
      const info = file.info(name);
      assert.deepEqual(info.shape, shape, name);
      assert.equal(info.dtype, 'F32', name);
      const values = file.readFloat32(name);
      assert.equal(values.length, numel(shape), name);
      assert.ok(values.every(Number.isFinite) && values.some((v) => v !== 0), `${name} holds finite, non-zero data`);
    }
  } finally {
    file.close();
  }
  const checkpoint = openCheckpoint(tinyModelDir);
  try {
    assert.ok(checkpoint.names().length > 50);
    assert.deepEqual(checkpoint.files(), ['model.safetensors']);
    assert.deepEqual(checkpoint.info('model.norm.weight'), { dtype: 'F32', shape: [d], byteLength: 4 * d });
  } finally {
    checkpoint.close();
  }
});

test('open reads only the header and readBytes reads only its tensor', () => {
  const fixture = path.join(tinyModelDir, 'model.safetensors');
  const fileBytes = fs.statSync(fixture).size;
  const originalReadSync = fs.readSync;
  let bytesRead = 0;
  const counting = ((...args: Parameters<typeof fs.readSync>) => {
    const n = (originalReadSync as (...a: Parameters<typeof fs.readSync>) => number)(...args);
    bytesRead += n;
    return n;
  }) as typeof fs.readSync;
  fs.readSync = counting;
  try {
    const file = SafetensorsFile.open(fixture);
    const headerBytes = bytesRead;
    assert.equal(headerBytes, file.dataStart, 'open reads the length and the JSON header, nothing more');
    bytesRead = 0;
    const name = 'model.layers.1.self_attn.kv_b_proj.weight';
    const bytes = file.readBytes(name);
    assert.equal(bytesRead, file.info(name).byteLength);
    assert.equal(bytes.length, 224 * 32 * 4);
    assert.ok(bytesRead < fileBytes / 20, `read ${bytesRead} of ${fileBytes} bytes`);
    file.close();
  } finally {
    fs.readSync = originalReadSync;
  }
});

test('sharded checkpoints round-trip through the index; rewriting replaces the old files', () => {
  const rng = seededRandom();
  const dir = path.join(freshDir(), 'checkpoint');
  const tensors = Array.from({ length: 9 }, (_, i) =>
    randomTensor(`model.layers.${i}.weight`, (['F32', 'BF16', 'F8_E4M3', 'I64'] as const)[i % 4], [rng.int(2, 40), 8], rng));
  tensors.push(randomTensor('lm_head.weight', 'F32', [64, 16], rng)); // larger than a shard: gets one of its own
  const lazyCalls = new Map<string, number>();
  const lazy: TensorToWrite[] = tensors.map((t) => ({ ...t, data: () => {
    lazyCalls.set(t.name, (lazyCalls.get(t.name) ?? 0) + 1);
    return t.data;
  } }));
  const maxShardBytes = 1024;
  const written = writeShardedSafetensors(dir, lazy, maxShardBytes);
  const shardFiles = written.filter((f) => f !== INDEX_FILE_NAME);
  assert.ok(shardFiles.length >= 3, `seed ${rng.seed}: ${written.join(', ')}`);
  shardFiles.forEach((f, i) => assert.equal(f, `model-${String(i + 1).padStart(5, '0')}-of-${String(shardFiles.length).padStart(5, '0')}.safetensors`));
  assert.ok(written.includes(INDEX_FILE_NAME));
  assert.ok([...lazyCalls.values()].every((n) => n === 1) && lazyCalls.size === tensors.length, 'each lazy tensor produced once');

  const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE_NAME), 'utf8'));
  assert.equal(index.metadata.total_size, tensors.reduce((sum, t) => sum + t.data.length, 0));
  assert.deepEqual(Object.keys(index.weight_map).sort(), tensors.map((t) => t.name).sort());
  for (const file of shardFiles) {
    const shard = SafetensorsFile.open(path.join(dir, file));
    const shardBytes = shard.names().reduce((sum, n) => sum + shard.info(n).byteLength, 0);
    assert.ok(shard.names().length === 1 || shardBytes <= maxShardBytes, `${file} holds ${shardBytes} bytes`);
    shard.close();
  }

  const checkpoint = openCheckpoint(dir);
  try {
    assert.deepEqual(checkpoint.files(), shardFiles);
    for (const t of tensors) {
      assert.equal(checkpoint.fileOf(t.name), index.weight_map[t.name]);
      assert.deepEqual(checkpoint.info(t.name), { dtype: t.dtype, shape: t.shape, byteLength: t.data.length });
      assert.deepEqual(checkpoint.readBytes(t.name), t.data, `seed ${rng.seed}: ${t.name}`);
      sameFloats(checkpoint.readFloat32(t.name), decodeToFloat32(t.dtype, t.data, numel(t.shape)), t.name);
    }
    assert.throws(() => checkpoint.readBytes('nope'), (err: Error) => err.message === `${dir}: no tensor named "nope"`);
  } finally {
    checkpoint.close();
  }

  assert.deepEqual(writeShardedSafetensors(dir, tensors, 1 << 20), ['model.safetensors']);
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors'], 'old shards and index removed');
  const single = openCheckpoint(dir);
  assert.deepEqual(single.readBytes(tensors[3]!.name), tensors[3]!.data);
  single.close();
});

test('an interrupted write leaves neither a partial file nor a temporary one', () => {
  const dir = freshDir();
  const file = path.join(dir, 'model.safetensors');
  writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [2], data: encodeFromFloat('F32', new Float32Array([1, 2])) }]);
  const before = fs.readFileSync(file);
  assert.throws(() => writeSafetensors(file, [
    { name: 'a', dtype: 'F32', shape: [2], data: encodeFromFloat('F32', new Float32Array([3, 4])) },
    { name: 'b', dtype: 'F32', shape: [2], data: () => { throw new Error('conversion failed'); } },
  ]), /conversion failed/);
  assert.deepEqual(fs.readFileSync(file), before, 'the earlier file is untouched');
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
  assert.throws(() => writeSafetensors(path.join(dir, 'x.safetensors'), [{ name: 'a', dtype: 'F32', shape: [3], data: new Uint8Array(8) }]),
    /x\.safetensors: tensor "a": shape \[3\] of F32 needs 12 bytes, data has 8/);
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
});

/** Writes a file from a raw header (object or text) and data section, with an optional forged length. */
function rawFile(name: string, header: unknown, dataBytes: number, forgedHeaderLength?: bigint): string {
  const file = path.join(freshDir(), name);
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(forgedHeaderLength ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([length, json, Buffer.alloc(dataBytes, 7)]));
  return file;
}

/** Asserts that opening `file` fails with a message naming the file, the tensor (if any) and `detail`. */
function assertOpenFails(file: string, tensor: string | null, detail: RegExp): void {
  assert.throws(() => SafetensorsFile.open(file), (err: Error) => {
    assert.ok(err.message.startsWith(`${file}: `), `names the file: ${err.message}`);
    if (tensor !== null) assert.ok(err.message.includes(`tensor "${tensor}"`), `names the tensor: ${err.message}`);
    assert.match(err.message, detail);
    return true;
  });
}

const f32 = (begin: number, count: number) => ({ dtype: 'F32', shape: [count], data_offsets: [begin, begin + 4 * count] });

test('validation: a file too short for the header length', () => {
  const file = path.join(freshDir(), 'short.safetensors');
  fs.writeFileSync(file, Buffer.from([1, 2, 3]));
  assertOpenFails(file, null, /3 bytes, too short/);
});

test('validation: a file truncated inside its data', () => {
  const file = rawFile('truncated.safetensors', { 'a.weight': f32(0, 4), 'b.weight': f32(16, 4) }, 32);
  fs.truncateSync(file, fs.statSync(file).size - 5);
  assertOpenFails(file, 'b.weight', /data_offsets \[16, 32\] lie outside the data section of 27 bytes/);
});

test('validation: header length beyond the end of the file', () => {
  assertOpenFails(rawFile('long.safetensors', { a: f32(0, 1) }, 4, 10_000n), null, /header length 10000 goes beyond the end of the file/);
});

test('validation: header that is not JSON, or not an object', () => {
  assertOpenFails(rawFile('bad-json.safetensors', '{"a": {"dtype": "F32",', 0), null, /header is not valid JSON/);
  assertOpenFails(rawFile('array.safetensors', '[1, 2]', 0), null, /header is not a JSON object/);
});

test('validation: unknown dtype', () => {
  assertOpenFails(rawFile('dtype.safetensors', { 'model.norm.weight': { dtype: 'F4', shape: [2], data_offsets: [0, 1] } }, 1),
    'model.norm.weight', /unknown dtype "F4"/);
});

test('validation: overlapping offsets', () => {
  assertOpenFails(rawFile('overlap.safetensors', { 'a.weight': f32(0, 4), 'model.norm.weight': f32(8, 4) }, 24),
    'model.norm.weight', /data_offsets \[8, 24\] overlap the previous tensor "a.weight" \[0, 16\]/);
});

test('validation: a hole between tensors, and uncovered bytes', () => {
  assertOpenFails(rawFile('hole.safetensors', { 'a.weight': f32(0, 2), 'b.weight': f32(16, 2) }, 24),
    'b.weight', /leave a hole of 8 bytes after the previous tensor "a.weight"/);
  assertOpenFails(rawFile('hole-first.safetensors', { 'a.weight': f32(4, 2) }, 12), 'a.weight', /hole of 4 bytes at the start/);
  assertOpenFails(rawFile('trailing.safetensors', { 'a.weight': f32(0, 2) }, 12), 'a.weight', /4 bytes after the last tensor "a.weight"/);
});

test('validation: offsets out of range', () => {
  assertOpenFails(rawFile('range.safetensors', { 'a.weight': f32(0, 4) }, 8), 'a.weight', /lie outside the data section of 8 bytes/);
  assertOpenFails(rawFile('reversed.safetensors', { 'a.weight': { dtype: 'U8', shape: [0], data_offsets: [4, 2] } }, 4),
    'a.weight', /end before they begin/);
});

test('validation: shape × element size ≠ byte range, and malformed shapes', () => {
  assertOpenFails(rawFile('size.safetensors', { 'a.weight': { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8),
    'a.weight', /shape \[3\] of F32 needs 12 bytes, but data_offsets \[0, 8\] hold 8/);
  assertOpenFails(rawFile('shape.safetensors', { 'a.weight': { dtype: 'U8', shape: [-1], data_offsets: [0, 1] } }, 1),
    'a.weight', /shape \[-1\] is not a list of non-negative integers/);
  assertOpenFails(rawFile('meta.safetensors', { __metadata__: { n: 3 }, a: f32(0, 1) }, 4), null, /__metadata__ is not an object of strings/);
});

test('validation: a missing tensor', () => {
  const file = rawFile('ok.safetensors', { 'a.weight': f32(0, 2) }, 8);
  const reader = SafetensorsFile.open(file);
  assert.throws(() => reader.info('x'), (err: Error) => err.message === `${file}: no tensor named "x"`);
  assert.throws(() => reader.readFloat32('x'), /no tensor named "x"/);
  reader.close();
  assert.throws(() => reader.readBytes('a.weight'), new RegExp(`ok\\.safetensors: tensor "a.weight": the file is closed`));
});

/** A sharded checkpoint of two shards whose index can then be edited. */
function shardedCheckpoint(): { dir: string; index: { weight_map: Record<string, string> } } {
  const rng = seededRandom();
  const dir = path.join(freshDir(), 'ckpt');
  writeShardedSafetensors(dir, [randomTensor('a.weight', 'F32', [8], rng), randomTensor('b.weight', 'F32', [8], rng)], 40);
  return { dir, index: JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE_NAME), 'utf8')) };
}

test('validation: a shard file listed in the index is missing', () => {
  const { dir } = shardedCheckpoint();
  fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
  assert.throws(() => openCheckpoint(dir), (err: Error) =>
    err.message === `${path.join(dir, INDEX_FILE_NAME)}: tensor "b.weight": shard file "model-00002-of-00002.safetensors" does not exist`);
});

test('validation: index and shards disagree', () => {
  const { dir, index } = shardedCheckpoint();
  index.weight_map['c.weight'] = 'model-00002-of-00002.safetensors';
  fs.writeFileSync(path.join(dir, INDEX_FILE_NAME), JSON.stringify(index));
  const checkpoint = openCheckpoint(dir);
  assert.deepEqual(checkpoint.readBytes('a.weight').length, 32, 'the agreeing shard still reads');
  assert.throws(() => checkpoint.info('b.weight'), (err: Error) => {
    assert.ok(err.message.includes(INDEX_FILE_NAME) && err.message.includes('model-00002-of-00002.safetensors'), err.message);
    assert.match(err.message, /tensor "c.weight" is listed in shard "model-00002-of-00002.safetensors", but .* has no tensor of that name/);
    return true;
  });
  checkpoint.close();

  delete index.weight_map['c.weight'];
  index.weight_map['b.weight'] = 'model-00001-of-00002.safetensors';
  fs.writeFileSync(path.join(dir, INDEX_FILE_NAME), JSON.stringify(index));
  const swapped = openCheckpoint(dir);
  assert.throws(() => swapped.readBytes('a.weight'), /tensor "b.weight" is listed in shard "model-00001-of-00002.safetensors", but .*model-00001-of-00002.safetensors has no tensor/);
  swapped.close();

  index.weight_map['b.weight'] = '../elsewhere.safetensors';
  fs.writeFileSync(path.join(dir, INDEX_FILE_NAME), JSON.stringify(index));
  assert.throws(() => openCheckpoint(dir), /tensor "b.weight": weight_map entry "..\/elsewhere.safetensors" is not a file name/);
});

test('validation: checkpoint directory missing or without weights', () => {
  const missing = path.join(tmpRoot, 'does-not-exist');
  assert.throws(() => openCheckpoint(missing), (err: Error) => err.message === `${missing}: checkpoint directory does not exist`);
  const empty = freshDir();
  assert.throws(() => openCheckpoint(empty), (err: Error) =>
    err.message === `${empty}: holds neither model.safetensors nor model.safetensors.index.json`);
});
