// Training metrics as one self-contained SVG file (no scripts, no external fonts or CSS), written
// beside the checkpoint after training. Two panels share the step axis:
//   1. loss against step: the main next-token loss, the loss of each MTP depth, and the eval loss
//      (line with circle markers);
//   2. expert load balance against step: max/mean token load of each MoE layer, with a dashed
//      reference line at 1.0 (perfect balance).
// Input records are the trainer's metrics JSONL lines. Points with a non-finite coordinate are
// skipped (and the panel says so); a step logged twice (training resumed from an earlier
// checkpoint) keeps its last record; each series is reduced to at most MAX_POINTS points.

import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export interface StepMetrics {
  step: number;
  loss: number;
  main_loss: number;
  mtp_loss: number[];
  balance_loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  /** One entry per MoE layer. */
  expert_load: { layer: number; max_over_mean: number; min_over_mean: number; dead: number }[];
}

export interface EvalMetrics {
  step: number;
  eval_loss: number;
  eval_ppl: number;
}

/** Most points drawn per series; longer series are reduced (first and last point kept). */
export const MAX_POINTS = 2000;

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/** Dash patterns for series beyond the palette: the n-th trip round the palette gets DASHES[n]. */
const DASHES = ["", "6 3", "2 2", "8 3 2 3"];

const WIDTH = 960;
const TITLE_HEIGHT = 40;
const PANEL_HEIGHT = 340;
const MARGIN = { left: 72, right: 16, top: 34, bottom: 48 };
const LEGEND_ROW = 16;
const CHAR_WIDTH = 6.6; // rough width of one 11px sans-serif character, for legend layout
const FONT = 'font-family="sans-serif"';

interface Point {
  x: number;
  y: number;
}

interface Series {
  label: string;
  color: string;
  dash: string;
  points: Point[];
  markers: boolean;
}

interface Ticks {
  lo: number;
  hi: number;
  step: number;
  values: number[];
}

/** Escapes text for SVG character data and attribute values; drops characters XML forbids. */
export function escapeXml(text: string): string {
  return text
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/** 1, 2, 5 or 10 times a power of ten, nearest to `x`. */
function niceNumber(x: number): number {
  const exponent = Math.floor(Math.log10(x));
  const fraction = x / 10 ** exponent;
  return (fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10) * 10 ** exponent;
}

function decimalsOf(step: number): number {
  return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
}

/**
 * About `count` round tick values covering [lo, hi] (Heckbert's nice numbers); the returned
 * lo/hi are the outer ticks, so the axis ends on a labelled value. An empty range is widened.
 * The step is the nice number nearest (hi - lo) / (count - 1), so the count comes out between
 * about count/1.5 and count*1.5; `minStep` (a power of ten) keeps e.g. whole-number axes whole.
 */
export function niceTicks(lo: number, hi: number, count = 6, minStep = 0): Ticks {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.05 : 1;
    lo -= pad;
    hi += pad;
  }
  const step = Math.max(minStep, niceNumber((hi - lo) / Math.max(1, count - 1)));
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const decimals = decimalsOf(step);
  const values: number[] = [];
  for (let i = first; i <= last; i++) values.push(Number((i * step).toFixed(decimals)));
  return { lo: values[0], hi: values[values.length - 1], step, values };
}

/** A tick label: 5k / 1.5M when the step is a multiple of 1000, otherwise as many decimals as the step needs. */
export function formatTick(value: number, step: number): string {
  const fixed = (v: number, s: number): string => Number(v.toFixed(decimalsOf(s))).toString();
  if (step >= 1e5 && Math.abs(value) >= 1e6) return `${fixed(value / 1e6, step / 1e6)}M`;
  if (step >= 1e3) return value === 0 ? "0" : `${fixed(value / 1e3, step / 1e3)}k`;
  return fixed(value, step);
}

/** Linear map from [d0, d1] onto [r0, r1]. */
function scale(d0: number, d1: number, r0: number, r1: number): (v: number) => number {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

/**
 * At most `max` points (max >= 4), keeping the first and the last. The interior is cut into
 * buckets of consecutive points and each bucket keeps its lowest and highest point (in step
 * order), so loss spikes survive the reduction. A longer series comes out with exactly
 * 2 + 2 * floor((max - 2) / 2) points: `max` for even `max`.
 */
export function downsample<T extends { y: number }>(points: T[], max = MAX_POINTS): T[] {
  if (points.length <= max) return points;
  const interior = points.length - 2;
  const buckets = Math.floor((Math.max(4, max) - 2) / 2);
  const out: T[] = [points[0]];
  for (let b = 0; b < buckets; b++) {
    const start = 1 + Math.floor((b * interior) / buckets);
    const end = 1 + Math.floor(((b + 1) * interior) / buckets); // exclusive; every bucket has >= 2 points
    let lowest = start;
    let highest = start;
    for (let i = start + 1; i < end; i++) {
      if (points[i].y < points[lowest].y) lowest = i;
      if (points[i].y > points[highest].y) highest = i;
    }
    if (lowest === highest) highest = end - 1; // a flat bucket: keep its ends
    out.push(points[Math.min(lowest, highest)], points[Math.max(lowest, highest)]);
  }
  out.push(points[points.length - 1]);
  return out;
}

function styleOf(index: number): { color: string; dash: string } {
  return { color: PALETTE[index % PALETTE.length], dash: DASHES[Math.floor(index / PALETTE.length) % DASHES.length] };
}

function isEval(r: StepMetrics | EvalMetrics): r is EvalMetrics {
  return "eval_loss" in r;
}

/** Last record per step (a resumed run logs some steps twice), in step order. */
function lastPerStep<T extends { step: number }>(records: T[]): T[] {
  const byStep = new Map<number, T>();
  for (const r of records) byStep.set(r.step, r);
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** Builds a series from (x, y) pairs, dropping non-finite pairs and counting them in `skipped`. */
function makeSeries(label: string, index: number, pairs: [number, number][], skipped: { n: number }, markers = false): Series {
  const points: Point[] = [];
  for (const [x, y] of pairs) {
    if (Number.isFinite(x) && Number.isFinite(y)) points.push({ x, y });
    else skipped.n++;
  }
  return { label, ...styleOf(index), points: downsample(points), markers };
}

function fmt(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

function polyline(points: Point[], sx: (v: number) => number, sy: (v: number) => number, s: Series): string {
  const coords = points.map((p) => `${fmt(sx(p.x))},${fmt(sy(p.y))}`).join(" ");
  const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
  return `<polyline data-series="${escapeXml(s.label)}" fill="none" stroke="${s.color}" stroke-width="1.5" stroke-linejoin="round"${dash} points="${coords}"/>`;
}

function text(x: number, y: number, content: string, attrs = ""): string {
  return `<text x="${fmt(x)}" y="${fmt(y)}" ${FONT} ${attrs}>${escapeXml(content)}</text>`;
}

interface PanelSpec {
  title: string;
  yTitle: string;
  series: Series[];
  /** Horizontal dashed reference lines (always inside the y range). */
  references: number[];
  /** Lines of notes drawn in the plot area's top-left corner. */
  notes: string[];
  /** Shown instead of the plot when no series has a point. */
  empty: string;
}

interface Frame {
  top: number;
  plotLeft: number;
  plotWidth: number;
  xTicks: Ticks;
}

function legendColumns(entries: number): { columns: number; rows: number } {
  const rows = Math.max(1, Math.floor((PANEL_HEIGHT - MARGIN.top - MARGIN.bottom) / LEGEND_ROW));
  return { columns: Math.ceil(entries / rows), rows };
}

function legendColumnWidth(series: Series[]): number {
  const longest = series.reduce((m, s) => Math.max(m, s.label.length), 0);
  return 34 + longest * CHAR_WIDTH;
}

function legendWidth(series: Series[]): number {
  const drawn = series.filter((s) => s.points.length > 0);
  if (drawn.length === 0) return 0;
  return legendColumns(drawn.length).columns * legendColumnWidth(drawn) + 12;
}

function renderPanel(spec: PanelSpec, frame: Frame): string {
  const { top, plotLeft, plotWidth, xTicks } = frame;
  const plotTop = top + MARGIN.top;
  const plotHeight = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const plotBottom = plotTop + plotHeight;
  const out: string[] = [];
  out.push(text(plotLeft, top + 20, spec.title, 'font-size="14" font-weight="bold"'));
  out.push(`<rect x="${plotLeft}" y="${plotTop}" width="${fmt(plotWidth)}" height="${plotHeight}" fill="#fff" stroke="#999"/>`);
  spec.notes.forEach((note, i) => {
    out.push(text(plotLeft + 8, plotTop + 16 + i * 14, note, 'font-size="11" fill="#b00"'));
  });
  const drawn = spec.series.filter((s) => s.points.length > 0);
  if (drawn.length === 0) {
    out.push(text(plotLeft + plotWidth / 2, plotTop + plotHeight / 2, spec.empty, 'font-size="14" fill="#666" text-anchor="middle"'));
    return out.join("\n");
  }

  let yMin = Infinity;
  let yMax = -Infinity;
  for (const y of [...drawn.flatMap((s) => s.points.map((p) => p.y)), ...spec.references]) {
    yMin = Math.min(yMin, y);
    yMax = Math.max(yMax, y);
  }
  const yTicks = niceTicks(yMin, yMax, 6);
  const sx = scale(xTicks.lo, xTicks.hi, plotLeft, plotLeft + plotWidth);
  const sy = scale(yTicks.lo, yTicks.hi, plotBottom, plotTop);

  // grid, ticks and tick labels
  for (const v of yTicks.values) {
    const y = sy(v);
    out.push(`<line x1="${plotLeft}" y1="${fmt(y)}" x2="${fmt(plotLeft + plotWidth)}" y2="${fmt(y)}" stroke="#e5e5e5"/>`);
    out.push(text(plotLeft - 6, y + 4, formatTick(v, yTicks.step), 'font-size="11" text-anchor="end"'));
  }
  for (const v of xTicks.values) {
    const x = sx(v);
    out.push(`<line x1="${fmt(x)}" y1="${plotTop}" x2="${fmt(x)}" y2="${plotBottom}" stroke="#e5e5e5"/>`);
    out.push(`<line x1="${fmt(x)}" y1="${plotBottom}" x2="${fmt(x)}" y2="${plotBottom + 5}" stroke="#999"/>`);
    out.push(text(x, plotBottom + 18, formatTick(v, xTicks.step), 'font-size="11" text-anchor="middle"'));
  }
  out.push(text(plotLeft + plotWidth / 2, plotBottom + 38, "step", 'font-size="12" text-anchor="middle"'));
  const yTitleX = plotLeft - 54;
  const yTitleY = plotTop + plotHeight / 2;
  out.push(text(yTitleX, yTitleY, spec.yTitle, `font-size="12" text-anchor="middle" transform="rotate(-90 ${fmt(yTitleX)} ${fmt(yTitleY)})"`));

  for (const r of spec.references) {
    const y = sy(r);
    out.push(`<line x1="${plotLeft}" y1="${fmt(y)}" x2="${fmt(plotLeft + plotWidth)}" y2="${fmt(y)}" stroke="#333" stroke-width="1" stroke-dasharray="5 4"/>`);
  }

  // series: a polyline each; circles on marker series, and on one-point series so they show
  for (const s of drawn) {
    out.push(polyline(s.points, sx, sy, s));
    if (s.markers || s.points.length === 1) {
      for (const p of s.points) {
        out.push(`<circle data-series="${escapeXml(s.label)}" cx="${fmt(sx(p.x))}" cy="${fmt(sy(p.y))}" r="3" fill="${s.color}"/>`);
      }
    }
  }

  // legend, right of the plot, in as many columns as needed
  const { rows } = legendColumns(drawn.length);
  const columnWidth = legendColumnWidth(drawn);
  drawn.forEach((s, i) => {
    const x = plotLeft + plotWidth + 12 + Math.floor(i / rows) * columnWidth;
    const y = plotTop + 8 + (i % rows) * LEGEND_ROW;
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    out.push(`<line x1="${fmt(x)}" y1="${fmt(y)}" x2="${fmt(x + 22)}" y2="${fmt(y)}" stroke="${s.color}" stroke-width="2"${dash}/>`);
    if (s.markers) out.push(`<circle cx="${fmt(x + 11)}" cy="${fmt(y)}" r="3" fill="${s.color}"/>`);
    out.push(text(x + 28, y + 4, s.label, 'font-size="11"'));
  });
  return out.join("\n");
}

function skippedNote(n: number): string[] {
  return n > 0 ? [`${n} non-finite value${n === 1 ? "" : "s"} skipped`] : [];
}

/** The SVG text for the training records: loss panel above, expert load balance panel below. */
export function renderTrainingPlot(records: (StepMetrics | EvalMetrics)[], title: string): string {
  const steps = lastPerStep(records.filter((r): r is StepMetrics => !isEval(r)));
  const evals = lastPerStep(records.filter(isEval));

  // panel 1: losses
  const lossSkipped = { n: 0 };
  const depths = steps.reduce((m, r) => Math.max(m, r.mtp_loss?.length ?? 0), 0);
  const lossSeries: Series[] = [makeSeries("main loss", 0, steps.map((r) => [r.step, r.main_loss]), lossSkipped)];
  for (let k = 0; k < depths; k++) {
    const pairs: [number, number][] = [];
    for (const r of steps) if (r.mtp_loss && k < r.mtp_loss.length) pairs.push([r.step, r.mtp_loss[k]]);
    lossSeries.push(makeSeries(`MTP depth ${k + 1} loss`, 1 + k, pairs, lossSkipped));
  }
  if (evals.length > 0) lossSeries.push(makeSeries("eval loss", 1 + depths, evals.map((r) => [r.step, r.eval_loss]), lossSkipped, true));

  // panel 2: max/mean expert load per MoE layer
  const loadSkipped = { n: 0 };
  const layerPairs = new Map<number, [number, number][]>();
  for (const r of steps) {
    for (const e of r.expert_load ?? []) {
      let pairs = layerPairs.get(e.layer);
      if (!pairs) layerPairs.set(e.layer, (pairs = []));
      pairs.push([r.step, e.max_over_mean]);
    }
  }
  const layers = [...layerPairs.keys()].sort((a, b) => a - b);
  const loadSeries = layers.map((layer, i) => makeSeries(`layer ${layer}`, i, layerPairs.get(layer)!, loadSkipped));

  // shared step axis and plot width, so the panels line up
  let xMin = Infinity;
  let xMax = -Infinity;
  for (const s of [...lossSeries, ...loadSeries]) {
    for (const p of s.points) {
      xMin = Math.min(xMin, p.x);
      xMax = Math.max(xMax, p.x);
    }
  }
  if (!(xMin <= xMax)) [xMin, xMax] = [0, 1]; // nothing to draw
  if (xMin === xMax) [xMin, xMax] = [Math.max(0, xMin - 1), xMax + 1];
  const xTicks = niceTicks(xMin, xMax, 8, 1); // steps are whole numbers
  const legend = Math.max(legendWidth(lossSeries), legendWidth(loadSeries));
  const plotWidth = Math.max(240, WIDTH - MARGIN.left - MARGIN.right - legend);
  const width = Math.ceil(MARGIN.left + plotWidth + legend + MARGIN.right);
  const height = TITLE_HEIGHT + 2 * PANEL_HEIGHT;

  const loss = renderPanel(
    { title: "Loss", yTitle: "loss", series: lossSeries, references: [], notes: skippedNote(lossSkipped.n), empty: "no loss values" },
    { top: TITLE_HEIGHT, plotLeft: MARGIN.left, plotWidth, xTicks },
  );
  const load = renderPanel(
    {
      title: "Expert load balance (max / mean tokens per expert)",
      yTitle: "max / mean load",
      series: loadSeries,
      references: [1],
      notes: skippedNote(loadSkipped.n),
      empty: layers.length === 0 ? "no MoE layers" : "no expert load values",
    },
    { top: TITLE_HEIGHT + PANEL_HEIGHT, plotLeft: MARGIN.left, plotWidth, xTicks },
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#fafafa"/>`,
    text(width / 2, 26, title, 'font-size="16" font-weight="bold" text-anchor="middle"'),
    loss,
    load,
    `</svg>`,
  ].join("\n");
}

/** JSON writes NaN and ±Infinity as null; some writers use the strings "NaN"/"Infinity". */
function toNumber(v: unknown): number {
  if (typeof v === "number") return v;
  if (v === null) return NaN;
  if (typeof v === "string" && /^[+-]?(NaN|Infinity)$/.test(v)) return Number(v);
  throw new Error(`expected a number, got ${JSON.stringify(v)}`);
}

function parseRecord(line: string): StepMetrics | EvalMetrics {
  const o: unknown = JSON.parse(line);
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new Error("not a JSON object");
  const r = o as Record<string, unknown>;
  if (typeof r.step !== "number") throw new Error('missing numeric "step"');
  if ("eval_loss" in r) return { step: r.step, eval_loss: toNumber(r.eval_loss), eval_ppl: toNumber(r.eval_ppl ?? null) };
  if (!("main_loss" in r)) throw new Error('neither "main_loss" nor "eval_loss"');
  const mtp = r.mtp_loss ?? [];
  if (!Array.isArray(mtp)) throw new Error('"mtp_loss" is not an array');
  const load = r.expert_load ?? [];
  if (!Array.isArray(load)) throw new Error('"expert_load" is not an array');
  return {
    step: r.step,
    loss: toNumber(r.loss ?? null),
    main_loss: toNumber(r.main_loss),
    mtp_loss: mtp.map(toNumber),
    balance_loss: toNumber(r.balance_loss ?? null),
    lr: toNumber(r.lr ?? null),
    grad_norm: toNumber(r.grad_norm ?? null),
    tokens_per_s: toNumber(r.tokens_per_s ?? null),
    expert_load: load.map((e: unknown) => {
      const x = e as Record<string, unknown> | null;
      if (typeof x !== "object" || x === null || typeof x.layer !== "number") throw new Error('"expert_load" entry without a numeric "layer"');
      return { layer: x.layer, max_over_mean: toNumber(x.max_over_mean), min_over_mean: toNumber(x.min_over_mean ?? null), dead: toNumber(x.dead ?? 0) };
    }),
  };
}

/** Reads the metrics JSONL file (blank lines skipped) and writes its plot to `svgPath` atomically. */
export function writeTrainingPlot(metricsJsonlPath: string, svgPath: string, title: string): void {
  const lines = readFileSync(metricsJsonlPath, "utf8").split(/\r?\n/);
  const records: (StepMetrics | EvalMetrics)[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      records.push(parseRecord(line));
    } catch (err) {
      throw new Error(`${metricsJsonlPath}:${i + 1}: malformed metrics line: ${(err as Error).message}`);
    }
  });
  const svg = renderTrainingPlot(records, title);
  const temporary = join(dirname(svgPath), `.${basename(svgPath)}.${process.pid}.${Date.now()}.tmp`);
  try {
    writeFileSync(temporary, svg);
    renameSync(temporary, svgPath);
  } catch (err) {
    rmSync(temporary, { force: true });
    throw err;
  }
}
