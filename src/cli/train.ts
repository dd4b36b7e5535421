// dsv3 train: train a DeepSeek-V3-style model from scratch (or resume one), with a progress bar,
// metrics as JSONL, an SVG plot of the losses and expert load, and checkpoints that Hugging Face
// loads. With no flags: the tiny preset on the built-in corpus, then a few samples.

import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { createBackend } from '../backend/create.js';
import { generate } from '../infer/generate.js';
import { generateSpeculative } from '../infer/speculative.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import type { ModelConfig } from '../model/config.js';
import { loadPretrained, readConfigFile } from '../model/load.js';
import { DeepseekV3 } from '../model/model.js';
import { ParameterSet } from '../model/parameters.js';
import { RandomParameters } from '../model/random-parameters.js';
import { saveTokenizer, trainByteLevelBpe } from '../train/bpe-trainer.js';
import { readTrainerMeta, resolveCheckpoint } from '../train/checkpoint.js';
import { BatchSampler } from '../train/data/batches.js';
import { corpusDocuments } from '../train/data/documents.js';
import { openTokenStore } from '../train/data/token-store.js';
import { writeTrainingPlot } from '../train/plot.js';
import { PRESET_NAMES, presetConfig } from '../train/presets.js';
import { Trainer, type TrainerOptions } from '../train/trainer.js';
import { deviceFlag, deviceOption, numberFlag, stringFlag, UsageError, type Command } from './args.js';

/** The options of a run, saved in every checkpoint so that --resume continues the same run. */
interface RunOptions {
  preset: string;
  configFile: string | null;
  data: string[];
  vocabSize: number;
  /** MTP depth D overriding the preset's or config's num_nextn_predict_layers (null: keep it). */
  mtpDepth: number | null;
  seed: number;
  trainer: TrainerOptions;
  evalEvery: number;
  saveEvery: number;
}

const SAMPLE_PROMPTS = ['The film', 'In the morning', 'It is'];

export const trainCommand: Command = {
  name: 'train',
  summary: 'train a model from scratch or resume a run (default: the tiny preset on the built-in corpus)',
  usage: `dsv3 train [options]

Trains a DeepSeek-V3-style model (MLA, DeepSeekMoE with auxiliary-loss-free balancing, MTP) and
writes checkpoints that Hugging Face transformers loads. With no flags it trains the tiny preset on
the built-in corpus on the CPU (a few minutes on 2 cores), then prints samples.

Model and data
  --preset NAME          ${PRESET_NAMES.join(' | ')} (default tiny)
  --config FILE          a config.json to train from scratch instead of a preset
  --data PATH            training data, repeatable: .txt, .jsonl ({"text": ...} per line), or token
                         shards (.bin / .u16.bin uint16, .u32.bin uint32); default: the built-in corpus
  --tokenizer DIR        directory with tokenizer.json (default: train a byte-level BPE on the data)
  --vocab-size N         size of that trained tokenizer (default 4096)
Run
  --steps N              optimizer steps (default 600)
  --batch-size B         sequences per micro-batch (default 8)
  --seq-len T            tokens per sequence (default 128)
  --grad-accum N         micro-batches per step (default 1)
  --lr LR                peak learning rate (default 3e-3); --min-lr (default lr/10)
  --warmup N             warmup steps (default 5% of the steps)
  --schedule KIND        cosine | wsd (warmup-stable-decay; default cosine)
  --weight-decay W       decoupled, on matrices only (default 0.1)
  --grad-clip C          global gradient-norm clip (default 1.0; 0 = off)
  --moments DTYPE        f32 | bf16 AdamW moments (default f32)
  --mtp-depth D          MTP modules (default: the preset's or config's num_nextn_predict_layers; 1 for presets)
  --mtp-weight L         λ of the MTP loss (default 0.3)
  --balance-alpha A      α of the sequence-wise balance loss (default 1e-4)
  --bias-update-speed G  γ of the auxiliary-loss-free bias update (default 1e-3; 0 = off)
  --recompute            recompute RMSNorm outputs and MLA up-projections in backward
  --cuda-graph           replay each micro-batch's forward and backward from a captured graph (one
                         launch instead of thousands on the GPU; MoE layers then run at fixed expert
                         capacities that follow the measured loads, and a step that exceeds them is
                         redone eagerly, so it pays when launches dominate and the routing is even)
  --seed S               initialisation and data-order seed (default 0)
  --device cpu|cuda|auto where to train (default auto)
Output
  --out DIR              run directory (default runs/<preset>-<date>)
  --resume DIR           continue the run in DIR (or the checkpoint DIR) exactly where it stopped;
                         --steps may extend it
  --eval-every N         evaluate on the held-out split every N steps (default 100)
  --eval-batches N       held-out batches per evaluation (default 8)
  --save-every N         checkpoint every N steps (default 200; and always at the end)
  --keep-checkpoints N   checkpoints kept (default 2)
  --samples N            samples printed at the end (default 3; 0 = none)`,
  options: {
    preset: { type: 'string' }, config: { type: 'string' }, data: { type: 'string', multiple: true }, tokenizer: { type: 'string' },
    'vocab-size': { type: 'string' }, steps: { type: 'string' }, 'batch-size': { type: 'string' }, 'seq-len': { type: 'string' },
    'grad-accum': { type: 'string' }, lr: { type: 'string' }, 'min-lr': { type: 'string' }, warmup: { type: 'string' },
    schedule: { type: 'string' }, 'weight-decay': { type: 'string' }, 'grad-clip': { type: 'string' }, moments: { type: 'string' },
    'mtp-weight': { type: 'string' }, 'mtp-depth': { type: 'string' }, 'balance-alpha': { type: 'string' }, 'bias-update-speed': { type: 'string' },
    recompute: { type: 'boolean' }, 'cuda-graph': { type: 'boolean' }, seed: { type: 'string' }, out: { type: 'string' }, resume: { type: 'string' },
    'eval-every': { type: 'string' }, 'eval-batches': { type: 'string' }, 'save-every': { type: 'string' },
    'keep-checkpoints': { type: 'string' }, samples: { type: 'string' }, ...deviceOption,
  },
  async run(values) {
    const backend = await createBackend({ device: deviceFlag(values) });
    const samples = numberFlag(values, 'samples', { fallback: 3, min: 0, integer: true })!;
    const resume = stringFlag(values, 'resume');
    if (resume) {
      for (const flag of ['preset', 'config', 'data', 'tokenizer', 'out']) {
        if (values[flag] !== undefined) throw new UsageError(`--${flag} cannot be combined with --resume: a resumed run keeps its own`);
      }
      const checkpointDir = resolveCheckpoint(resume);
      const outDir = fs.existsSync(path.join(resume, 'latest')) ? resume : path.dirname(checkpointDir);
      const run = readRunOptions(checkpointDir);
      const steps = numberFlag(values, 'steps', { min: 1, integer: true });
      if (steps !== undefined) run.trainer = { ...run.trainer, steps, schedule: { ...run.trainer.schedule, totalSteps: steps } };
      const { model } = loadPretrained(checkpointDir, backend);
      if (model.mtp.length !== model.config.numNextnPredictLayers) throw new Error(`${checkpointDir}: the checkpoint lacks its MTP modules`);
      console.log(`resuming ${outDir} from ${path.basename(checkpointDir)}`);
      await trainAndReport(model, run, outDir, checkpointDir, checkpointDir, samples);
      return;
    }
    const preset = stringFlag(values, 'preset') ?? 'tiny';
    if (!PRESET_NAMES.includes(preset)) throw new UsageError(`--preset: "${preset}" does not exist (presets: ${PRESET_NAMES.join(', ')})`);
    const outDir = stringFlag(values, 'out') ?? path.join('runs', `${preset}-${new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-')}`);
    if (fs.existsSync(path.join(outDir, 'latest'))) throw new UsageError(`${outDir} already holds a run: pass --resume ${outDir} to continue it, or another --out`);
    const run = runOptionsFromFlags(values, preset);
    for (const file of run.data) if (!fs.existsSync(file)) throw new Error(`data file ${file} does not exist`);
    if (run.configFile) readConfigFile(run.configFile); // a bad config fails before any work
    fs.mkdirSync(outDir, { recursive: true });
    const tokenizerDir = stringFlag(values, 'tokenizer') ?? trainTokenizer(run, path.join(outDir, 'tokenizer'));
    const tokenizer = loadTokenizer(tokenizerDir);
    const config = modelConfig(run, tokenizer);
    run.vocabSize = config.vocabSize;
    const model = new DeepseekV3(backend, config, new ParameterSet(new RandomParameters(backend, { seed: run.seed })), true);
    await trainAndReport(model, run, outDir, tokenizerDir, null, samples);
  },
};

function runOptionsFromFlags(values: Record<string, unknown>, preset: string): RunOptions {
  const steps = numberFlag(values, 'steps', { fallback: 600, min: 1, integer: true })!;
  const lr = numberFlag(values, 'lr', { fallback: 3e-3, min: 0 })!;
  const schedule = stringFlag(values, 'schedule') ?? 'cosine';
  if (schedule !== 'cosine' && schedule !== 'wsd') throw new UsageError(`--schedule: "${schedule}" is not one of cosine, wsd`);
  const moments = stringFlag(values, 'moments') ?? 'f32';
  if (moments !== 'f32' && moments !== 'bf16') throw new UsageError(`--moments: "${moments}" is not one of f32, bf16`);
  return {
    preset,
    configFile: stringFlag(values, 'config') ?? null,
    data: (values.data as string[] | undefined) ?? [],
    vocabSize: numberFlag(values, 'vocab-size', { fallback: 4096, min: 300, integer: true })!,
    mtpDepth: numberFlag(values, 'mtp-depth', { min: 0, max: 8, integer: true }) ?? null,
    seed: numberFlag(values, 'seed', { fallback: 0, integer: true })!,
    evalEvery: numberFlag(values, 'eval-every', { fallback: 100, min: 1, integer: true })!,
    saveEvery: numberFlag(values, 'save-every', { fallback: 200, min: 1, integer: true })!,
    trainer: {
      steps,
      batchSize: numberFlag(values, 'batch-size', { fallback: 8, min: 1, integer: true })!,
      seqLen: numberFlag(values, 'seq-len', { fallback: 128, min: 2, integer: true })!,
      gradAccum: numberFlag(values, 'grad-accum', { fallback: 1, min: 1, integer: true })!,
      schedule: {
        kind: schedule, peakLr: lr, minLr: numberFlag(values, 'min-lr', { fallback: lr / 10, min: 0 })!,
        warmupSteps: numberFlag(values, 'warmup', { fallback: Math.round(steps * 0.05), min: 0, integer: true })!,
        totalSteps: steps, decayFraction: 0.2,
      },
      adamw: {
        beta1: 0.9, beta2: 0.95, eps: 1e-8,
        weightDecay: numberFlag(values, 'weight-decay', { fallback: 0.1, min: 0 })!,
        gradClip: numberFlag(values, 'grad-clip', { fallback: 1, min: 0 })!,
        momentsDtype: moments,
      },
      mtpWeight: numberFlag(values, 'mtp-weight', { fallback: 0.3, min: 0 })!,
      balanceAlpha: numberFlag(values, 'balance-alpha', { fallback: 1e-4, min: 0 })!,
      biasUpdateSpeed: numberFlag(values, 'bias-update-speed', { fallback: 1e-3, min: 0 })!,
      recompute: { norms: values.recompute === true, upProjections: values.recompute === true },
      evalBatches: numberFlag(values, 'eval-batches', { fallback: 8, min: 1, integer: true })!,
      keepCheckpoints: numberFlag(values, 'keep-checkpoints', { fallback: 2, min: 1, integer: true })!,
      captureGraph: values['cuda-graph'] === true,
    },
  };
}

function readRunOptions(checkpointDir: string): RunOptions {
  const meta = readTrainerMeta(checkpointDir);
  return meta.options as RunOptions;
}

/** Train a byte-level BPE on the run's text data into `dir`; returns `dir`. */
function trainTokenizer(run: RunOptions, dir: string): string {
  if (run.data.some((f) => /\.bin$/.test(f))) throw new UsageError('token shards (.bin) are already tokenized: pass the --tokenizer that made them');
  const t0 = performance.now();
  const json = trainByteLevelBpe(corpusDocuments(run.data), { vocabSize: run.vocabSize });
  fs.mkdirSync(dir, { recursive: true });
  saveTokenizer(json, path.join(dir, 'tokenizer.json'));
  const special = (json as { added_tokens: { content: string }[] }).added_tokens.map((t) => t.content);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: special[0], eos_token: special[1], add_bos_token: true }, null, 2) + '\n');
  console.log(`trained a ${run.vocabSize}-token byte-level BPE in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return dir;
}

function modelConfig(run: RunOptions, tokenizer: Tokenizer): ModelConfig {
  const special = { bos: tokenizer.bosTokenId ?? null, eos: tokenizer.eosTokenId ?? null };
  const config = run.configFile ? readConfigFile(run.configFile) : presetConfig(run.preset, tokenizer.vocabSize, special);
  if (config.vocabSize < tokenizer.vocabSize) throw new Error(`${run.configFile}: vocab_size ${config.vocabSize} is smaller than the tokenizer's ${tokenizer.vocabSize}`);
  return run.mtpDepth === null ? config : { ...config, numNextnPredictLayers: run.mtpDepth };
}

/** The files a checkpoint carries so that it is a complete Hugging Face directory. */
function tokenizerFiles(dir: string): string[] {
  return ['tokenizer.json', 'tokenizer_config.json'].map((f) => path.join(dir, f)).filter((f) => fs.existsSync(f));
}

/** Keep the metrics of steps up to `step` (a resumed run replaces what followed its checkpoint). */
function truncateMetrics(file: string, step: number): void {
  if (!fs.existsSync(file)) return;
  const kept = fs.readFileSync(file, 'utf8').split('\n').filter((line) => line.trim() && (JSON.parse(line) as { step: number }).step <= step);
  fs.writeFileSync(file, kept.map((l) => l + '\n').join(''));
}

async function trainAndReport(model: DeepseekV3, run: RunOptions, outDir: string, tokenizerDir: string, checkpointDir: string | null, samples: number): Promise<void> {
  const started = performance.now();
  const tokenizer = loadTokenizer(tokenizerDir);
  const opts = run.trainer;
  if (opts.seqLen + model.mtp.length > model.config.maxPositionEmbeddings) {
    throw new UsageError(`--seq-len ${opts.seqLen} exceeds the model's limit of ${model.config.maxPositionEmbeddings - model.mtp.length} tokens (max_position_embeddings ${model.config.maxPositionEmbeddings}, ${model.mtp.length} MTP position)`);
  }
  const store = openTokenStore(run.data, tokenizer, { log: (line: string) => console.log(line) });
  const sampler = new BatchSampler(store, { windowLength: opts.seqLen + 1 + model.mtp.length, stride: opts.seqLen, seed: run.seed });
  const trainer = new Trainer(model, sampler, opts);
  if (checkpointDir) trainer.restore(checkpointDir);
  const files = tokenizerFiles(tokenizerDir);
  const metricsFile = path.join(outDir, 'metrics.jsonl');
  const plotFile = path.join(outDir, 'training.svg');
  truncateMetrics(metricsFile, trainer.step);
  const log = (record: object) => fs.appendFileSync(metricsFile, JSON.stringify(record) + '\n');
  const title = `dsv3 ${run.preset} (${model.config.hiddenSize}d, ${model.config.numHiddenLayers} layers, ${model.config.nRoutedExperts} experts)`;
  console.log(`training ${title} on ${model.backend.name}: ${opts.steps - trainer.step} steps of ${opts.batchSize}×${opts.seqLen} tokens; ${sampler.trainWindows} training and ${sampler.evalWindows} held-out windows`);

  const bar = new cliProgress.SingleBar({
    format: 'step {value}/{total} | loss {loss} | mtp {mtp} | {tps} tok/s | ETA {remaining}',
    noTTYOutput: true, notTTYSchedule: 10000,
  }, cliProgress.Presets.shades_classic);
  bar.start(opts.steps, trainer.step, { loss: '-', mtp: '-', tps: '-', remaining: '-' });
  const firstStep = trainer.step;
  const loopStart = performance.now();
  let last: ReturnType<Trainer['trainStep']> | null = null;
  let lastEval: ReturnType<Trainer['evaluate']> | null = null;
  let saved = checkpointDir;
  // Ctrl-C finishes the step in progress, saves a checkpoint and stops: nothing is lost
  let interrupted = false;
  const onInterrupt = () => (interrupted = true);
  process.once('SIGINT', onInterrupt);
  while (trainer.step < opts.steps && !interrupted) {
    last = trainer.trainStep();
    log(last);
    const secondsLeft = ((performance.now() - loopStart) / 1000 / (trainer.step - firstStep)) * (opts.steps - trainer.step);
    bar.update(trainer.step, { loss: last.main_loss.toFixed(3), mtp: last.mtp_loss.map((l) => l.toFixed(3)).join('/') || '-', tps: last.tokens_per_s.toFixed(0), remaining: formatDuration(secondsLeft) });
    // let timers and signals run: the progress bar's redraw when stdout is not a terminal, Ctrl-C
    await new Promise((resolve) => setImmediate(resolve));
    const final = trainer.step === opts.steps;
    if (trainer.step % run.evalEvery === 0 || final) log((lastEval = trainer.evaluate()));
    if (trainer.step % run.saveEvery === 0 || final || interrupted) {
      saved = trainer.save(outDir, files, run);
      writeTrainingPlot(metricsFile, plotFile, title);
    }
  }
  process.off('SIGINT', onInterrupt);
  bar.stop();
  if (interrupted) console.log(`interrupted at step ${trainer.step}: saved ${saved}; continue with dsv3 train --resume ${outDir}`);
  const minutes = (performance.now() - started) / 60000;
  if (last) console.log(`step ${trainer.step}: loss ${last.main_loss.toFixed(3)}, MTP ${last.mtp_loss.map((l) => l.toFixed(3)).join('/')}, held-out ${lastEval?.eval_loss.toFixed(3)} (perplexity ${lastEval?.eval_ppl.toFixed(1)}); ${minutes.toFixed(1)} min`);
  if (opts.captureGraph) console.log(`CUDA graph: ${trainer.capturedOverflows} of ${trainer.step - firstStep} steps redone eagerly (an expert's load past its captured capacity)`);
  if (samples > 0) printSamples(model, tokenizer, samples);
  console.log(`checkpoint: ${saved}\nmetrics:    ${metricsFile}\nplot:       ${plotFile}`);
}

/** 95 → "1m35s", 3725 → "1h02m". */
function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function printSamples(model: DeepseekV3, tokenizer: Tokenizer, count: number): void {
  const settings = { maxNewTokens: 40, temperature: 0.7, topP: 0.95, stopTokens: tokenizer.eosTokenId === undefined ? [] : [tokenizer.eosTokenId] };
  let plainRate = 0, specRate = 0, drafted = 0, accepted = 0;
  for (const [i, prompt] of SAMPLE_PROMPTS.slice(0, count).entries()) {
    const ids = tokenizer.encode(prompt);
    const plain = generate(model, ids, { ...settings, seed: i });
    const spec = generateSpeculative(model, ids, { ...settings, seed: i });
    console.log(`\n[plain]       ${prompt}${tokenizer.decode(plain.tokens, { skipSpecialTokens: true })}`);
    console.log(`[speculative] ${prompt}${tokenizer.decode(spec.tokens, { skipSpecialTokens: true })}`);
    plainRate += plain.decodeTokensPerSecond / count;
    specRate += spec.decodeTokensPerSecond / count;
    drafted += spec.drafted;
    accepted += spec.accepted;
  }
  console.log(`\ndecoding: plain ${plainRate.toFixed(1)} tokens/s; speculative with the MTP drafter ${specRate.toFixed(1)} tokens/s, ${((100 * accepted) / Math.max(1, drafted)).toFixed(0)}% of drafts accepted\n`);
}
