// What the GPU benchmarks (gpu-gemm, memory-bound, attention, train-step, decode) share: their
// flags, the repository's files and commit, medians and CUDA-event timing, the CUDA backend, BF16
// test data and random model weights, the PyTorch script each runs in a child process, and the
// report: a table, a line in bench/RESULTS.md and the figures as JSON.

import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Backend } from '../src/backend/backend.js';
import { createBackend, type BackendOptions } from '../src/backend/create.js';
import type { CudaContext, CudaEvent } from '../src/backend/cuda/context.js';
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import { configToJson, type ModelConfig } from '../src/model/config.js';
import type { ParameterSource } from '../src/model/parameters.js';
import { encodeFromFloat } from '../src/tensor/dtypes.js';
import { numel, type Tensor } from '../src/tensor/tensor.js';
import { Random } from '../src/util/random.js';

// ---- flags and the repository --------------------------------------------------------------------

export interface FlagSpec<I extends string, S extends string, B extends string> {
  /** Integer flags: [default, least value allowed]. */
  integers: Record<I, readonly [number, number]>;
  /** String flags and their defaults. */
  strings?: Record<S, string>;
  /** Boolean flags, false unless given. */
  booleans?: readonly B[];
}

/** The command line (unknown flags throw); an integer flag below its least value throws `--name value: an integer ≥ least`. */
export function parseFlags<I extends string, S extends string = never, B extends string = never>(spec: FlagSpec<I, S, B>): Record<I, number> & Record<S, string> & Record<B, boolean> {
  const options: NonNullable<ParseArgsConfig['options']> = {};
  for (const [name, [initial]] of Object.entries<readonly [number, number]>(spec.integers)) options[name] = { type: 'string', default: String(initial) };
  for (const [name, initial] of Object.entries<string>(spec.strings ?? {})) options[name] = { type: 'string', default: initial };
  for (const name of spec.booleans ?? []) options[name] = { type: 'boolean', default: false };
  const { values } = parseArgs({ options });
  const flags: Record<string, unknown> = { ...values };
  for (const [name, [, least]] of Object.entries<readonly [number, number]>(spec.integers)) {
    const given = values[name] as string;
    const v = Number(given);
    if (!Number.isInteger(v) || v < least) throw new Error(`--${name} ${given}: an integer ≥ ${least}`);
    flags[name] = v;
  }
  return flags as Record<I, number> & Record<S, string> & Record<B, boolean>;
}

/** A path in the repository (the compiled benchmarks run from dist/bench/). */
export const repoFile = (rel: string) => fileURLToPath(new URL(`../../${rel}`, import.meta.url));

/** DSV3_COMMIT (for a copy of the tree without .git), else the short hash of HEAD, else 'no commit'. */
export function gitCommit(): string {
  if (process.env.DSV3_COMMIT) return process.env.DSV3_COMMIT;
  const out = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoFile('.'), encoding: 'utf8' });
  return out.status === 0 ? out.stdout.trim() : 'no commit';
}

// ---- measuring ---------------------------------------------------------------------------------

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/** Device time of a call on ctx's stream, from one pair of CUDA events per timed iteration. */
export class EventTimer {
  private readonly starts: CudaEvent[];
  private readonly ends: CudaEvent[];

  constructor(private readonly ctx: CudaContext, private readonly iters: number, private readonly warmup: number) {
    this.starts = Array.from({ length: iters }, () => ctx.createEvent());
    this.ends = Array.from({ length: iters }, () => ctx.createEvent());
  }

  /**
   * Median milliseconds of `run` over the timed iterations, each between its own pair of events
   * (enqueued back to back), after the warm-up calls; `run` gets the call's number from 0.
   */
  time(run: (i: number) => void): number {
    for (let i = 0; i < this.warmup; i++) run(i);
    this.ctx.synchronize();
    idleGpu();
    for (let i = 0; i < this.iters; i++) {
      this.starts[i]!.record();
      run(this.warmup + i);
      this.ends[i]!.record();
    }
    this.ends[this.iters - 1]!.synchronize();
    return median(this.starts.map((s, i) => this.ends[i]!.elapsedSince(s)));
  }

  destroy(): void {
    for (const e of [...this.starts, ...this.ends]) e.destroy();
  }
}

/**
 * Leave the GPU idle for IDLE_MS before a timed loop (torch_common.py's median_ms does the same):
 * a GEMM timed right after seconds of full load (our plan autotuning, or the previous shape) ran up
 * to 15% slower than the same kernel timed after a pause, which made the order of the work, not the
 * code, decide a ratio. Clock and power state then start alike for both sides.
 */
const IDLE_MS = 500;
export function idleGpu(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, IDLE_MS);
}

/** createBackend({ device: 'cuda', ...options }), which must be the CUDA backend. */
export async function createCudaBackend(options: Omit<BackendOptions, 'device'> = {}): Promise<CudaBackend> {
  const backend = await createBackend({ ...options, device: 'cuda' });
  if (!(backend instanceof CudaBackend)) throw new Error(`createBackend({ device: 'cuda' }) returned the ${backend.name} backend, not CudaBackend`);
  return backend;
}

// ---- data --------------------------------------------------------------------------------------

/**
 * BF16 values uploaded once and tiled over device buffers by device copies (the values repeat
 * every `length` elements, which no bandwidth or GEMM timing can tell).
 */
export class Bf16Pool {
  readonly ptr: number;
  readonly length: number;

  constructor(private readonly ctx: CudaContext, values: Float32Array) {
    this.ptr = ctx.upload(encodeFromFloat('BF16', values));
    this.length = values.length;
  }

  /** Write n BF16 elements at `dst`: the pool, repeated. */
  fill(dst: number, n: number): void {
    for (let at = 0; at < n; at += this.length) this.ctx.copyDeviceToDevice(dst + 2 * at, this.ptr, 2 * Math.min(this.length, n - at));
  }

  free(): void {
    this.ctx.free(this.ptr);
  }
}

/**
 * Random weights by Hugging Face name, like RandomParameters (matrices N(0, 0.02²), norms 1, biases 0)
 * but fast at the benchmarks' sizes: matrices are filled with runs copied from a pool of normals at
 * random offsets (RandomParameters draws every value and keeps an FP64 copy of all of them on the host).
 */
export class PooledRandomParameters implements ParameterSource {
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

// ---- the PyTorch side ----------------------------------------------------------------------------

export interface PythonRun {
  /** Everything the script printed on stdout ('' when it did not start). */
  stdout: string;
  /** Why the run failed (python3 did not start, was killed at the time limit, exited non-zero), or null. */
  failure: string | null;
}

export interface PythonOptions {
  /** Kill the script after this many seconds (default: no limit). */
  timeoutS?: number;
  /** The flag that sets timeoutS, named in the failure when the time runs out. */
  timeoutFlag?: string;
  /** Pass the script's stderr on to ours (default true). */
  echoStderr?: boolean;
}

/** Run `python3 bench/<script> ...args` to its end (after ours released the GPU). */
export function runPython(script: string, args: string[], options: PythonOptions = {}): PythonRun {
  const { timeoutS, timeoutFlag, echoStderr = true } = options;
  const out = spawnSync('python3', [repoFile(`bench/${script}`), ...args], {
    encoding: 'utf8', timeout: timeoutS === undefined ? undefined : timeoutS * 1000, maxBuffer: 64 << 20,
  });
  if (echoStderr) process.stderr.write(out.stderr ?? '');
  let failure: string | null = null;
  if (out.error && (out.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') failure = `python3 killed after ${timeoutS} s${timeoutFlag ? ` (${timeoutFlag})` : ''}`;
  else if (out.error) failure = `python3 did not run: ${out.error.message}`;
  else if (out.status !== 0) failure = `python3 exited ${out.status}: ${(out.stderr ?? '').trim().split('\n').pop()}`;
  return { stdout: out.stdout ?? '', failure };
}

/** runPython for a script that prints its result as JSON on its last line: the result, or why there is none. */
export function runPythonJson<T>(script: string, args: string[], options: PythonOptions = {}): { result: T; failure: null } | { result: null; failure: string } {
  const run = runPython(script, args, options);
  if (run.failure) return { result: null, failure: run.failure };
  const last = run.stdout.trim().split('\n').pop() ?? '';
  try {
    return { result: JSON.parse(last) as T, failure: null };
  } catch {
    return { result: null, failure: `unreadable output from ${script}: ${last.slice(0, 200)}` };
  }
}

/**
 * `body` with a fresh temporary folder (`prefix`…) holding `config` as a Hugging Face config.json
 * (BF16), for the transformers side of a model benchmark; the folder is removed afterwards.
 */
export function withHuggingFaceDir<T>(prefix: string, config: ModelConfig, body: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...configToJson(config), dtype: 'bfloat16' }, null, 2) + '\n');
    return body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The JSON objects a script printed one a line as it measured them (a partial line from a killed process is left out). */
export function jsonLines<T>(stdout: string): T[] {
  const lines: T[] = [];
  for (const l of stdout.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(l) as T);
    } catch {
      // a partial line from a killed process
    }
  }
  return lines;
}

/** The outcome of a run of a script that prints `# versions …`: its failure, else that line, else 'ok'. */
export function pythonNote(run: PythonRun): string {
  const info = run.stdout.split('\n').find((l) => l.startsWith('# versions'));
  return run.failure ?? (info ? info.slice(2) : 'ok');
}

// ---- the report ----------------------------------------------------------------------------------

/** A Markdown table on stdout, its columns right-aligned but the first `leftColumns`. */
export function printTable(header: string[], rows: string[][], leftColumns = 0): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  console.log(line(header));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows) console.log(line(r));
}

/** Append `- <date> <time> UTC · <gpu> · <commit> · <text>` to bench/RESULTS.md (made when missing). */
export function appendResult(gpu: string, commit: string, text: string): void {
  const resultsPath = repoFile('bench/RESULTS.md');
  if (!existsSync(resultsPath)) writeFileSync(resultsPath, '# Benchmark results\n\n');
  const stamp = new Date().toISOString().slice(0, 16).replace('T', ' ');
  appendFileSync(resultsPath, `- ${stamp} UTC · ${gpu} · ${commit} · ${text}\n`);
}

/** Write `json` to $OUT/<name>.json when OUT is set, and print `printed` (default: json) as the last line of stdout. */
export function writeJson(name: string, json: object, printed: object = json): void {
  if (process.env.OUT) {
    mkdirSync(process.env.OUT, { recursive: true });
    writeFileSync(join(process.env.OUT, `${name}.json`), JSON.stringify(json, null, 2) + '\n');
  }
  console.log(JSON.stringify(printed));
}
