// The safetensors format (SPEC §1): an 8-byte little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end)}}, optional string-to-string __metadata__), then
// the tensors' bytes, row-major and little-endian, offsets relative to the start of the data.
//
// Checkpoints are far larger than memory, so the reader only ever reads the header and then one
// tensor at a time with positional reads, and the writer writes one tensor at a time. The header is
// validated completely on open: a file that passes is a file whose every tensor can be read.

import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { bytesPerElement, decodeToFloat32, decodeToFloat64, decodeToIntegers, isIntegerDType, isStorageDType,
  type StorageDType } from '../tensor/dtypes.js';

export interface TensorInfo {
  dtype: StorageDType;
  shape: number[];
  byteLength: number;
}

/** Read access to named tensors, whether they live in one file or across the shards of a checkpoint. */
export interface TensorReader {
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  /** The tensor's raw little-endian bytes. */
  readBytes(name: string): Uint8Array;
  /** Any dtype decoded to float32 (FP8 codes decode to their values, without any block scale). */
  readFloat32(name: string): Float32Array;
  readFloat64(name: string): Float64Array;
  /** Integer dtypes (and BOOL) as exact numbers; I64 beyond ±2^53 is an error. */
  readInt(name: string): number[];
  close(): void;
}

/** safetensors refuses headers above 100 MB; so do we, instead of allocating whatever a corrupt length says. */
const MAX_HEADER_BYTES = 100_000_000;
/** Node reads at most 2 GiB per call; larger tensors take several positional reads. */
const MAX_IO_CHUNK = 1 << 30;

interface TensorEntry {
  name: string;
  dtype: StorageDType;
  shape: number[];
  begin: number;
  end: number;
}

function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function rangeText(e: { begin: number; end: number }): string {
  return `[${e.begin}, ${e.end}]`;
}

function readFully(fd: number, into: Uint8Array, position: number, label: string): void {
  let done = 0;
  while (done < into.length) {
    const n = fs.readSync(fd, into, done, Math.min(into.length - done, MAX_IO_CHUNK), position + done);
    if (n === 0) throw new Error(`${label}: file ended after ${position + done} bytes, expected ${position + into.length}`);
    done += n;
  }
}

function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, MAX_IO_CHUNK), position + done);
  }
}

/** Checks one header entry and returns it typed; every failure names the file and the tensor. */
function parseEntry(label: string, name: string, raw: unknown, dataBytes: number): TensorEntry {
  const fail = (message: string) => new Error(`${label}: tensor "${name}": ${message}`);
  if (!isPlainObject(raw)) throw fail('header entry is not an object');
  const { dtype, shape, data_offsets: offsets } = raw;
  if (!isStorageDType(dtype)) throw fail(`unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)) {
    throw fail(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw fail(`data_offsets [${begin}, ${end}] end before they begin`);
  if (end > dataBytes) throw fail(`data_offsets [${begin}, ${end}] lie outside the data section of ${dataBytes} bytes`);
  const expected = numelOf(shape) * bytesPerElement(dtype);
  if (expected !== end - begin) {
    throw fail(`shape [${shape.join(', ')}] of ${dtype} needs ${expected} bytes, but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

/** The ranges, in data order, must tile the data section exactly: no holes, no overlaps. */
function checkTiling(label: string, entries: TensorEntry[], dataBytes: number): void {
  let previous: TensorEntry | undefined;
  for (const e of entries) {
    const previousEnd = previous?.end ?? 0;
    const fail = (message: string) => new Error(`${label}: tensor "${e.name}": data_offsets ${rangeText(e)} ${message}`);
    if (e.begin < previousEnd) throw fail(`overlap the previous tensor "${previous!.name}" ${rangeText(previous!)}`);
    if (e.begin > previousEnd) {
      throw fail(previous
        ? `leave a hole of ${e.begin - previousEnd} bytes after the previous tensor "${previous.name}" ${rangeText(previous)}`
        : `leave a hole of ${e.begin} bytes at the start of the data section`);
    }
    previous = e;
  }
  const coveredEnd = previous?.end ?? 0;
  if (coveredEnd !== dataBytes) {
    const last = previous ? `after the last tensor "${previous.name}" ${rangeText(previous)}` : 'and no tensors';
    throw new Error(`${label}: the data section has ${dataBytes - coveredEnd} bytes ${last}`);
  }
}

/** One safetensors file opened for reading: the header is parsed and checked, the data stays on disk. */
export class SafetensorsFile implements TensorReader {
  private fd: number | null;
  private readonly entries: Map<string, TensorEntry>;

  private constructor(
    /** The path as given to open(), used in every error message. */
    readonly path: string,
    fd: number,
    /** File offset of the data section: 8 + header length. */
    readonly dataStart: number,
    entries: TensorEntry[],
    readonly metadata: Readonly<Record<string, string>>,
  ) {
    this.fd = fd;
    this.entries = new Map(entries.map((e) => [e.name, e]));
  }

  static open(filePath: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(filePath, 'r');
    } catch (err) {
      throw new Error(`${filePath}: cannot open: ${(err as Error).message}`);
    }
    try {
      const { dataStart, entries, metadata } = SafetensorsFile.readHeader(filePath, fd);
      return new SafetensorsFile(filePath, fd, dataStart, entries, metadata);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  private static readHeader(label: string, fd: number):
    { dataStart: number; entries: TensorEntry[]; metadata: Record<string, string> } {
    const fileBytes = fs.fstatSync(fd).size;
    if (fileBytes < 8) throw new Error(`${label}: file is ${fileBytes} bytes, too short to hold the 8-byte header length`);
    const lengthBytes = new Uint8Array(8);
    readFully(fd, lengthBytes, 0, label);
    const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    if (headerLength > BigInt(fileBytes - 8)) {
      throw new Error(`${label}: header length ${headerLength} goes beyond the end of the file (${fileBytes} bytes)`);
    }
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw new Error(`${label}: header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    const headerBytes = new Uint8Array(Number(headerLength));
    readFully(fd, headerBytes, 8, label);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
    } catch (err) {
      throw new Error(`${label}: header is not valid JSON: ${(err as Error).message}`);
    }
    if (!isPlainObject(header)) throw new Error(`${label}: header is not a JSON object`);

    const dataStart = 8 + headerBytes.length;
    const dataBytes = fileBytes - dataStart;
    let metadata: Record<string, string> = {};
    const entries: TensorEntry[] = [];
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') {
        if (!isPlainObject(raw) || !Object.values(raw).every((v) => typeof v === 'string')) {
          throw new Error(`${label}: __metadata__ is not an object of strings`);
        }
        metadata = raw as Record<string, string>;
      } else {
        entries.push(parseEntry(label, name, raw, dataBytes));
      }
    }
    entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
    checkTiling(label, entries, dataBytes);
    return { dataStart, entries, metadata };
  }

  /** Tensor names in the order of their data. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  private entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path}: no tensor named "${name}"`);
    return e;
  }

  info(name: string): TensorInfo {
    const e = this.entry(name);
    return { dtype: e.dtype, shape: [...e.shape], byteLength: e.end - e.begin };
  }

  readBytes(name: string): Uint8Array {
    const e = this.entry(name);
    if (this.fd === null) throw new Error(`${this.path}: tensor "${name}": the file is closed`);
    const bytes = new Uint8Array(e.end - e.begin);
    readFully(this.fd, bytes, this.dataStart + e.begin, `${this.path}: tensor "${name}"`);
    return bytes;
  }

  /** Runs a decoder on the tensor's bytes, naming the file and tensor if it fails. */
  private decode<T>(name: string, decoder: (dtype: StorageDType, bytes: Uint8Array, count: number) => T): T {
    const e = this.entry(name);
    const bytes = this.readBytes(name);
    try {
      return decoder(e.dtype, bytes, numelOf(e.shape));
    } catch (err) {
      throw new Error(`${this.path}: tensor "${name}": ${(err as Error).message}`);
    }
  }

  readFloat32(name: string): Float32Array {
    return this.decode(name, decodeToFloat32);
  }

  readFloat64(name: string): Float64Array {
    return this.decode(name, decodeToFloat64);
  }

  readInt(name: string): number[] {
    const { dtype } = this.entry(name);
    if (!isIntegerDType(dtype)) throw new Error(`${this.path}: tensor "${name}": readInt needs an integer dtype, this one is ${dtype}`);
    return this.decode(name, decodeToIntegers);
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

/** A tensor to write. `data` may be a function, called once when the tensor's turn comes, so that
 *  a converter never needs more than one tensor's bytes in memory. */
export interface TensorToWrite {
  name: string;
  dtype: StorageDType;
  shape: readonly number[];
  data: Uint8Array | (() => Uint8Array);
}

function declaredByteLength(t: TensorToWrite): number {
  return numelOf(t.shape) * bytesPerElement(t.dtype);
}

function checkTensorsToWrite(label: string, tensors: readonly TensorToWrite[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    const fail = (message: string) => new Error(`${label}: tensor "${t.name}": ${message}`);
    if (t.name === '__metadata__') throw fail('the name is reserved for metadata');
    if (seen.has(t.name)) throw fail('appears twice');
    seen.add(t.name);
    if (!isStorageDType(t.dtype)) throw fail(`unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!t.shape.every(isNonNegativeInteger)) throw fail(`shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
    if (t.data instanceof Uint8Array && t.data.length !== declaredByteLength(t)) {
      throw fail(`shape [${t.shape.join(', ')}] of ${t.dtype} needs ${declaredByteLength(t)} bytes, data has ${t.data.length}`);
    }
  }
}

/**
 * Creates `finalPath` by writing a temporary file in the same directory and renaming it at the end,
 * so an interrupted write never leaves a partial file under the final name.
 */
function writeAtomically(finalPath: string, write: (fd: number) => void): void {
  const dir = path.dirname(finalPath);
  const temporary = path.join(dir, `.${path.basename(finalPath)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(temporary, 'wx');
  try {
    try {
      write(fd);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temporary, finalPath);
  } catch (err) {
    fs.rmSync(temporary, { force: true });
    throw err;
  }
}

/**
 * Writes one safetensors file. Tensors are laid out by element size, largest first, then by name, so
 * every tensor starts at a multiple of its element size (and the padded header keeps the data section
 * 8-byte aligned in the file): a reader can view any tensor in place as a typed array.
 */
export function writeSafetensors(filePath: string, tensors: TensorToWrite[],
  metadata?: Readonly<Record<string, string>>): void {
  checkTensorsToWrite(filePath, tensors);
  if (metadata && !Object.values(metadata).every((v) => typeof v === 'string')) {
    throw new Error(`${filePath}: metadata values must be strings`);
  }
  const ordered = [...tensors].sort((a, b) =>
    bytesPerElement(b.dtype) - bytesPerElement(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const begins: number[] = [];
  let offset = 0;
  for (const t of ordered) {
    const end = offset + declaredByteLength(t);
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, end] };
    begins.push(offset);
    offset = end;
  }
  const json = JSON.stringify(header);
  const headerLength = Math.ceil(Buffer.byteLength(json, 'utf8') / 8) * 8;
  const prefix = Buffer.alloc(8 + headerLength, 0x20);
  prefix.writeBigUInt64LE(BigInt(headerLength), 0);
  prefix.write(json, 8, 'utf8');

  writeAtomically(filePath, (fd) => {
    writeFully(fd, prefix, 0);
    ordered.forEach((t, i) => {
      const bytes = typeof t.data === 'function' ? t.data() : t.data;
      if (bytes.length !== declaredByteLength(t)) {
        throw new Error(`${filePath}: tensor "${t.name}": shape [${t.shape.join(', ')}] of ${t.dtype} needs ${declaredByteLength(t)} bytes, data has ${bytes.length}`);
      }
      writeFully(fd, bytes, prefix.length + begins[i]!);
    });
  });
}

export const SINGLE_FILE_NAME = 'model.safetensors';
export const INDEX_FILE_NAME = 'model.safetensors.index.json';
const SHARD_FILE_PATTERN = /^model-\d{5}-of-\d{5}\.safetensors$/;

function shardFileName(index: number, count: number): string {
  const pad = (n: number) => String(n).padStart(5, '0');
  return `model-${pad(index + 1)}-of-${pad(count)}.safetensors`;
}

/**
 * Writes a checkpoint's tensors into `dir` the way Hugging Face does: one `model.safetensors` when
 * they fit in maxShardBytes, otherwise `model-0000i-of-0000n.safetensors` shards (filled in the given
 * order; a tensor larger than the limit gets a shard of its own) plus `model.safetensors.index.json`.
 * Weight files of an earlier save that this one does not use are removed, so the directory never
 * holds two checkpoints at once. Returns the file names written.
 */
export function writeShardedSafetensors(dir: string, tensors: TensorToWrite[], maxShardBytes: number,
  metadata: Readonly<Record<string, string>> = { format: 'pt' }): string[] {
  if (!(maxShardBytes > 0)) throw new Error(`${dir}: maxShardBytes must be positive, got ${maxShardBytes}`);
  checkTensorsToWrite(dir, tensors);
  const shards: TensorToWrite[][] = [];
  let current: TensorToWrite[] = [];
  let currentBytes = 0;
  for (const t of tensors) {
    const bytes = declaredByteLength(t);
    if (current.length > 0 && currentBytes + bytes > maxShardBytes) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(t);
    currentBytes += bytes;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);

  fs.mkdirSync(dir, { recursive: true });
  let written: string[];
  if (shards.length === 1) {
    writeSafetensors(path.join(dir, SINGLE_FILE_NAME), shards[0]!, metadata);
    written = [SINGLE_FILE_NAME];
  } else {
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    written = shards.map((shard, i) => {
      const file = shardFileName(i, shards.length);
      writeSafetensors(path.join(dir, file), shard, metadata);
      for (const t of shard) {
        weightMap[t.name] = file;
        totalSize += declaredByteLength(t);
      }
      return file;
    });
    const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((name) => [name, weightMap[name]!]));
    const indexJson = JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2) + '\n';
    writeAtomically(path.join(dir, INDEX_FILE_NAME), (fd) => writeFully(fd, Buffer.from(indexJson, 'utf8'), 0));
    written.push(INDEX_FILE_NAME);
  }
  for (const file of fs.readdirSync(dir)) {
    const isWeightFile = file === SINGLE_FILE_NAME || file === INDEX_FILE_NAME || SHARD_FILE_PATTERN.test(file);
    if (isWeightFile && !written.includes(file)) fs.rmSync(path.join(dir, file), { force: true });
  }
  return written;
}
