// Bad input through the command line: each case prints one line naming the problem on stderr,
// exits non-zero, and shows no stack trace.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { repoRoot, tinyModelDir } from '../shared-paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-cli-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

function dsv3(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, DSV3_DEBUG: '' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectOneLineError(args: string[], pattern: RegExp): void {
  const r = dsv3(...args);
  assert.notEqual(r.status, 0, `exit status for ${args.join(' ')}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `stderr should be one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

/** A copy of the fixture model whose model.safetensors is replaced by `bytes`. */
function modelWith(name: string, bytes: Buffer, config?: object): string {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config ?? JSON.parse(fs.readFileSync(path.join(tinyModelDir, 'config.json'), 'utf8'))));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), bytes);
  return dir;
}

/** A safetensors file from a raw header object and data section. */
function rawSafetensors(header: object, dataBytes: number): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataBytes, 7)]);
}

const fixtureBytes = fs.readFileSync(path.join(tinyModelDir, 'model.safetensors'));
const fixtureConfig = JSON.parse(fs.readFileSync(path.join(tinyModelDir, 'config.json'), 'utf8'));
const generateArgs = (dir: string) => ['generate', '--model', dir, '--prompt-ids', '1,2,3', '--max-new-tokens', '2', '--device', 'cpu'];

test('a truncated safetensors file', () => {
  const dir = modelWith('truncated', fixtureBytes.subarray(0, fixtureBytes.length - 1000));
  expectOneLineError(generateArgs(dir), /model\.safetensors.*(truncat|beyond|outside|end|short|size)/i);
});

test('overlapping tensor offsets', () => {
  const dir = modelWith('overlap', rawSafetensors({
    'a.weight': { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
    'b.weight': { dtype: 'F32', shape: [4], data_offsets: [8, 24] },
  }, 24));
  expectOneLineError(generateArgs(dir), /model\.safetensors.*overlap/i);
});

test('a missing tensor', () => {
  // the fixture's tensors minus one, rewritten through our writer
  const dir = path.join(work, 'missing');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(fixtureConfig));
  const header = JSON.parse(fixtureBytes.subarray(8, 8 + Number(fixtureBytes.readBigUInt64LE(0))).toString());
  delete header['model.layers.1.self_attn.kv_b_proj.weight'];
  const entries = Object.entries(header).filter(([n]) => n !== '__metadata__') as [string, { dtype: string; shape: number[]; data_offsets: [number, number] }][];
  const start = 8 + Number(fixtureBytes.readBigUInt64LE(0));
  let offset = 0;
  const out: Record<string, object> = {};
  const chunks: Buffer[] = [];
  for (const [n, e] of entries.sort((x, y) => x[1].data_offsets[0] - y[1].data_offsets[0])) {
    const bytes = fixtureBytes.subarray(start + e.data_offsets[0], start + e.data_offsets[1]);
    out[n] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    chunks.push(bytes);
  }
  const json = Buffer.from(JSON.stringify(out));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.concat([len, json, ...chunks]));
  expectOneLineError(generateArgs(dir), /model\.layers\.1\.self_attn\.kv_b_proj\.weight/);
});

test('an unsupported config value', () => {
  const dir = modelWith('badconfig', fixtureBytes, { ...fixtureConfig, hidden_act: 'gelu' });
  expectOneLineError(generateArgs(dir), /hidden_act.*gelu/);
});

test('a directory that does not exist', () => {
  expectOneLineError(generateArgs(path.join(work, 'nowhere')), /nowhere.*does not exist/);
  expectOneLineError(['info', '--model', path.join(work, 'nowhere')], /does not exist/);
});

test('an unknown flag and an unknown command', () => {
  expectOneLineError(['generate', '--modle', tinyModelDir], /--modle/);
  expectOneLineError(['frobnicate'], /unknown command "frobnicate"/);
  expectOneLineError(['generate', '--model', tinyModelDir, '--prompt-ids', '1,2', '--temperature', 'hot'], /--temperature.*not a number/);
});

test('generate and info work on the fixture', () => {
  const g = dsv3(...generateArgs(tinyModelDir));
  assert.equal(g.status, 0, g.stderr);
  assert.match(g.stdout, /tokens\/s/);
  assert.match(g.stdout, /cache bytes\/token/);
  const i = dsv3('info', '--model', tinyModelDir);
  assert.equal(i.status, 0, i.stderr);
  assert.match(i.stdout, /activated per token/);
  assert.match(i.stdout, /KV cache/);
});
