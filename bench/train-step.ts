// One BF16 training step of the `small` preset (vocabulary 32768, about 681 M parameters) on one GPU,
// ours against Hugging Face transformers' DeepseekV3ForCausalLM with the same config, eager and
// torch.compile'd, in the same run (DESIGN §10). A step is batch 1 × 4096 tokens: forward and
// backward (forwardBackward: main loss, balance loss, MTP loss when the model has MTP), AdamW with
// BF16 moments and gradient clipping, and the auxiliary-loss-free bias update — what Trainer.trainStep
// does, on random tokens. Hugging Face has no MTP, so the ratios compare our model without MTP (the
// same parameters) to it; the same step replayed from a captured graph (CapturedTrainStep) and the
// MTP step are reported beside. Tokens/s is the median over the timed
// steps after warm-up, the same number of each for both sides: 5 warm-up steps by default, because
// our first steps also make the GEMM plans (and time the candidate algorithms) of the expert
// capacities the routing moves through (at 2 warm-up steps the variant measured first still paid
// for some: steps of 72–160 ms against 56–60 ms for the one after it, H200). Prints a table, appends a line to bench/RESULTS.md, writes
// $OUT/train-step.json when OUT is set and prints JSON on the last line.
//
//   node dist/bench/train-step.js [--steps 8] [--warmup 5] [--seq 4096] [--torch-timeout 420] [--no-torch]

import { DeepseekV3 } from '../src/model/model.js';
import type { MoE } from '../src/model/moe.js';
import { ParameterSet, type Parameter } from '../src/model/parameters.js';
import { numel } from '../src/tensor/tensor.js';
import { updateCorrectionBias } from '../src/train/expert-balance.js';
import { CapturedTrainStep } from '../src/train/captured-step.js';
import { forwardBackwardInto, StepSums } from '../src/train/forward-backward.js';
import { AdamW, type AdamWConfig } from '../src/train/optimizer.js';
import { presetConfig } from '../src/train/presets.js';
import { Random } from '../src/util/random.js';
import {
  appendResult, createCudaBackend, gitCommit, jsonLines, median, parseFlags, PooledRandomParameters, printTable, pythonNote, runPython, withHuggingFaceDir,
  writeJson,
} from './common.js';

const flags = parseFlags({ integers: { steps: [8, 1], warmup: [5, 1], seq: [4096, 2], 'torch-timeout': [420, 10] }, booleans: ['no-torch'] });
const STEPS = flags.steps, WARMUP = flags.warmup, SEQ = flags.seq, TORCH_TIMEOUT = flags['torch-timeout'];
const VOCAB = 32768;
const LR = 1e-4;
const ADAMW: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1, momentsDtype: 'bf16' };
const LOSS = { mtpWeight: 0.3, balanceAlpha: 1e-4, recompute: { norms: false, upProjections: false } };
const BIAS_UPDATE_SPEED = 1e-3;

// ---- ours ----------------------------------------------------------------------------------------

const backend = await createCudaBackend();
const ctx = backend.ctx;
const gpu = ctx.describe().name;
const config = presetConfig('small', VOCAB, { bos: 0, eos: 1 });
const t0 = performance.now();
const params = new ParameterSet(new PooledRandomParameters(backend, 1234));
const withMtp = new DeepseekV3(backend, config, params, true);
const plain = new DeepseekV3(backend, config, params, false); // the same parameters, no MTP modules
// the experts' weight gradients evenly spaced, so their batched GEMM writes them in place (as Trainer does)
for (const layer of [...withMtp.layers, ...withMtp.mtp.map((m) => m.block)]) if ('experts' in layer.ffn) layer.ffn.allocateGradients(backend);
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
  /** The step's losses and expert loads on the device (as Trainer keeps them). */
  sums: StepSums;
  /** Forward and backward replayed from a captured graph (as Trainer with captureGraph). */
  captured: CapturedTrainStep | null;
  /** Steps of `captured` redone eagerly because a micro-batch dropped slots past an expert's capacity. */
  redone: number;
}
const variants: Variant[] = [
  { label: 'ours (no MTP)', model: plain, params: params.all().filter((p) => !isMtp(p)), capture: false },
  { label: 'ours (no MTP, captured graph)', model: plain, params: params.all().filter((p) => !isMtp(p)), capture: true },
  { label: 'ours (with MTP, D=1)', model: withMtp, params: params.all(), capture: false },
].map(({ capture, ...v }) => {
  const sums = new StepSums(backend, v.model);
  return { ...v, optimizer: new AdamW(backend, v.params, ADAMW), sums, captured: capture ? new CapturedTrainStep(v.model, 1, SEQ, LOSS, sums) : null, redone: 0 };
});

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
    const clear = () => {
      backend.scaleInPlaceMany(v.params.map((p) => p.gradient), 0);
      v.sums.reset();
    };
    const eager = () => forwardBackwardInto(v.model, tokens, 1, SEQ, LOSS, v.sums);
    clear();
    if (!v.captured) eager();
    else if (v.captured.runStep([tokens], () => (clear(), eager()))) v.redone++;
    const r = v.sums.read(LOSS.mtpWeight, 1);
    v.optimizer.step(LR);
    for (const { index, ffn } of moeLayers(v.model)) if (ffn.bias) updateCorrectionBias(backend, ffn.bias, v.sums.loads[index]!, BIAS_UPDATE_SPEED);
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
    const capacities = v.captured?.capacityRows;
    console.log(`# ${v.label}: ${row.tokensPerSecond.toFixed(0)} tokens/s (steps ${row.stepMs.map((m) => m.toFixed(0)).join(', ')} ms), loss ${row.loss?.toFixed(3)}`
      + (capacities ? `; ${v.redone} step(s) redone eagerly; expert capacities (rows per expert, per MoE layer) ${capacities.join(' ')}` : ''));
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
  const run = withHuggingFaceDir('dsv3-train-step-', config, (dir) => runPython('train_step_torch.py',
    ['--config-dir', dir, '--seq', String(SEQ), '--steps', String(STEPS), '--warmup', String(WARMUP)], { timeoutS: TORCH_TIMEOUT, timeoutFlag: '--torch-timeout' }));
  torchLines.push(...jsonLines<TorchLine>(run.stdout));
  torchNote = pythonNote(run);
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
printTable(['run', 'tokens/s', 'step ms', 'loss', 'ours (no MTP) / this'], [
  ...ours.map((r) => [r.label, fmt(r.tokensPerSecond), r.stepMs.length ? median(r.stepMs).toFixed(0) : 'n/a', r.loss?.toFixed(3) ?? 'n/a', r === base ? '1.00×' : ratio(base.tokensPerSecond, r.tokensPerSecond)]),
  ...[eager, compiled].filter((l): l is TorchLine => l !== null).map((l) => [`transformers ${l.mode}${l.compile_s ? ` (compile ${l.compile_s.toFixed(0)} s)` : ''}`, fmt(l.tokens_per_s),
    l.step_ms.length ? median(l.step_ms).toFixed(0) : 'n/a', l.loss?.toFixed(3) ?? 'n/a', ratio(base.tokensPerSecond, l.tokens_per_s)]),
], 1);
console.log(`ours/eager ${ratio(base.tokensPerSecond, eager?.tokens_per_s)} (goal ≥ 1.5×), ours/compiled ${ratio(base.tokensPerSecond, compiled?.tokens_per_s)}`);
const errors = [...ours.filter((r) => r.error).map((r) => `${r.label}: ${r.error}`), ...torchLines.filter((l) => l.error).map((l) => `transformers ${l.mode}: ${l.error}`)];
if (!flags['no-torch'] && !eager) errors.push('transformers eager: no result');
if (!flags['no-torch'] && !compiled) errors.push('transformers compile: no result');
for (const e of errors) console.log(`  error: ${e}`);

appendResult(gpu, commit, `train-step small 1×${SEQ} BF16 tokens/s: ours ${fmt(ours[0]!.tokensPerSecond)} (captured graph ${fmt(ours[1]!.tokensPerSecond)}, with MTP ${fmt(ours[2]!.tokensPerSecond)}), `
  + `transformers eager ${fmt(eager?.tokens_per_s)}, compiled ${fmt(compiled?.tokens_per_s)}; ours/eager ${ratio(base.tokensPerSecond, eager?.tokens_per_s)}, ours/compiled ${ratio(base.tokensPerSecond, compiled?.tokens_per_s)}`);

writeJson('train-step', { bench: 'train-step', date: new Date().toISOString(), gpu, commit, seq: SEQ, steps: STEPS, parameters: parameterCount, ours, torch: torchLines, torchNote });
if (errors.length > 0) process.exitCode = 1;
