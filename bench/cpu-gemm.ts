// Square FP32 GEMM throughput on the CPU: our BLAS path, our own WebAssembly kernel (every core
// and one thread) and numpy (its own threading and one thread), measured in one run on one
// machine. Prints a table, appends a line to bench/RESULTS.md and prints the figures as JSON
// on the last line of stdout.
//
// Every figure is the best time of one C = A·B over repetitions after a warm-up, taken over
// ROUNDS rounds that each measure every configuration in turn: on a machine shared with other
// jobs, one busy second then spoils one round of one configuration, not the result.
//
//   npm run bench:cpu-gemm            (sizes 512 and 1024)
//   node dist/bench/cpu-gemm.js 256 512 1024

import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  allocShared, gemm, gemmImplementation, setGemmImplementation, setGemmThreads, type GemmKind,
} from '../src/backend/cpu/gemm/index.js';

// Environment overrides that pin OpenBLAS to a kernel or cache size would skew the comparison
// (some images set OPENBLAS_CORETYPE=Haswell, which turns AVX-512 off). OpenBLAS reads them
// when it loads, which our gemm does lazily on its first call (after this), and the numpy
// child gets an environment without them.
delete process.env.OPENBLAS_CORETYPE;
delete process.env.OPENBLAS_L2_SIZE;

const ROUNDS = 3;
/** Per configuration and round, after the warm-up. */
const MIN_SECONDS = 0.5;
const sizes = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (sizes.length === 0) sizes.push(512, 1024);
const cores = availableParallelism();

const repoFile = (rel: string) => fileURLToPath(new URL(`../../${rel}`, import.meta.url));

/** Best GFLOP/s of C = A·B over repetitions after a warm-up, like the numpy script. */
function measureOurs(kind: GemmKind, threads: number | undefined, n: number): number {
  setGemmImplementation(kind);
  setGemmThreads(threads);
  const a = allocShared(Float32Array, n * n);
  const b = allocShared(Float32Array, n * n);
  const c = allocShared(Float32Array, n * n);
  for (let i = 0; i < n * n; i++) {
    a[i] = Math.random() * 2 - 1;
    b[i] = Math.random() * 2 - 1;
  }
  const args = { transA: false, transB: false, m: n, n, k: n, alpha: 1, beta: 0, a, aOffset: 0, lda: n, b, bOffset: 0, ldb: n, c, cOffset: 0, ldc: n };
  for (let i = 0; i < 3; i++) gemm(args);
  let best = Infinity;
  let spent = 0;
  for (let reps = 0; reps < 5 || spent < MIN_SECONDS; reps++) {
    const t0 = performance.now();
    gemm(args);
    const dt = (performance.now() - t0) / 1000;
    best = Math.min(best, dt);
    spent += dt;
  }
  setGemmThreads(undefined);
  setGemmImplementation('auto');
  return (2 * n ** 3) / best / 1e9;
}

/** Pause so OpenBLAS's threads stop spinning before the next measurement starts. */
function settle(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
}

interface NumpyResult {
  numpy: string;
  blas: string;
  threads: number;
  gflops: Record<string, number>;
}

function runNumpy(threads: number): NumpyResult | string {
  const script = repoFile('bench/cpu_gemm_numpy.py');
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const out = spawnSync('python3', [script, '--sizes', sizes.join(','), '--threads', String(threads), '--min-seconds', String(MIN_SECONDS)], { env, encoding: 'utf8' });
  if (out.error) return `python3 did not run: ${out.error.message}`;
  if (out.status !== 0) return `python3 exited ${out.status}: ${out.stderr.trim().split('\n').pop()}`;
  const last = out.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as NumpyResult;
  } catch {
    return `unreadable output from the numpy script: ${last.slice(0, 200)}`;
  }
}

function gitCommit(): string {
  const out = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoFile('.'), encoding: 'utf8' });
  return out.status === 0 ? out.stdout.trim() : 'no commit';
}

// ---- measure ----------------------------------------------------------------------------

// DSV3_BLAS=0 / own means "no BLAS" here too: the BLAS column is skipped, not forced.
const blasDisabled = process.env.DSV3_BLAS === '0' || process.env.DSV3_BLAS === 'own';
let blasDetail: string | undefined;
if (!blasDisabled) {
  try {
    setGemmImplementation('openblas');
    blasDetail = gemmImplementation().detail;
  } catch {
    blasDetail = undefined;
  } finally {
    setGemmImplementation('auto');
  }
}
setGemmImplementation('own');
const ownDetail = gemmImplementation().detail;
setGemmImplementation('auto');

type Row = { n: number; blas?: number; own: number; own1: number; numpy?: number; numpy1?: number };
const rows: Row[] = sizes.map((n) => ({ n, own: 0, own1: 0 }));
const best = (x: number | undefined, y: number | undefined) => (y === undefined ? x : Math.max(x ?? 0, y));
let numpyInfo: NumpyResult | string = 'not run';
for (let round = 0; round < ROUNDS; round++) {
  for (const row of rows) {
    row.own = Math.max(row.own, measureOurs('own', undefined, row.n));
    row.own1 = Math.max(row.own1, measureOurs('own', 1, row.n));
    if (blasDetail !== undefined) {
      row.blas = best(row.blas, measureOurs('openblas', undefined, row.n));
      settle();
    }
  }
  const numpyAll = runNumpy(0);
  const numpyOne = runNumpy(1);
  if (typeof numpyInfo === 'string') numpyInfo = numpyAll;
  for (const row of rows) {
    if (typeof numpyAll !== 'string') row.numpy = best(row.numpy, numpyAll.gflops[String(row.n)]);
    if (typeof numpyOne !== 'string') row.numpy1 = best(row.numpy1, numpyOne.gflops[String(row.n)]);
  }
}

// ---- report -----------------------------------------------------------------------------

const machine = `${cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${cores} cores`;
const commit = gitCommit();
const fmt = (x: number | undefined) => (x === undefined ? 'n/a' : x.toFixed(1));
const pct = (x: number | undefined, of: number | undefined) => (x === undefined || of === undefined ? 'n/a' : `${((100 * x) / of).toFixed(0)}%`);

console.log(`square FP32 GEMM, GFLOP/s (best single run of ${ROUNDS} rounds × ≥${MIN_SECONDS} s after warm-up) — ${machine}, commit ${commit}`);
console.log(`  ours/openblas: ${blasDetail ?? (blasDisabled ? `disabled by DSV3_BLAS=${process.env.DSV3_BLAS}` : 'no BLAS library found')}`);
console.log(`  ours/own:      ${ownDetail}`);
console.log(`  numpy:         ${typeof numpyInfo === 'string' ? numpyInfo : `numpy ${numpyInfo.numpy}, ${numpyInfo.blas}`}`);
const header = ['size', 'ours/openblas', `ours/own ${cores}T`, 'ours/own 1T', `numpy ${cores}T`, 'numpy 1T', 'own 1T / numpy 1T'];
const table = rows.map((r) => [`${r.n}³`, fmt(r.blas), fmt(r.own), fmt(r.own1), fmt(r.numpy), fmt(r.numpy1), pct(r.own1, r.numpy1)]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padStart(widths[i])).join(' | ') + ' |';
console.log(line(header));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const t of table) console.log(line(t));

const resultsPath = repoFile('bench/RESULTS.md');
if (!existsSync(resultsPath)) writeFileSync(resultsPath, '# Benchmark results\n\n');
const figures = rows
  .map((r) => `${r.n}³ openblas ${fmt(r.blas)}, own ${fmt(r.own)} (1T ${fmt(r.own1)}), numpy ${fmt(r.numpy)} (1T ${fmt(r.numpy1)})`)
  .join('; ');
const stamp = new Date().toISOString().slice(0, 16).replace('T', ' ');
appendFileSync(resultsPath, `${stamp} UTC | cpu-gemm, square FP32 GEMM, GFLOP/s | ${machine} | commit ${commit} | ${figures}\n`);

console.log(JSON.stringify({ bench: 'cpu-gemm', date: new Date().toISOString(), machine, commit, dtype: 'f32', rows }));
