// Loading a Hugging Face DeepSeek checkpoint directory into a model: config.json, then every
// tensor by name, one at a time, FP8 blocks dequantized on the way, with a check at the end
// that every tensor of the checkpoint was used (nanoGPT's from_pretrained does the same).

import fs from 'node:fs';
import path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { dequantizeWeightBlocks128 } from '../fp8/quantize.js';
import { openCheckpoint, type CheckpointReader } from '../io/checkpoint-files.js';
import { shapeString, type Tensor } from '../tensor/tensor.js';
import { parseConfig, type ModelConfig } from './config.js';
import { DeepseekV3 } from './model.js';
import { ParameterSet, type ParameterSource } from './parameters.js';

export function readConfig(dir: string): ModelConfig {
  if (!fs.existsSync(dir)) throw new Error(`model directory ${dir} does not exist`);
  if (!fs.statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new Error(`${dir} has no config.json`);
  return readConfigFile(file);
}

/** Parse one config.json file. */
export function readConfigFile(file: string): ModelConfig {
  if (!fs.existsSync(file)) throw new Error(`config file ${file} does not exist`);
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseConfig(json, file);
}

export class CheckpointParameters implements ParameterSource {
  private readonly used = new Set<string>();
  private readonly names: Set<string>;

  constructor(private readonly checkpoint: CheckpointReader, private readonly backend: Backend, private readonly label: string) {
    this.names = new Set(checkpoint.names());
  }

  has(name: string): boolean {
    return this.names.has(name);
  }

  /** Host values of a tensor as FP32, dequantizing FP8 blocks with their weight_scale_inv. */
  readHost(name: string, shape: readonly number[]): Float32Array {
    if (!this.names.has(name)) throw new Error(`${this.label}: missing tensor "${name}" (expected shape ${shapeString(shape)})`);
    const info = this.checkpoint.info(name);
    if (info.shape.length !== shape.length || info.shape.some((s, i) => s !== shape[i])) {
      throw new Error(`${this.label}: tensor "${name}" has shape ${shapeString(info.shape)}, expected ${shapeString(shape)}`);
    }
    this.used.add(name);
    if (info.dtype !== 'F8_E4M3') return this.checkpoint.readFloat32(name);
    const scaleName = `${name}_scale_inv`;
    if (!this.names.has(scaleName) || shape.length !== 2) {
      throw new Error(`${this.label}: FP8 tensor "${name}" needs a 2-D weight with a companion "${scaleName}"`);
    }
    const [rows, cols] = shape;
    const scaleShape = [Math.ceil(rows / 128), Math.ceil(cols / 128)];
    const scaleInfo = this.checkpoint.info(scaleName);
    if (scaleInfo.shape.length !== 2 || scaleInfo.shape[0] !== scaleShape[0] || scaleInfo.shape[1] !== scaleShape[1]) {
      throw new Error(`${this.label}: tensor "${scaleName}" has shape ${shapeString(scaleInfo.shape)}, expected ${shapeString(scaleShape)}`);
    }
    this.used.add(scaleName);
    return dequantizeWeightBlocks128(this.checkpoint.readBytes(name), this.checkpoint.readFloat32(scaleName), rows, cols);
  }

  get(name: string, shape: readonly number[]): Tensor {
    return this.backend.upload(this.readHost(name, shape), shape);
  }

  /** Mark tensors as accounted for without loading them (the MTP modules' copies of shared weights). */
  markUsed(name: string): void {
    if (this.names.has(name)) this.used.add(name);
  }

  /** Checkpoint tensors nothing asked for. */
  unused(): string[] {
    return [...this.names].filter((n) => !this.used.has(n));
  }
}

export interface LoadedModel {
  model: DeepseekV3;
  config: ModelConfig;
}

/**
 * Load config.json and the weights of `dir` onto `backend`. MTP modules are loaded when the
 * checkpoint has them (Hugging Face checkpoints saved by transformers do not).
 */
export function loadPretrained(dir: string, backend: Backend): LoadedModel {
  const config = readConfig(dir);
  const checkpoint = openCheckpoint(dir);
  try {
    const source = new CheckpointParameters(checkpoint, backend, dir);
    const withMtp = config.numNextnPredictLayers > 0 && source.has(`model.layers.${config.numHiddenLayers}.eh_proj.weight`);
    const model = new DeepseekV3(backend, config, new ParameterSet(source), withMtp);
    for (const m of model.mtp) {
      source.markUsed(`${m.prefix}.embed_tokens.weight`);
      source.markUsed(`${m.prefix}.shared_head.head.weight`);
    }
    const unused = source.unused();
    if (unused.length > 0) {
      throw new Error(`${dir}: ${unused.length} checkpoint tensor(s) not used by the model, e.g. "${unused.slice(0, 3).join('", "')}"`);
    }
    return { model, config };
  } finally {
    checkpoint.close();
  }
}
