// The weight files of a Hugging Face checkpoint directory, seen as one set of named tensors: either a
// single `model.safetensors` or shards listed by `model.safetensors.index.json`
// ({metadata: {total_size}, weight_map: {name: file}}). Hugging Face prefers the single file when
// both exist, and so do we. Shards are opened (header only) the first time one of their tensors is
// touched, and checked then against the index, so that opening a 700 GB checkpoint costs one stat
// per shard.

import fs from 'node:fs';
import path from 'node:path';
import { INDEX_FILE_NAME, SafetensorsFile, SINGLE_FILE_NAME, type TensorInfo, type TensorReader } from './safetensors.js';

export interface CheckpointReader extends TensorReader {
  readonly dir: string;
  /** The weight files, relative to dir: [model.safetensors] or the shards in name order. */
  files(): string[];
  /** The file holding a tensor. */
  fileOf(name: string): string;
}

/** A shard name must be a plain file name: an index must not point outside its directory. */
function isPlainFileName(file: string): boolean {
  return file.length > 0 && file !== '.' && file !== '..' && !/[\\/]/.test(file);
}

function readIndex(indexPath: string): Map<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new Error(`${indexPath}: not a readable JSON file: ${(err as Error).message}`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new Error(`${indexPath}: has no weight_map object`);
  }
  const fileOf = new Map<string, string>();
  for (const [name, file] of Object.entries(weightMap)) {
    if (typeof file !== 'string' || !isPlainFileName(file)) {
      throw new Error(`${indexPath}: tensor "${name}": weight_map entry ${JSON.stringify(file)} is not a file name in the checkpoint directory`);
    }
    fileOf.set(name, file);
  }
  return fileOf;
}

class CheckpointDirectory implements CheckpointReader {
  constructor(
    readonly dir: string,
    /** Where the tensor-to-file map came from, named in errors about disagreements. */
    private readonly mapSource: string,
    private readonly fileOfName: Map<string, string>,
    /** Files already opened (and checked), by file name. */
    private readonly opened = new Map<string, SafetensorsFile>(),
  ) {}

  names(): string[] {
    return [...this.fileOfName.keys()];
  }

  has(name: string): boolean {
    return this.fileOfName.has(name);
  }

  files(): string[] {
    return [...new Set(this.fileOfName.values())].sort();
  }

  fileOf(name: string): string {
    const file = this.fileOfName.get(name);
    if (file === undefined) throw new Error(`${this.dir}: no tensor named "${name}"`);
    return file;
  }

  /** The file holding `name`, opened and checked against the index on first use. */
  private fileHolding(name: string): SafetensorsFile {
    const file = this.fileOf(name);
    const open = this.opened.get(file);
    if (open) return open;
    const shard = SafetensorsFile.open(path.join(this.dir, file));
    try {
      this.checkAgreement(file, shard);
    } catch (err) {
      shard.close();
      throw err;
    }
    this.opened.set(file, shard);
    return shard;
  }

  private checkAgreement(file: string, shard: SafetensorsFile): void {
    for (const [name, listedFile] of this.fileOfName) {
      if (listedFile === file && !shard.has(name)) {
        throw new Error(`${this.mapSource}: tensor "${name}" is listed in shard "${file}", but ${shard.path} has no tensor of that name`);
      }
    }
    for (const name of shard.names()) {
      const listedFile = this.fileOfName.get(name);
      if (listedFile !== file) {
        const listed = listedFile === undefined ? 'is not listed' : `is listed in shard "${listedFile}"`;
        throw new Error(`${shard.path}: tensor "${name}" is in this shard but ${listed} in ${this.mapSource}`);
      }
    }
  }

  info(name: string): TensorInfo {
    return this.fileHolding(name).info(name);
  }

  readBytes(name: string): Uint8Array {
    return this.fileHolding(name).readBytes(name);
  }

  readFloat32(name: string): Float32Array {
    return this.fileHolding(name).readFloat32(name);
  }

  readFloat64(name: string): Float64Array {
    return this.fileHolding(name).readFloat64(name);
  }

  readInt(name: string): number[] {
    return this.fileHolding(name).readInt(name);
  }

  close(): void {
    for (const shard of this.opened.values()) shard.close();
    this.opened.clear();
  }
}

/** Opens the weight files of a checkpoint directory (see the file comment). */
export function openCheckpoint(dir: string): CheckpointReader {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new Error(`${dir}: checkpoint directory does not exist`);
  }
  if (!stat.isDirectory()) throw new Error(`${dir}: is not a directory`);

  const singlePath = path.join(dir, SINGLE_FILE_NAME);
  if (fs.existsSync(singlePath)) {
    const file = SafetensorsFile.open(singlePath);
    const fileOfName = new Map(file.names().map((name) => [name, SINGLE_FILE_NAME]));
    return new CheckpointDirectory(dir, singlePath, fileOfName, new Map([[SINGLE_FILE_NAME, file]]));
  }
  const indexPath = path.join(dir, INDEX_FILE_NAME);
  if (!fs.existsSync(indexPath)) {
    throw new Error(`${dir}: holds neither ${SINGLE_FILE_NAME} nor ${INDEX_FILE_NAME}`);
  }
  const fileOfName = readIndex(indexPath);
  const checked = new Set<string>();
  for (const [name, file] of fileOfName) {
    if (checked.has(file)) continue;
    checked.add(file);
    if (!fs.statSync(path.join(dir, file), { throwIfNoEntry: false })?.isFile()) {
      throw new Error(`${indexPath}: tensor "${name}": shard file "${file}" does not exist`);
    }
  }
  return new CheckpointDirectory(dir, indexPath, fileOfName);
}
