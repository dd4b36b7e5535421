// Training checkpoints: a Hugging Face directory (config.json, model.safetensors, tokenizer
// files) plus trainer_state.safetensors (AdamW moments, step, data position, options), written
// under a temporary name and renamed into place, then published through the `latest` file
// (itself replaced by rename). An interrupted write never touches the previous checkpoint.

import fs from 'node:fs';
import path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { SafetensorsFile, writeShardedSafetensors, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { configToJson } from '../model/config.js';
import type { DeepseekV3 } from '../model/model.js';
import type { Tensor } from '../tensor/tensor.js';
import { encodeFromFloat, type StorageDType } from '../tensor/dtypes.js';
import type { OptimizerState } from './optimizer.js';

export const TRAINER_STATE_FILE = 'trainer_state.safetensors';
const LATEST_FILE = 'latest';
/** Shard model.safetensors above this size, as Hugging Face does. */
const MAX_SHARD_BYTES = 4 * 1024 ** 3;

/** Everything besides tensors that a resumed run needs, stored as JSON in the state file's metadata. */
export interface TrainerMeta {
  step: number;
  /** The data sampler's position (epoch, cursor, seed). */
  data: unknown;
  /** The options the run was started with. */
  options: unknown;
  /** Tokens consumed so far. */
  tokens: number;
}

function tensorEntry(b: Backend, name: string, t: Tensor, dtype: StorageDType): TensorToWrite {
  return { name, dtype, shape: [...t.shape], data: () => encodeFromFloat(dtype, b.download(t)) };
}

/** The model's tensors under their Hugging Face names, MTP modules with their copies of the shared embedding and head. */
export function modelTensors(model: DeepseekV3): TensorToWrite[] {
  const b = model.backend;
  const entries = model.params.all().map((p) => tensorEntry(b, p.name, p.value, 'F32'));
  for (const m of model.mtp) {
    entries.push(tensorEntry(b, `${m.prefix}.embed_tokens.weight`, model.embedTokens.value, 'F32'));
    entries.push(tensorEntry(b, `${m.prefix}.shared_head.head.weight`, model.lmHead.weight.value, 'F32'));
  }
  return entries;
}

/** Write a Hugging Face model directory (config, weights, tokenizer files) into `dir`, which must exist. */
export function writeModelDirectory(dir: string, model: DeepseekV3, tokenizerFiles: string[], onTensor?: (name: string) => void): void {
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(configToJson(model.config), null, 2) + '\n');
  const c = model.config;
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenIds[0] ?? null }, null, 2) + '\n');
  const tensors = modelTensors(model).map((t) => ({
    ...t,
    data: () => {
      const bytes = (t.data as () => Uint8Array)();
      onTensor?.(t.name);
      return bytes;
    },
  }));
  writeShardedSafetensors(dir, tensors, MAX_SHARD_BYTES);
  for (const file of tokenizerFiles) fs.copyFileSync(file, path.join(dir, path.basename(file)));
}

export interface SaveOptions {
  /** Keep this many complete checkpoints (the newest); older ones are deleted after a save. */
  keep: number;
  /** Called after each tensor is written (progress, and the tests' simulated crash). */
  onTensor?: (name: string) => void;
}

/** Save checkpoint-{step} under `outDir` and point `latest` at it; returns its directory. */
export function saveCheckpoint(outDir: string, model: DeepseekV3, optimizer: OptimizerState, meta: TrainerMeta, tokenizerFiles: string[], momentsDtype: 'f32' | 'bf16', opts: SaveOptions): string {
  const b = model.backend;
  fs.mkdirSync(outDir, { recursive: true });
  const name = `checkpoint-${String(meta.step).padStart(6, '0')}`;
  const final = path.join(outDir, name);
  const tmp = path.join(outDir, `.${name}.tmp-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  writeModelDirectory(tmp, model, tokenizerFiles, opts.onTensor);
  const dtype: StorageDType = momentsDtype === 'bf16' ? 'BF16' : 'F32';
  const state: TensorToWrite[] = [];
  for (const [param, m] of optimizer.m) state.push(tensorEntry(b, `optimizer.m.${param}`, m, dtype));
  for (const [param, v] of optimizer.v) state.push(tensorEntry(b, `optimizer.v.${param}`, v, dtype));
  writeSafetensors(path.join(tmp, TRAINER_STATE_FILE), state, { trainer: JSON.stringify(meta), optimizer_step: String(optimizer.step) });
  fs.rmSync(final, { recursive: true, force: true });
  fs.renameSync(tmp, final);
  const latestTmp = path.join(outDir, `.${LATEST_FILE}.tmp-${process.pid}`);
  fs.writeFileSync(latestTmp, name + '\n');
  fs.renameSync(latestTmp, path.join(outDir, LATEST_FILE));
  const old = fs.readdirSync(outDir).filter((f) => /^checkpoint-\d+$/.test(f)).sort();
  for (const stale of old.slice(0, Math.max(0, old.length - opts.keep))) fs.rmSync(path.join(outDir, stale), { recursive: true, force: true });
  return final;
}

/** The checkpoint directory `dir` names: itself when it holds a trainer state, else the one its `latest` file points at. */
export function resolveCheckpoint(dir: string): string {
  if (!fs.existsSync(dir)) throw new Error(`checkpoint directory ${dir} does not exist`);
  if (fs.existsSync(path.join(dir, TRAINER_STATE_FILE))) return dir;
  const latest = path.join(dir, LATEST_FILE);
  if (!fs.existsSync(latest)) throw new Error(`${dir} holds no checkpoint (no ${TRAINER_STATE_FILE} and no ${LATEST_FILE} file)`);
  const target = path.join(dir, fs.readFileSync(latest, 'utf8').trim());
  if (!fs.existsSync(path.join(target, TRAINER_STATE_FILE))) throw new Error(`${latest} points at ${target}, which holds no ${TRAINER_STATE_FILE}`);
  return target;
}

/** The trainer metadata of a checkpoint, without its tensors. */
export function readTrainerMeta(dir: string): TrainerMeta {
  const file = SafetensorsFile.open(path.join(dir, TRAINER_STATE_FILE));
  try {
    const raw = file.metadata.trainer;
    if (!raw) throw new Error(`${file.path}: no trainer metadata`);
    return JSON.parse(raw) as TrainerMeta;
  } finally {
    file.close();
  }
}

/** Read a checkpoint's trainer state: the metadata, and the moments loaded into `optimizer`. */
export function loadTrainerState(dir: string, b: Backend, optimizer: OptimizerState): TrainerMeta {
  const meta = readTrainerMeta(dir);
  const file = SafetensorsFile.open(path.join(dir, TRAINER_STATE_FILE));
  try {
    for (const [kind, moments] of [['m', optimizer.m], ['v', optimizer.v]] as const) {
      for (const [param, t] of moments) {
        const name = `optimizer.${kind}.${param}`;
        if (!file.has(name)) throw new Error(`${file.path}: missing tensor "${name}"`);
        // into the optimizer's own tensor, which keeps its dtype (BF16 moments were saved as BF16: exact)
        b.copyFromHost(t, b.floatDType === 'f64' ? file.readFloat64(name) : file.readFloat32(name));
      }
    }
    optimizer.step = Number(file.metadata.optimizer_step ?? meta.step);
    return meta;
  } finally {
    file.close();
  }
}
