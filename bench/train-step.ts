// One BF16 training step of the `small` preset (vocabulary 32768, about 681 M parameters) on one GPU,
// ours against Hugging Face transformers' DeepseekV3ForCausalLM with the same config, eager and
// torch.compile'd, in the same run (DESIGN §10). A step is batch 1 × 4096 tokens: forward and
// backward (forwardBackward: main loss, balance loss, MTP loss when the model has MTP), AdamW with
// BF16 moments and gradient clipping, and the auxiliary-loss-free bias update — what Trainer.trainStep
// does, on random tokens. Hugging Face has no MTP, so the ratios compare our model without MTP (the
// same parameters) to it; the MTP step is reported beside. Tokens/s is the median over the timed
// steps after warm-up. Prints a table, appends a line to bench/RESULTS.md, writes
// $OUT/train-step.json when OUT is set and prints JSON on the last line.
//
//   node dist/bench/train-step.js [--steps 5] [--warmup 2] [--seq 4096] [--torch-timeout 420] [--no-torch]

import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Backend } from '../src/backend/backend.js';
import { createBackend } from '../src/backend/create.js';
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import { configToJson } from '../src/model/config.js';
import { DeepseekV3 } from '../src/model/model.js';
import type { MoE } from '../src/model/moe.js';
import { ParameterSet, type Parameter, type ParameterSource } from '../src/model/parameters.js';
import { numel, type Tensor } from '../src/tensor/tensor.js';
import { updateCorrectionBias } from '../src/train/expert-balance.js';
import { forwardBackward } from '../src/train/forward-backward.js';
import { AdamW, type AdamWConfig } from '../src/train/optimizer.js';
import { presetConfig } from '../src/train/presets.js';
import { Random } from '../src/util/random.js';

const { values: flags } = parseArgs({
  options: {
    steps: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '2' },
    seq: { type: 'string', default: '4096' },
    'torch-timeout': { type: 'string', default: '420' },
    'no-torch': { type: 'boolean', default: false },
  },
});
const STEPS = Number(flags.steps), WARMUP = Number(flags.warmup), SEQ = Number(flags.seq), TORCH_TIMEOUT = Number(flags['torch-timeout']);
for (const [name, v, min] of [['steps', STEPS, 1], ['warmup', WARMUP, 1], ['seq', SEQ, 2], ['torch-timeout', TORCH_TIMEOUT, 10]] as const) {
  if (!Number.isInteger(v) || v < min) throw new Error(`--${name} ${v}: an integer ≥ ${min}`);
}
const VOCAB = 32768;
const LR = 1e-4;
const ADAMW: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1, momentsDtype: 'bf16' };
const LOSS = { mtpWeight: 0.3, balanceAlpha: 1e-4, recompute: { norms: false, upProjections: false } };
const BIAS_UPDATE_SPEED = 1e-3;

const repoFile = (rel: string) => fileURLToPath(new URL(`../../${rel}`, import.meta.url));

function gitCommit(): string {
  if (process.env.DSV3_COMMIT) return process.env.DSV3_COMMIT;
  const out = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoFile('.'), encoding: 'utf8' });
  return out.status === 0 ? out.stdout.trim() : 'no commit';
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/**
 * Random weights by Hugging Face name, like RandomParameters (matrices N(0, 0.02²), norms 1, biases 0)
 * but fast at this size: matrices are filled with runs copied from a pool of normals at random offsets
 * (RandomParameters draws every value and keeps an FP64 copy of all 681 M of them on the host).
 */
class PooledRandomParameters implements ParameterSource {
  private readonly pool: Float32Array;
  private readonly rng: Random;

  constructor(private readonly backend: Backend, seed: number, std = 0.02) {
    this.rng = new Random(seed);
    this.pool = new Float32Array(1 << 20);
    for (let i = 0; i < this.pool.length; i++) this.pool[i] = std * this.rng.normal();
  }

  has(): boolean {
    return true;
  }

  get(name: string, shape: readonly number[]): Tensor {
    const n = numel(shape);
    const data = new Float32Array(n);
    if (/(layernorm|norm)\.weight$/.test(name)) data.fill(1);
    else if (!name.endsWith('e_score_correction_bias')) {
      const run = 4096;
      for (let at = 0; at < n; at += run) {
        const from = this.rng.nextUint32() % (this.pool.length - run);
        data.set(this.pool.subarray(from, from + Math.min(run, n - at)), at);
      }
    }
    return this.backend.upload(data, shape);
  }
}

// ---- ours ----------------------------------------------------------------------------------------

const backend = await createBackend({ device: 'cuda' });
if (!(backend instanceof CudaBackend)) throw new Error(`createBackend({ device: 'cuda' }) returned the ${backend.name} backend, not CudaBackend`);
const ctx = backend.ctx;
const gpu = ctx.describe().name;
const config = presetConfig('small', VOCAB, { bos: 0, eos: 1 });
const t0 = performance.now();
const params = new ParameterSet(new PooledRandomParameters(backend, 1234));
const withMtp = new DeepseekV3(backend, config, params, true);
const plain = new DeepseekV3(backend, config, params, false); // the same parameters, no MTP modules
params.allocateGradients(backend);
const mtpPrefixes = withMtp.mtp.map((m) => `${m.prefix}.`);
const isMtp = (p: Parameter) => mtpPrefixes.some((prefix) => p.name.startsWith(prefix));
const parameterCount = params.all().reduce((s, p) => s + numel(p.value.shape), 0);
const mainCount = params.all().filter((p) => !isMtp(p)).reduce((s, p) => s + numel(p.value.shape), 0);
// RoPE tables for the step's length now, so that no step allocates anything that outlives it (as
// Trainer does). forwardBackward gives the MTP module the main positions 0 … SEQ−1, so SEQ positions
// cover both models (Trainer asks for SEQ + D and so refuses SEQ = max_position_embeddings with MTP).
backend.free(withMtp.context(1, SEQ, 0).positions);
backend.free(plain.context(1, SEQ, 0).positions);
ctx.synchronize();
console.log(`# small preset: ${(parameterCount / 1e6).toFixed(0)} M parameters (${(mainCount / 1e6).toFixed(0)} M without MTP), built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

interface Variant {
  label: string;
  model: DeepseekV3;
  params: Parameter[];
  optimizer: AdamW;
}
const variants: Variant[] = [
  { label: 'ours (no MTP)', model: plain, params: params.all().filter((p) => !isMtp(p)) },
  { label: 'ours (with MTP, D=1)', model: withMtp, params: params.all() },
].map((v) => ({ ...v, optimizer: new AdamW(backend, v.params, ADAMW) }));

/** The MoE layers of a model (main stack, then MTP blocks) with their index in forwardBackward's expertLoad. */
function moeLayers(model: DeepseekV3): { index: number; ffn: MoE }[] {
  return [...model.layers, ...model.mtp.map((m) => m.block)]
    .map((layer, index) => ({ index, ffn: layer.ffn }))
    .filter((l): l is { index: number; ffn: MoE } => 'experts' in l.ffn);
}

const tokenRng = new Random(99);
function randomWindow(length: number): Int32Array {
  return Int32Array.from({ length }, () => tokenRng.nextUint32() % VOCAB);
}

/** One optimizer step; returns its wall time (ms, device synchronised) and loss. */
function trainStep(v: Variant, stepNumber: number): { ms: number; loss: number } {
  const tokens = randomWindow(SEQ + 1 + v.model.mtp.length);
  ctx.synchronize();
  const start = performance.now();
  const mark = backend.markAllocations();
  let loss: number;
  try {
    for (const p of v.params) backend.scaleInPlace(p.gradient, 0);
    const r = forwardBackward(v.model, tokens, 1, SEQ, LOSS);
    v.optimizer.step(LR);
    for (const { index, ffn } of moeLayers(v.model)) if (ffn.bias) updateCorrectionBias(backend, ffn.bias, r.expertLoad[index]!, BIAS_UPDATE_SPEED);
    loss = r.loss;
  } finally {
    backend.releaseAllocations(mark);
  }
  ctx.synchronize();
  const ms = performance.now() - start;
  if (!Number.isFinite(loss)) throw new Error(`${v.label}: loss ${loss} at step ${stepNumber}`);
  return { ms, loss };
}

interface OursRow {
  label: string;
  tokensPerSecond: number | null;
  stepMs: number[];
  loss: number | null;
  error: string | null;
}
const ours: OursRow[] = [];
for (const v of variants) {
  const row: OursRow = { label: v.label, tokensPerSecond: null, stepMs: [], loss: null, error: null };
  ours.push(row);
  try {
    for (let i = 0; i < WARMUP; i++) {
      const w = trainStep(v, i + 1);
      console.log(`# ${v.label} warm-up step ${i + 1}: ${w.ms.toFixed(0)} ms, loss ${w.loss.toFixed(3)}`);
    }
    for (let i = 0; i < STEPS; i++) {
      const s = trainStep(v, WARMUP + i + 1);
      row.stepMs.push(s.ms);
      row.loss = s.loss;
    }
    row.tokensPerSecond = SEQ / (median(row.stepMs) / 1000);
    console.log(`# ${v.label}: ${row.tokensPerSecond.toFixed(0)} tokens/s (steps ${row.stepMs.map((m) => m.toFixed(0)).join(', ')} ms), loss ${row.loss?.toFixed(3)}`);
  } catch (e) {
    row.error = (e as Error).message.split('\n')[0]!;
    console.log(`# ${v.label} failed: ${(e as Error).stack ?? row.error}`);
  }
}
const peakNote = (() => {
  const { freeBytes, totalBytes } = ctx.memoryInfo();
  return `${((totalBytes - freeBytes) / 2 ** 30).toFixed(1)} GiB of ${(totalBytes / 2 ** 30).toFixed(0)} GiB in use after the steps`;
})();
backend.dispose(); // hands the GPU's memory back before PyTorch starts

// ---- Hugging Face transformers, eager and compiled, in one process --------------------------------

interface TorchLine {
  mode: 'eager' | 'compile';
  tokens_per_s: number | null;
  step_ms: number[];
  loss: number | null;
  compile_s: number | null;
  error: string | null;
}
const torchLines: TorchLine[] = [];
let torchNote = '';
if (flags['no-torch']) {
  torchNote = 'not run (--no-torch)';
} else {
  const dir = mkdtempSync(join(tmpdir(), 'dsv3-train-step-'));
  try {
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...configToJson(config), dtype: 'bfloat16' }, null, 2) + '\n');
    const out = spawnSync('python3', [repoFile('bench/train_step_torch.py'), '--config-dir', dir, '--seq', String(SEQ), '--steps', String(STEPS), '--warmup', String(WARMUP)], {
      encoding: 'utf8', timeout: TORCH_TIMEOUT * 1000, maxBuffer: 64 << 20,
    });
    process.stderr.write(out.stderr ?? '');
    for (const l of (out.stdout ?? '').split('\n')) {
      if (!l.startsWith('{')) continue;
      try {
        torchLines.push(JSON.parse(l) as TorchLine);
      } catch {
        // a partial line from a killed process
      }
    }
    const info = (out.stdout ?? '').split('\n').find((l) => l.startsWith('# versions'));
    if (out.error && (out.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') torchNote = `python3 killed after ${TORCH_TIMEOUT} s (--torch-timeout)`;
    else if (out.error) torchNote = `python3 did not run: ${out.error.message}`;
    else if (out.status !== 0) torchNote = `python3 exited ${out.status}: ${(out.stderr ?? '').trim().split('\n').pop()}`;
    else torchNote = info ? info.slice(2) : 'ok';
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const eager = torchLines.find((l) => l.mode === 'eager') ?? null;
const compiled = torchLines.find((l) => l.mode === 'compile') ?? null;

// ---- report --------------------------------------------------------------------------------------

const commit = gitCommit();
const fmt = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : x.toFixed(0));
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a && b ? `${(a / b).toFixed(2)}×` : 'n/a');
const base = ours[0]!;
console.log(`training step, small preset, batch 1 × ${SEQ} tokens, BF16, AdamW — tokens/s, median of ${STEPS} steps after ${WARMUP} warm-up — ${gpu}, commit ${commit}`);
console.log(`  torch: ${torchNote}; ours: ${peakNote}`);
const header = ['run', 'tokens/s', 'step ms', 'loss', 'ours (no MTP) / this'];
const table: string[][] = [
  ...ours.map((r) => [r.label, fmt(r.tokensPerSecond), r.stepMs.length ? median(r.stepMs).toFixed(0) : 'n/a', r.loss?.toFixed(3) ?? 'n/a', r === base ? '1.00×' : ratio(base.tokensPerSecond, r.tokensPerSecond)]),
  ...[eager, compiled].filter((l): l is TorchLine => l !== null).map((l) => [`transformers ${l.mode}${l.compile_s ? ` (compile ${l.compile_s.toFixed(0)} s)` : ''}`, fmt(l.tokens_per_s),
    l.step_ms.length ? median(l.step_ms).toFixed(0) : 'n/a', l.loss?.toFixed(3) ?? 'n/a', ratio(base.tokensPerSecond, l.tokens_per_s)]),
];
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
const line = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
console.log(line(header));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const t of table) console.log(line(t));
console.log(`ours/eager ${ratio(base.tokensPerSecond, eager?.tokens_per_s)} (goal ≥ 1.5×), ours/compiled ${ratio(base.tokensPerSecond, compiled?.tokens_per_s)}`);
const errors = [...ours.filter((r) => r.error).map((r) => `${r.label}: ${r.error}`), ...torchLines.filter((l) => l.error).map((l) => `transformers ${l.mode}: ${l.error}`)];
if (!flags['no-torch'] && !eager) errors.push('transformers eager: no result');
if (!flags['no-torch'] && !compiled) errors.push('transformers compile: no result');
for (const e of errors) console.log(`  error: ${e}`);

const resultsPath = repoFile('bench/RESULTS.md');
if (!existsSync(resultsPath)) writeFileSync(resultsPath, '# Benchmark results\n\n');
const stamp = new Date().toISOString().slice(0, 16).replace('T', ' ');
appendFileSync(resultsPath, `- ${stamp} UTC · ${gpu} · ${commit} · train-step small 1×${SEQ} BF16 tokens/s: ours ${fmt(ours[0]!.tokensPerSecond)} (with MTP ${fmt(ours[1]!.tokensPerSecond)}), `
  + `transformers eager ${fmt(eager?.tokens_per_s)}, compiled ${fmt(compiled?.tokens_per_s)}; ours/eager ${ratio(base.tokensPerSecond, eager?.tokens_per_s)}, ours/compiled ${ratio(base.tokensPerSecond, compiled?.tokens_per_s)}\n`);

const json = { bench: 'train-step', date: new Date().toISOString(), gpu, commit, seq: SEQ, steps: STEPS, parameters: parameterCount, ours, torch: torchLines, torchNote };
if (process.env.OUT) {
  mkdirSync(process.env.OUT, { recursive: true });
  writeFileSync(join(process.env.OUT, 'train-step.json'), JSON.stringify(json, null, 2) + '\n');
}
console.log(JSON.stringify(json));
if (errors.length > 0) process.exitCode = 1;
