// dsv3 train through the command line on a micro model: exact resume, a checkpoint write killed
// midway, checkpoints that load with identical logits and Hugging Face's tensor names, eval, and
// bad input.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { openCheckpoint } from '../../src/io/checkpoint-files.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadPretrained } from '../../src/model/load.js';
import { bpeTokenizerDir, repoRoot, tinyModelDir } from '../shared-paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-train-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

// the fixture's architecture with a 1024-token vocabulary (the fixture tokenizer's) and one MTP module
const fixtureConfig = JSON.parse(fs.readFileSync(path.join(tinyModelDir, 'config.json'), 'utf8'));
const configFile = path.join(work, 'micro-config.json');
fs.writeFileSync(configFile, JSON.stringify({ ...fixtureConfig, vocab_size: 1024, num_nextn_predict_layers: 1 }));
const dataFile = path.join(work, 'corpus.txt');
const words = ['the', 'expert', 'routes', 'a', 'token', 'to', 'its', 'latent', 'cache', 'and', 'model', 'learns', 'fast'];
fs.writeFileSync(dataFile, Array.from({ length: 400 }, (_, i) => Array.from({ length: 12 }, (_, j) => words[(i * 7 + j * 3 + (i >> 2)) % words.length]).join(' ') + '.').join('\n\n'));

function dsv3(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const common = ['--config', configFile, '--data', dataFile, '--tokenizer', bpeTokenizerDir, '--batch-size', '2', '--seq-len', '16', '--eval-every', '3', '--eval-batches', '2', '--samples', '0', '--device', 'cpu'];

/** The metrics of a run without the wall-clock throughput, which no two runs share. */
function metrics(dir: string): { step: number; loss?: number; eval_loss?: number }[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => ({ ...JSON.parse(l), tokens_per_s: undefined }));
}

function weights(checkpoint: string): Map<string, Uint8Array> {
  const ckpt = openCheckpoint(checkpoint);
  const out = new Map(ckpt.names().map((n) => [n, ckpt.readBytes(n)]));
  ckpt.close();
  return out;
}

test('2N steps straight and N steps + resume + N steps give bitwise-identical losses and weights', () => {
  const straight = path.join(work, 'straight');
  const split = path.join(work, 'split');
  let r = dsv3('train', ...common, '--steps', '8', '--save-every', '4', '--out', straight);
  assert.equal(r.status, 0, r.stderr);
  r = dsv3('train', ...common, '--steps', '8', '--save-every', '4', '--out', split);
  assert.equal(r.status, 0, r.stderr);
  // throw away the second half of the split run and continue it from its step-4 checkpoint
  fs.rmSync(path.join(split, 'checkpoint-000008'), { recursive: true });
  fs.writeFileSync(path.join(split, 'latest'), 'checkpoint-000004\n');
  r = dsv3('train', '--resume', split, '--samples', '0');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /resuming/);
  assert.deepEqual(metrics(split), metrics(straight));
  const a = weights(path.join(straight, 'checkpoint-000008'));
  const b = weights(path.join(split, 'checkpoint-000008'));
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [name, bytes] of a) assert.ok(Buffer.from(bytes).equals(Buffer.from(b.get(name)!)), `${name} differs`);
  const state = (dir: string) => SafetensorsFile.open(path.join(dir, 'checkpoint-000008', 'trainer_state.safetensors'));
  const sa = state(straight), sb = state(split);
  for (const name of sa.names()) assert.ok(Buffer.from(sa.readBytes(name)).equals(Buffer.from(sb.readBytes(name))), `${name} differs`);
});

test('a checkpoint has Hugging Face names and shapes and loads with identical logits', () => {
  const dir = path.join(work, 'straight', 'checkpoint-000008');
  const ours = SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  const hf = SafetensorsFile.open(path.join(tinyModelDir, 'model.safetensors'));
  const mtp = ours.names().filter((n) => n.startsWith('model.layers.3.'));
  const main = ours.names().filter((n) => !n.startsWith('model.layers.3.'));
  assert.deepEqual(main.sort(), hf.names().sort());
  for (const n of main) {
    const expected = hf.info(n).shape.map((s, i) => (n.includes('embed_tokens') || n.startsWith('lm_head')) && i === 0 ? 1024 : s);
    assert.deepEqual(ours.info(n).shape, expected, n);
  }
  for (const suffix of ['enorm.weight', 'hnorm.weight', 'eh_proj.weight', 'shared_head.norm.weight', 'shared_head.head.weight', 'embed_tokens.weight', 'self_attn.kv_b_proj.weight', 'mlp.gate.e_score_correction_bias']) {
    assert.ok(mtp.includes(`model.layers.3.${suffix}`), `missing MTP tensor ${suffix}`);
  }
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).num_nextn_predict_layers, 1);
  ours.close();
  hf.close();
  // the saved weights are the trained ones: a fresh load gives the trainer's final logits through `generate`
  const b = new CpuBackend('f32');
  const { model } = loadPretrained(dir, b);
  assert.equal(model.mtp.length, 1);
  const ids = Int32Array.from({ length: 10 }, (_, i) => (i * 37) % 1024);
  const l1 = b.download(model.logits(ids, 1, 10));
  const l2 = b.download(loadPretrained(dir, b).model.logits(ids, 1, 10));
  assert.deepEqual(l1, l2);
  const g = dsv3('generate', '--model', dir, '--prompt', 'the expert', '--max-new-tokens', '5', '--device', 'cpu');
  assert.equal(g.status, 0, g.stderr);
  const e = dsv3('eval', '--model', dir, '--data', dataFile, '--seq-len', '16', '--device', 'cpu');
  assert.equal(e.status, 0, e.stderr);
  assert.match(e.stdout, /loss \d+\.\d+\s+perplexity \d+/);
});

test('a checkpoint write killed midway leaves the previous checkpoint loadable and resumable', () => {
  const dir = path.join(work, 'killed');
  let r = dsv3('train', ...common, '--steps', '2', '--save-every', '2', '--out', dir);
  assert.equal(r.status, 0, r.stderr);
  // a child that trains to step 4 and SIGKILLs itself while writing the step-4 checkpoint
  const child = path.join(work, 'crash.mjs');
  fs.writeFileSync(child, `
    import { Trainer } from ${JSON.stringify(path.join(repoRoot, 'dist/src/train/trainer.js'))};
    const original = Trainer.prototype.save;
    Trainer.prototype.save = function (out, files, run) {
      let written = 0;
      return original.call(this, out, files, run, () => { if (++written === 5) process.kill(process.pid, 'SIGKILL'); });
    };
    process.argv = [process.argv[0], 'dsv3', 'train', '--resume', ${JSON.stringify(dir)}, '--steps', '4', '--samples', '0'];
    await import(${JSON.stringify(cli)});
  `);
  const killed = spawnSync(process.execPath, [child], { encoding: 'utf8' });
  assert.equal(killed.signal, 'SIGKILL', killed.stderr);
  assert.equal(fs.readFileSync(path.join(dir, 'latest'), 'utf8').trim(), 'checkpoint-000002');
  assert.ok(!fs.existsSync(path.join(dir, 'checkpoint-000004')));
  loadPretrained(path.join(dir, 'checkpoint-000002'), new CpuBackend('f32'));
  r = dsv3('train', '--resume', dir, '--steps', '4', '--samples', '0');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(fs.readFileSync(path.join(dir, 'latest'), 'utf8').trim(), 'checkpoint-000004');
});

test('bad training input: one clear line and a non-zero exit', () => {
  const empty = path.join(work, 'empty.txt');
  fs.writeFileSync(empty, '\n\n');
  const cases: [string[], RegExp][] = [
    [['--data', empty], /empty\.txt/],
    [['--data', path.join(work, 'missing.txt')], /missing\.txt.*(does not exist|not found|no such)/i],
    [['--seq-len', '100000'], /seq.*100000|100000.*(limit|position)/i],
    [['--preset', 'gigantic'], /preset.*gigantic/],
  ];
  for (const [args, pattern] of cases) {
    const base = args[0] === '--preset' ? ['--tokenizer', bpeTokenizerDir] : ['--config', configFile, '--tokenizer', bpeTokenizerDir, ...(args[0] === '--data' ? [] : ['--data', dataFile])];
    const r = dsv3('train', ...base, ...args, '--steps', '1', '--out', path.join(work, `bad-${Math.random()}`), '--device', 'cpu');
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  }
});

test('--mtp-depth 2 trains two MTP modules, saved at layers L and L+1', () => {
  const dir = path.join(work, 'depth2');
  const r = dsv3('train', ...common, '--steps', '2', '--mtp-depth', '2', '--out', dir);
  assert.equal(r.status, 0, r.stderr);
  const last = metrics(dir).filter((m) => 'mtp_loss' in m).at(-1) as { mtp_loss: number[] };
  assert.equal(last.mtp_loss.length, 2);
  const ckpt = path.join(dir, 'checkpoint-000002');
  assert.equal(JSON.parse(fs.readFileSync(path.join(ckpt, 'config.json'), 'utf8')).num_nextn_predict_layers, 2);
  const file = SafetensorsFile.open(path.join(ckpt, 'model.safetensors'));
  for (const layer of [3, 4]) assert.ok(file.has(`model.layers.${layer}.eh_proj.weight`), `MTP module at layer ${layer}`);
  file.close();
  assert.equal(loadPretrained(ckpt, new CpuBackend('f32')).model.mtp.length, 2);
});
