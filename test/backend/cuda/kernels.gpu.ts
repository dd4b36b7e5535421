// Every kernel of kernels/*.cu against a plain TypeScript reference on fresh random inputs,
// through the launchers of ops.ts: BF16 within ~1e-2 relative, FP32 within ~1e-5, indices
// exactly. Skipped with the reason where there is no GPU.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import type { RouterConfig } from '../../../src/backend/backend.js';
import * as ops from '../../../src/backend/cuda/ops.js';
import {
  openGpu, seededRandom, randomNormal, roundBf16, toBf16Bits, uploadAs, downloadAs, downloadInt, assertClose, RTOL, type Kind, type Rng,
} from './gpu-helpers.js';

const { ctx, skip } = openGpu();
after(() => ctx?.dispose());
const KINDS: Kind[] = ['bf16', 'f32'];

/** Inputs as the device holds them: BF16-rounded for bf16 buffers. */
function asStored(kind: Kind, x: Float32Array): Float32Array {
  return kind === 'bf16' ? roundBf16(x) : x;
}

test('casts f32 → bf16 (round to nearest even) and back are exact', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const n = 100003;
  const x = randomNormal(rng, n, 10);
  x[0] = 0; x[1] = -0; x[2] = 1e-40; x[3] = 3.4e38; x[4] = Infinity; x[5] = -Infinity;
  const px = c.upload(x);
  const pb = c.alloc(2 * n);
  const pf = c.alloc(4 * n);
  ops.castF32ToBf16(c, px, pb, n);
  ops.castBf16ToF32(c, pb, pf, n);
  const bits = new Uint16Array(n);
  c.copyToHost(bits, pb);
  const back = new Float32Array(n);
  c.copyToHost(back, pf);
  for (let i = 0; i < n; i++) assert.equal(bits[i], toBf16Bits(x[i]!), `bf16 bits of ${x[i]} (seed ${rng.seed})`);
  assert.deepEqual(back, roundBf16(x));
  for (const p of [px, pb, pf]) c.free(p);
});

test('add and addInPlace, vectorised and misaligned', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    const e = kind === 'bf16' ? 2 : 4;
    for (const [n, offset] of [[1000003, 0], [4096, 1], [7, 0]] as const) {
      const a = asStored(kind, randomNormal(rng, n + offset)), b = asStored(kind, randomNormal(rng, n + offset));
      const pa = uploadAs(c, kind, a), pb = uploadAs(c, kind, b), py = c.alloc(e * (n + offset));
      ops.add(c, kind, pa + e * offset, pb + e * offset, py + e * offset, n);
      const y = downloadAs(c, kind, py, n + offset).subarray(offset);
      assertClose(`add ${kind} n=${n} offset=${offset}`, y, a.subarray(offset).map((v, i) => v + b[i + offset]!), RTOL[kind], rng.seed);
      const alpha = -0.75;
      ops.addInPlace(c, kind, pa + e * offset, pb + e * offset, alpha, n);
      const got = downloadAs(c, kind, pa, n + offset).subarray(offset);
      assertClose(`addInPlace ${kind} n=${n} offset=${offset}`, got, a.subarray(offset).map((v, i) => v + alpha * b[i + offset]!), RTOL[kind], rng.seed);
      for (const p of [pa, pb, py]) c.free(p);
    }
  }
});

test('swiglu', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    for (const n of [64 * 1408, 1001]) {
      const g = asStored(kind, randomNormal(rng, n, 3)), u = asStored(kind, randomNormal(rng, n));
      const pg = uploadAs(c, kind, g), pu = uploadAs(c, kind, u), py = c.alloc(4 * n);
      ops.swiglu(c, kind, pg, pu, py, n);
      const want = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
      assertClose(`swiglu ${kind} n=${n}`, downloadAs(c, kind, py, n), want, RTOL[kind], rng.seed);
      for (const p of [pg, pu, py]) c.free(p);
    }
  }
});

test('rmsNorm, vector and scalar paths', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    for (const [rows, d] of [[37, 7168], [5, 100], [3, 2048], [2, 8]] as const) {
      const x = asStored(kind, randomNormal(rng, rows * d, 2)), w = asStored(kind, randomNormal(rng, d));
      const px = uploadAs(c, kind, x), pw = uploadAs(c, kind, w), py = c.alloc(4 * rows * d);
      const eps = 1e-6;
      ops.rmsNorm(c, kind, px, pw, py, rows, d, eps);
      const want = new Float32Array(rows * d);
      for (let r = 0; r < rows; r++) {
        let ss = 0;
        for (let i = 0; i < d; i++) ss += x[r * d + i]! ** 2;
        const inv = 1 / Math.sqrt(ss / d + eps);
        for (let i = 0; i < d; i++) want[r * d + i] = x[r * d + i]! * inv * w[i]!;
      }
      assertClose(`rmsNorm ${kind} ${rows}×${d}`, downloadAs(c, kind, py, rows * d), want, RTOL[kind], rng.seed);
      for (const p of [px, pw, py]) c.free(p);
    }
  }
});

test('embedding gathers rows; an id out of range gives NaN', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    for (const d of [64, 7]) {
      const V = 1000, n = 300;
      const table = asStored(kind, randomNormal(rng, V * d));
      const ids = Int32Array.from({ length: n }, () => rng.int(0, V - 1));
      ids[5] = V;
      const pt = uploadAs(c, kind, table), pi = c.upload(ids), py = c.alloc(4 * n * d);
      ops.embedding(c, kind, pt, pi, py, n, d, V);
      const y = downloadAs(c, kind, py, n * d);
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < d; i++) {
          if (t === 5) assert.ok(Number.isNaN(y[t * d + i]), 'out-of-range id');
          else assert.equal(y[t * d + i], table[ids[t]! * d + i], `row ${t} (seed ${rng.seed})`);
        }
      }
      for (const p of [pt, pi, py]) c.free(p);
    }
  }
});

function ropeReference(x: Float32Array, cos: Float32Array, sin: Float32Array, pos: Int32Array, N: number, H: number, W: number, off: number, rot: number, sign: number): Float32Array {
  const half = rot / 2;
  const y = Float32Array.from(x);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const base = (n * H + h) * W + off;
      for (let i = 0; i < half; i++) {
        const x0 = x[base + 2 * i]!, x1 = x[base + 2 * i + 1]!;
        const cv = cos[pos[n]! * half + i]!, sv = sign * sin[pos[n]! * half + i]!;
        y[base + 2 * i] = x0 * cv - x1 * sv;
        y[base + 2 * i + 1] = x1 * cv + x0 * sv;
      }
    }
  }
  return y;
}

test('rope rotates interleaved pairs (bf16/f32 tables, inverse)', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  const N = 37, H = 4, W = 48, off = 16, rot = 32, P = 64, half = rot / 2;
  const angles = Float64Array.from({ length: P * half }, (_, k) => Math.floor(k / half) * 10000 ** (-(2 * (k % half)) / rot));
  const cos = Float32Array.from(angles, Math.cos), sin = Float32Array.from(angles, Math.sin);
  const pos = Int32Array.from({ length: N }, () => rng.int(0, P - 1));
  const pp = c.upload(pos);
  for (const [kind, tables] of [['bf16', 'bf16'], ['bf16', 'f32'], ['f32', 'f32']] as const) {
    const x = asStored(kind, randomNormal(rng, N * H * W));
    const cs = asStored(tables, cos), sn = asStored(tables, sin);
    const px = uploadAs(c, kind, x), pc = uploadAs(c, tables, cos), ps = uploadAs(c, tables, sin), py = c.alloc(4 * N * H * W);
    for (const inverse of [false, true]) {
      ops.rope(c, kind, tables, px, pc, ps, pp, py, N, H, W, off, rot, P, inverse);
      const want = ropeReference(x, cs, sn, pos, N, H, W, off, rot, inverse ? -1 : 1);
      assertClose(`rope ${kind} x, ${tables} tables${inverse ? ', inverse' : ''}`, downloadAs(c, kind, py, N * H * W), want, RTOL[kind], rng.seed);
    }
    for (const p of [px, pc, ps, py]) c.free(p);
  }
  c.free(pp);
});

test('copy2d: strided rows, batches, 2- and 4-byte elements', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const e of [2, 4]) {
    const B = 3, rows = 50, srcLd = 70, dstLd = 90, cols = 33, srcBatch = rows * srcLd + 5, dstBatch = rows * dstLd + 11;
    const src = Uint32Array.from({ length: B * srcBatch }, () => rng.uint32() & (e === 2 ? 0xffff : 0xffffffff));
    const srcArr = e === 2 ? Uint16Array.from(src) : src;
    const ps = c.upload(srcArr);
    const dstInit = e === 2 ? new Uint16Array(B * dstBatch).fill(7) : new Uint32Array(B * dstBatch).fill(7);
    const pd = c.upload(dstInit);
    ops.copy2d(c, e, ps + e * 3, srcLd, srcBatch, pd + e * 2, dstLd, dstBatch, rows, cols, B);
    const out = e === 2 ? new Uint16Array(B * dstBatch) : new Uint32Array(B * dstBatch);
    c.copyToHost(out, pd);
    for (let b = 0; b < B; b++) {
      for (let r = 0; r < rows; r++) {
        for (let k = 0; k < dstLd; k++) {
          const want = k < cols ? srcArr[b * srcBatch + 3 + r * srcLd + k] : 7;
          assert.equal(out[b * dstBatch + 2 + r * dstLd + k], want, `e=${e} b=${b} r=${r} c=${k}`);
        }
      }
    }
    c.free(ps);
    c.free(pd);
  }
});

/** SPEC §3 routing in FP64: the reference for router.cu. */
function routeReference(logits: Float32Array, bias: Float32Array | null, N: number, E: number, cfg: RouterConfig) {
  const K = cfg.topK, per = E / cfg.nGroup;
  const scores = new Float64Array(N * E), choice = new Float64Array(N * E);
  const indices = new Int32Array(N * K), weights = new Float64Array(N * K);
  const allowedOf: Uint8Array[] = [];
  const best = (vals: ArrayLike<number>, count: number, ok: (i: number) => boolean) => {
    const taken = new Set<number>();
    const out: number[] = [];
    for (let c = 0; c < count; c++) {
      let bi = -1;
      for (let i = 0; i < vals.length; i++) if (ok(i) && !taken.has(i) && (bi < 0 || vals[i]! > vals[bi]!)) bi = i;
      taken.add(bi);
      out.push(bi);
    }
    return out;
  };
  for (let n = 0; n < N; n++) {
    const l = logits.subarray(n * E, (n + 1) * E);
    const s = scores.subarray(n * E, (n + 1) * E), ch = choice.subarray(n * E, (n + 1) * E);
    if (cfg.scoring === 'sigmoid') for (let e = 0; e < E; e++) s[e] = 1 / (1 + Math.exp(-l[e]!));
    else {
      const m = Math.max(...l);
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(l[e]! - m);
      for (let e = 0; e < E; e++) s[e] = Math.exp(l[e]! - m) / sum;
    }
    for (let e = 0; e < E; e++) ch[e] = s[e]! + (bias ? bias[e]! : 0);
    const allowed = new Uint8Array(E).fill(1);
    if (cfg.groupLimited && cfg.nGroup > 1) {
      const gs = Array.from({ length: cfg.nGroup }, (_, g) => best(ch.subarray(g * per, (g + 1) * per), cfg.groupScoreTop2 ? 2 : 1, () => true)
        .reduce((a, i) => a + ch[g * per + i]!, 0));
      const kept = new Set(best(gs, cfg.topkGroup, () => true));
      for (let e = 0; e < E; e++) allowed[e] = kept.has(Math.floor(e / per)) ? 1 : 0;
    }
    allowedOf.push(allowed);
    const idx = best(ch, K, (i) => allowed[i] === 1);
    const sum = idx.reduce((a, i) => a + s[i]!, 0);
    idx.forEach((i, k) => {
      indices[n * K + k] = i;
      weights[n * K + k] = s[i]! * (cfg.normTopkProb ? 1 / (sum + 1e-20) : 1) * cfg.routedScalingFactor;
    });
  }
  return { scores, choice, indices, weights, allowedOf };
}

const ROUTERS: [string, number, RouterConfig, boolean][] = [
  ['V3 (sigmoid, 8 groups keep 4, top-2 group score, bias)', 256, { topK: 8, nGroup: 8, topkGroup: 4, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 2.5 }, true],
  ['V2-Lite (softmax, greedy)', 64, { topK: 6, nGroup: 1, topkGroup: 1, scoring: 'softmax', groupLimited: false, groupScoreTop2: false, normTopkProb: false, routedScalingFactor: 1 }, false],
  ['V2 (softmax, 8 groups keep 3, max group score)', 160, { topK: 6, nGroup: 8, topkGroup: 3, scoring: 'softmax', groupLimited: true, groupScoreTop2: false, normTopkProb: false, routedScalingFactor: 16 }, false],
  ['small (sigmoid, 4 groups keep 2, 40 experts)', 40, { topK: 3, nGroup: 4, topkGroup: 2, scoring: 'sigmoid', groupLimited: true, groupScoreTop2: true, normTopkProb: true, routedScalingFactor: 1 }, true],
];

test('routerTopK: scores, group-limited top-k and gating weights', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const [name, E, cfg, withBias] of ROUTERS) {
    for (const [logitKind, biasKind] of [['f32', 'f32'], ['bf16', 'bf16'], ['f32', 'bf16'], ['bf16', 'f32']] as const) {
      const N = 203, K = cfg.topK;
      const logits = asStored(logitKind, randomNormal(rng, N * E, 2));
      const bias = withBias ? asStored(biasKind, randomNormal(rng, E, 0.1)) : null;
      const pl = uploadAs(c, logitKind, logits), pb = bias ? uploadAs(c, biasKind, bias) : 0;
      const ps = c.alloc(4 * N * E), pi = c.alloc(4 * N * K), pw = c.alloc(4 * N * K);
      ops.routerTopK(c, logitKind, bias ? biasKind : 'f32', pl, pb, ps, pi, pw, N, E, cfg);
      const ref = routeReference(logits, bias, N, E, cfg);
      const label = `${name}, ${logitKind} logits${bias ? `, ${biasKind} bias` : ''}`;
      assertClose(`router scores ${label}`, downloadAs(c, 'f32', ps, N * E), ref.scores, 1e-5, rng.seed);
      const idx = downloadInt(c, pi, N * K), w = downloadAs(c, 'f32', pw, N * K);
      let nearTies = 0;
      for (let n = 0; n < N; n++) {
        const got = [...idx.subarray(n * K, (n + 1) * K)], want = [...ref.indices.subarray(n * K, (n + 1) * K)];
        if (got.join() === want.join()) continue;
        // Only a near tie between float32 and float64 arithmetic may reorder or swap experts.
        const ch = ref.choice.subarray(n * E, (n + 1) * E);
        const weakest = (list: number[]) => Math.min(...list.map((e) => ch[e]!));
        assert.ok(got.every((e) => e >= 0 && e < E && ref.allowedOf[n]![e] === 1) && Math.abs(weakest(got) - weakest(want)) < 1e-5,
          `${label}: token ${n} picked ${got} want ${want} (seed ${rng.seed})`);
        nearTies++;
      }
      assert.ok(nearTies <= 2, `${label}: ${nearTies} tokens routed differently (seed ${rng.seed})`);
      if (nearTies === 0) assertClose(`router weights ${label}`, w, ref.weights, 1e-5, rng.seed);
      for (const p of [pl, pb, ps, pi, pw]) c.free(p);
    }
  }
});

function permuteReference(indices: Int32Array, N: number, K: number, E: number) {
  const counts = new Array<number>(E).fill(0);
  for (const e of indices) counts[e]!++;
  const start = new Int32Array(E);
  for (let e = 1; e < E; e++) start[e] = start[e - 1]! + counts[e - 1]!;
  const sourceSlot = new Int32Array(N * K);
  for (let slot = 0; slot < N * K; slot++) sourceSlot[start[indices[slot]!]!++] = slot;
  return { counts, sourceSlot };
}

function randomRouting(rng: Rng, N: number, K: number, E: number): Int32Array {
  const idx = new Int32Array(N * K);
  for (let n = 0; n < N; n++) {
    const chosen = new Set<number>();
    while (chosen.size < K) chosen.add(rng.int(0, E - 1));
    idx.set([...chosen], n * K);
  }
  return idx;
}

test('moePermute (stable by slot) and moeUnpermute', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    for (const [N, K, E, d] of [[300, 8, 32, 72], [77, 6, 64, 33], [1, 2, 4, 8], [2000, 8, 256, 128]] as const) {
      const x = asStored(kind, randomNormal(rng, N * d));
      const indices = randomRouting(rng, N, K, E);
      const px = uploadAs(c, kind, x), pidx = c.upload(indices);
      const perm = ops.moePermute(c, kind, px, pidx, N, K, d, E);
      const ref = permuteReference(indices, N, K, E);
      assert.deepEqual(perm.counts, ref.counts, `counts ${kind} N=${N} (seed ${rng.seed})`);
      assert.deepEqual(downloadInt(c, perm.sourceSlot, N * K), ref.sourceSlot, `sourceSlot ${kind} N=${N} (seed ${rng.seed})`);
      const rows = downloadAs(c, kind, perm.rows, N * K * d);
      for (let r = 0; r < N * K; r++) {
        const n = Math.floor(ref.sourceSlot[r]! / K);
        for (let i = 0; i < d; i++) assert.equal(rows[r * d + i], x[n * d + i], `row ${r} (seed ${rng.seed})`);
      }
      // Unpermute expert outputs with f32 (router) and, for bf16, bf16 weights.
      const expertOut = asStored(kind, randomNormal(rng, N * K * d));
      const pe = uploadAs(c, kind, expertOut);
      for (const wKind of kind === 'bf16' ? (['f32', 'bf16'] as const) : (['f32'] as const)) {
        const weights = asStored(wKind, Float32Array.from({ length: N * K }, () => rng.uniform()));
        const pw = uploadAs(c, wKind, weights), py = c.alloc(4 * N * d);
        ops.moeUnpermute(c, kind, wKind, pe, perm.sourceSlot, pw, py, N, K, d);
        const want = new Float64Array(N * d);
        for (let r = 0; r < N * K; r++) {
          const slot = ref.sourceSlot[r]!, n = Math.floor(slot / K);
          for (let i = 0; i < d; i++) want[n * d + i] += weights[slot]! * expertOut[r * d + i]!;
        }
        assertClose(`moeUnpermute ${kind} rows, ${wKind} weights, N=${N} K=${K} d=${d}`, downloadAs(c, kind, py, N * d), want, RTOL[kind], rng.seed);
        c.free(pw);
        c.free(py);
      }
      for (const p of [px, pidx, pe, perm.rows, perm.sourceSlot]) c.free(p);
    }
  }
  // An expert index outside [0, E) is reported.
  const pidx = c.upload(new Int32Array([0, 5, 1, 2]));
  const px = c.upload(new Float32Array(2 * 8));
  assert.throws(() => ops.moePermute(c, 'f32', px, pidx, 2, 2, 8, 4), /1 of 4 expert indices are outside \[0, 4\)/);
  c.free(pidx);
  c.free(px);
});

/** Causal attention in FP64: score = (q1·k1 + q2·k2)·scale (see attention.cu for the layouts). */
function attentionReference(q1: Float32Array, q2: Float32Array | null, k1: Float32Array, k2: Float32Array | null, v: Float32Array, s: ops.AttentionShape, scale: number, qStart: number): Float64Array {
  const { B, Tq, Tk, S, H, Hk, D1, D2, Dv } = s;
  const out = new Float64Array(B * Tq * H * Dv);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < Tq; i++) {
      for (let h = 0; h < H; h++) {
        const row = (b * Tq + i) * H + h;
        const hk = Hk === 1 ? 0 : h;
        const last = Math.min(Tk - 1, qStart + i);
        const sc: number[] = [];
        for (let j = 0; j <= last; j++) {
          const kr = (b * S + j) * Hk + hk;
          let dot = 0;
          for (let d = 0; d < D1; d++) dot += q1[row * D1 + d]! * k1[kr * D1 + d]!;
          for (let d = 0; d < D2; d++) dot += q2![row * D2 + d]! * k2![kr * D2 + d]!;
          sc.push(dot * scale);
        }
        const m = Math.max(...sc);
        const p = sc.map((x) => Math.exp(x - m));
        const sum = p.reduce((a, x) => a + x, 0);
        for (let j = 0; j <= last; j++) {
          const kr = (b * S + j) * Hk + hk;
          for (let d = 0; d < Dv; d++) out[row * Dv + d] += (p[j]! / sum) * v[kr * Dv + d]!;
        }
      }
    }
  }
  return out;
}

test('attention: causal multi-head (prefill, chunked, decode) and MLA latent attention', { skip }, () => {
  const c = ctx!;
  const rng = seededRandom();
  for (const kind of KINDS) {
    // Multi-head: q [B, Tq, H, Dk], k [B, Tk, H, Dk], v [B, Tk, H, Dv].
    for (const [B, Tq, Tk, H, Dk, Dv, qStart] of [[2, 9, 9, 3, 40, 24, 0], [1, 5, 77, 2, 192, 128, 72], [3, 1, 100, 4, 64, 64, 99], [1, 40, 40, 1, 8, 520 - 8, 0]] as const) {
      const shape: ops.AttentionShape = { B, Tq, Tk, S: Tk, H, Hk: H, D1: Dk, D2: 0, Dv };
      const q = asStored(kind, randomNormal(rng, B * Tq * H * Dk)), k = asStored(kind, randomNormal(rng, B * Tk * H * Dk)), v = asStored(kind, randomNormal(rng, B * Tk * H * Dv));
      const pq = uploadAs(c, kind, q), pk = uploadAs(c, kind, k), pv = uploadAs(c, kind, v), po = c.alloc(4 * B * Tq * H * Dv);
      const scale = 1 / Math.sqrt(Dk);
      ops.attention(c, kind, pq, 0, pk, 0, pv, po, shape, scale, qStart);
      const want = attentionReference(q, null, k, null, v, shape, scale, qStart);
      assertClose(`attention ${kind} B=${B} Tq=${Tq} Tk=${Tk} H=${H} Dk=${Dk} Dv=${Dv} qStart=${qStart}`, downloadAs(c, kind, po, B * Tq * H * Dv), want, RTOL[kind], rng.seed);
      for (const p of [pq, pk, pv, po]) c.free(p);
    }
    // Latent: qLat [B, Tq, H, C], qPe [B, Tq, H, R], ckv [B, S, C], kpe [B, S, R], kvLen ≤ S.
    for (const [B, Tq, H, C, R, S, kvLen, qStart] of [[2, 3, 4, 64, 16, 100, 70, 67], [1, 1, 16, 512, 64, 300, 257, 256], [1, 6, 2, 32, 8, 10, 6, 0]] as const) {
      const shape: ops.AttentionShape = { B, Tq, Tk: kvLen, S, H, Hk: 1, D1: C, D2: R, Dv: C };
      const qLat = asStored(kind, randomNormal(rng, B * Tq * H * C)), qPe = asStored(kind, randomNormal(rng, B * Tq * H * R));
      const ckv = asStored(kind, randomNormal(rng, B * S * C)), kpe = asStored(kind, randomNormal(rng, B * S * R));
      const pq = uploadAs(c, kind, qLat), pr = uploadAs(c, kind, qPe), pc = uploadAs(c, kind, ckv), pk = uploadAs(c, kind, kpe), po = c.alloc(4 * B * Tq * H * C);
      const scale = 1 / Math.sqrt(192);
      ops.attention(c, kind, pq, pr, pc, pk, pc, po, shape, scale, qStart);
      const want = attentionReference(qLat, qPe, ckv, kpe, ckv, shape, scale, qStart);
      assertClose(`latent attention ${kind} B=${B} Tq=${Tq} H=${H} C=${C} R=${R} S=${S} kvLen=${kvLen} qStart=${qStart}`, downloadAs(c, kind, po, B * Tq * H * C), want, RTOL[kind], rng.seed);
      for (const p of [pq, pr, pc, pk, po]) c.free(p);
    }
  }
});
