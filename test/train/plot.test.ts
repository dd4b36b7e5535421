import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  downsample,
  escapeXml,
  type EvalMetrics,
  formatTick,
  MAX_POINTS,
  niceTicks,
  renderTrainingPlot,
  type StepMetrics,
  writeTrainingPlot,
} from "../../src/train/plot.js";
import { seededRandom } from "../helpers/random.js";
import { withTempDir } from "../helpers/temp-dir.js";

// the seed is random per run and printed on failure
const SEED = Math.floor(Math.random() * 2 ** 31);
const seedNote = `seed ${SEED}`;

/** Steps 1..steps every `every`, decaying losses with noise, eval every `evalEvery` steps. */
function makeRecords(random: () => number, steps: number, opts: { depths?: number; layers?: number[]; evalEvery?: number; every?: number } = {}): (StepMetrics | EvalMetrics)[] {
  const { depths = 1, layers = [1, 2, 3], evalEvery = 0, every = 1 } = opts;
  const out: (StepMetrics | EvalMetrics)[] = [];
  for (let step = 1; step <= steps; step += every) {
    const base = 3 + 8 * Math.exp(-step / (steps / 5 + 1)) + 0.2 * random();
    out.push({
      step,
      loss: base + 0.3,
      main_loss: base,
      mtp_loss: Array.from({ length: depths }, (_, k) => base + 0.2 * (k + 1) + 0.1 * random()),
      balance_loss: 0.01 * random(),
      lr: 3e-4,
      grad_norm: 1 + random(),
      tokens_per_s: 1000 + 100 * random(),
      expert_load: layers.map((layer) => ({ layer, max_over_mean: 1 + 2 * random() * Math.exp(-step / steps), min_over_mean: random(), dead: 0 })),
    });
    if (evalEvery > 0 && step % evalEvery === 0) out.push({ step, eval_loss: base + 0.1, eval_ppl: Math.exp(base + 0.1) });
  }
  return out;
}

/** Checks that tags nest properly (comments, self-closing tags and text content allowed). */
function assertBalancedTags(svg: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:[^>"']|"[^"]*"|'[^']*')*?)(\/?)>/g;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = tag.exec(svg)) !== null) {
    assert.ok(!svg.slice(last, m.index).includes("<"), `stray "<" before offset ${m.index}`);
    last = tag.lastIndex;
    const [, closing, name, , selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `unbalanced </${name}> at offset ${m.index}`);
    else stack.push(name);
  }
  assert.ok(!svg.slice(last).includes("<"), "stray '<' at the end");
  assert.deepEqual(stack, [], "unclosed tags");
  // every & starts an entity
  assert.ok(!/&(?!(amp|lt|gt|quot|#\d+);)/.test(svg), "bare &");
}

interface Line {
  series: string;
  points: [number, number][];
}

function unescape(s: string): string {
  return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, "&");
}

function polylines(svg: string): Line[] {
  return [...svg.matchAll(/<polyline data-series="([^"]*)"[^>]* points="([^"]*)"\/>/g)].map((m) => ({
    series: unescape(m[1]),
    points: m[2].split(" ").map((p) => p.split(",").map(Number) as [number, number]),
  }));
}

function circles(svg: string, series: string): number {
  return [...svg.matchAll(/<circle data-series="([^"]*)"/g)].filter((m) => unescape(m[1]) === series).length;
}

function texts(svg: string): string[] {
  return [...svg.matchAll(/<text [^>]*>([^<]*)<\/text>/g)].map((m) => unescape(m[1]));
}

test(`random metrics render to well-formed SVG with one polyline per series (${seedNote})`, () => {
  const random = seededRandom(SEED).uniform;
  const steps = 50 + Math.floor(random() * 400);
  const depths = 1 + Math.floor(random() * 3);
  const layers = Array.from({ length: 1 + Math.floor(random() * 5) }, (_, i) => 3 + i);
  const evalEvery = 10 + Math.floor(random() * 20);
  const records = makeRecords(random, steps, { depths, layers, evalEvery });
  const svg = renderTrainingPlot(records, "run <a> & b");
  assert.ok(svg.startsWith("<svg"), seedNote);
  assert.ok(svg.trimEnd().endsWith("</svg>"), seedNote);
  assertBalancedTags(svg);

  const lines = polylines(svg);
  const evalCount = records.filter((r) => "eval_loss" in r).length;
  const expected = new Map<string, number>([["main loss", steps]]);
  for (let k = 1; k <= depths; k++) expected.set(`MTP depth ${k} loss`, steps);
  expected.set("eval loss", evalCount);
  for (const l of layers) expected.set(`layer ${l}`, steps);
  assert.deepEqual(
    lines.map((l) => [l.series, l.points.length]),
    [...expected.entries()],
    seedNote,
  );
  for (const l of lines) for (const [x, y] of l.points) assert.ok(Number.isFinite(x) && Number.isFinite(y), `${l.series}: ${seedNote}`);
  // points run left to right (step order)
  for (const l of lines) for (let i = 1; i < l.points.length; i++) assert.ok(l.points[i][0] >= l.points[i - 1][0], l.series);

  const labels = texts(svg);
  for (const name of expected.keys()) assert.ok(labels.includes(name), `legend "${name}" (${seedNote})`);
  assert.equal(circles(svg, "eval loss"), evalCount, "one marker per eval record");
  assert.ok(labels.includes("step") && labels.includes("loss") && labels.includes("max / mean load"), "axis titles");
  assert.ok(svg.includes('stroke-dasharray="5 4"'), "dashed reference line at 1.0");
  assert.ok(!/<script|@import|url\(|href=/i.test(svg), "self-contained");
  assert.ok(!labels.some((t) => t.includes("non-finite")));
});

test("the title is escaped", () => {
  const svg = renderTrainingPlot(makeRecords(seededRandom(1).uniform, 5), `a<b>&"c'</svg><script>`);
  assertBalancedTags(svg);
  assert.ok(!svg.includes("<script>"));
  assert.ok(svg.includes("a&lt;b&gt;&amp;&quot;c&#39;&lt;/svg&gt;&lt;script&gt;"));
  assert.ok(texts(svg).includes(`a<b>&"c'</svg><script>`));
  assert.equal(escapeXml("x\u0001y"), "xy", "characters XML forbids are dropped");
});

test("a single record renders, with a visible point per series", () => {
  const [record] = makeRecords(seededRandom(2).uniform, 1, { depths: 2, layers: [1] });
  const svg = renderTrainingPlot([record], "one");
  assertBalancedTags(svg);
  const lines = polylines(svg);
  assert.deepEqual(lines.map((l) => [l.series, l.points.length]), [["main loss", 1], ["MTP depth 1 loss", 1], ["MTP depth 2 loss", 1], ["layer 1", 1]]);
  assert.equal(circles(svg, "main loss"), 1);
  for (const l of lines) for (const [x, y] of l.points) assert.ok(Number.isFinite(x) && Number.isFinite(y));
});

test("no records at all still render both panels", () => {
  const svg = renderTrainingPlot([], "empty");
  assertBalancedTags(svg);
  assert.equal(polylines(svg).length, 0);
  assert.ok(texts(svg).includes("no loss values"));
  assert.ok(texts(svg).includes("no MoE layers"));
});

test("no eval records: no eval series or legend entry", () => {
  const svg = renderTrainingPlot(makeRecords(seededRandom(3).uniform, 30), "no eval");
  assertBalancedTags(svg);
  assert.ok(!polylines(svg).some((l) => l.series === "eval loss"));
  assert.ok(!texts(svg).includes("eval loss"));
  assert.equal(circles(svg, "eval loss"), 0);
});

test("no MoE layers: the balance panel says so", () => {
  const svg = renderTrainingPlot(makeRecords(seededRandom(4).uniform, 30, { layers: [], evalEvery: 10 }), "dense");
  assertBalancedTags(svg);
  assert.ok(texts(svg).includes("no MoE layers"));
  assert.ok(!polylines(svg).some((l) => l.series.startsWith("layer ")));
  assert.ok(polylines(svg).some((l) => l.series === "main loss"));
});

test("non-finite losses are skipped and noted", () => {
  const records = makeRecords(seededRandom(5).uniform, 40, { depths: 1, layers: [1], evalEvery: 10 }) as StepMetrics[];
  const steps = records.filter((r) => !("eval_loss" in r));
  steps[3].main_loss = NaN;
  steps[7].main_loss = Infinity;
  steps[8].mtp_loss[0] = -Infinity;
  (records.find((r) => "eval_loss" in r) as unknown as EvalMetrics).eval_loss = NaN;
  const svg = renderTrainingPlot(records, "nan");
  assertBalancedTags(svg);
  assert.ok(!/NaN|Infinity/.test(svg), "no non-finite coordinates in the SVG");
  const lines = new Map(polylines(svg).map((l) => [l.series, l.points.length]));
  assert.equal(lines.get("main loss"), 38);
  assert.equal(lines.get("MTP depth 1 loss"), 39);
  assert.equal(lines.get("eval loss"), 3);
  assert.equal(lines.get("layer 1"), 40);
  assert.ok(texts(svg).includes("4 non-finite values skipped"));

  // non-finite expert load is noted in its own panel
  steps[0].expert_load[0].max_over_mean = NaN;
  const svg2 = renderTrainingPlot(records, "nan");
  assert.ok(texts(svg2).includes("1 non-finite value skipped"));

  // all values non-finite: the panel says there is nothing to draw
  const allNaN = steps.map((r) => ({ ...r, main_loss: NaN, mtp_loss: [NaN] }));
  const svg3 = renderTrainingPlot(allNaN, "all nan");
  assertBalancedTags(svg3);
  assert.ok(texts(svg3).includes("no loss values"));
  assert.ok(texts(svg3).includes("80 non-finite values skipped"));
});

test(`hundreds of thousands of steps are downsampled, first and last kept (${seedNote})`, () => {
  const random = seededRandom(SEED + 1).uniform;
  const records = makeRecords(random, 300_000, { depths: 1, layers: [1, 2], evalEvery: 1000 });
  const steps = records.filter((r): r is StepMetrics => !("eval_loss" in r));
  steps[123_456].main_loss = 50; // a loss spike survives
  const svg = renderTrainingPlot(records, "long");
  assertBalancedTags(svg);
  const lines = polylines(svg);
  assert.equal(lines.length, 5);
  for (const l of lines) assert.equal(l.points.length, l.series === "eval loss" ? 300 : MAX_POINTS, l.series);
  const main = lines.find((l) => l.series === "main loss")!;
  const firstX = main.points[0][0];
  const lastX = main.points[main.points.length - 1][0];
  for (const l of lines) {
    if (l.series === "eval loss") continue;
    assert.equal(l.points[0][0], firstX, `${l.series} starts at the first step`);
    assert.equal(l.points[l.points.length - 1][0], lastX, `${l.series} ends at the last step`);
  }
  const topY = Math.min(...main.points.map((p) => p[1]));
  assert.ok(texts(svg).includes("50"), "y axis reaches the spike");
  assert.ok(topY < main.points[0][1], "the spike is the highest point drawn");
  assert.ok(svg.length < 1_000_000, `SVG stays small (${svg.length} bytes)`);
  assert.ok(texts(svg).some((t) => /^\d+k$/.test(t)), "large step ticks abbreviated");
});

test("downsample keeps first, last and extremes, and exact counts", () => {
  const pts = Array.from({ length: 10_001 }, (_, i) => ({ x: i, y: Math.sin(i / 100) }));
  pts[5000].y = 9;
  pts[7000].y = -9;
  const d = downsample(pts, 100);
  assert.equal(d.length, 100);
  assert.equal(d[0], pts[0]);
  assert.equal(d[d.length - 1], pts[10_000]);
  assert.ok(d.includes(pts[5000]) && d.includes(pts[7000]));
  for (let i = 1; i < d.length; i++) assert.ok(d[i].x > d[i - 1].x);
  assert.equal(downsample(pts.slice(0, 100), 100).length, 100);
  assert.equal(downsample(pts.slice(0, 101), 100).length, 100);
  const flat = Array.from({ length: 5000 }, (_, i) => ({ x: i, y: 1 }));
  assert.equal(downsample(flat, 2000).length, 2000);
});

test("nice ticks and labels", () => {
  assert.deepEqual(niceTicks(0, 1).values, [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(2.87, 11.3).values, [2, 4, 6, 8, 10, 12]);
  assert.deepEqual(niceTicks(1, 300_000, 8).values, [0, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000]);
  const t = niceTicks(0.1, 0.7);
  assert.deepEqual(t.values, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
  assert.deepEqual(niceTicks(0, 2, 8, 1).values, [0, 1, 2], "minimum step");
  const flat = niceTicks(5, 5);
  assert.ok(flat.lo < 5 && flat.hi > 5);
  assert.equal(formatTick(150_000, 50_000), "150k");
  assert.equal(formatTick(2_500_000, 500_000), "2.5M");
  assert.equal(formatTick(0.30000000000000004, 0.1), "0.3");
  assert.equal(formatTick(5000, 1000), "5k");
  assert.equal(formatTick(0, 1000), "0");
  assert.equal(formatTick(800_000, 200_000), "800k");
  assert.equal(formatTick(1_200_000, 200_000), "1.2M");
  assert.equal(formatTick(250, 50), "250");
});

test("writeTrainingPlot reads JSONL, skips blank lines, writes atomically; malformed lines are named", () => {
  withTempDir("dsv3-plot-", (dir) => {
    const records = makeRecords(seededRandom(6).uniform, 20, { evalEvery: 5 });
    // JSON writes NaN as null: such a point is skipped
    const lines = records.map((r) => JSON.stringify(r));
    lines[2] = lines[2].replace(/"main_loss":[^,]+/, '"main_loss":null');
    const jsonl = join(dir, "metrics.jsonl");
    writeFileSync(jsonl, lines.slice(0, 5).join("\n") + "\n\n  \r\n" + lines.slice(5).join("\r\n") + "\n");
    const svgPath = join(dir, "training.svg");
    writeTrainingPlot(jsonl, svgPath, "from <file>");
    const svg = readFileSync(svgPath, "utf8");
    assertBalancedTags(svg);
    assert.ok(svg.includes("from &lt;file&gt;"));
    const counts = new Map(polylines(svg).map((l) => [l.series, l.points.length]));
    assert.equal(counts.get("main loss"), 19);
    assert.equal(counts.get("eval loss"), 4);
    assert.ok(texts(svg).includes("1 non-finite value skipped"));
    assert.deepEqual(readdirSync(dir).sort(), ["metrics.jsonl", "training.svg"], "no temporary file left behind");

    // a malformed line: the error names the file and the line (blank lines count)
    const bad = join(dir, "bad.jsonl");
    writeFileSync(bad, `${lines[0]}\n\n${lines[1]}\n{"step": 3, "main_loss": \n${lines[2]}\n`);
    assert.throws(() => writeTrainingPlot(bad, join(dir, "bad.svg"), "bad"), (err: Error) => err.message.includes(bad) && /:4:/.test(err.message));
    assert.ok(!existsSync(join(dir, "bad.svg")));
    // valid JSON that is not a metrics record is malformed too
    writeFileSync(bad, `${lines[0]}\n[1,2]\n`);
    assert.throws(() => writeTrainingPlot(bad, join(dir, "bad.svg"), "bad"), /bad\.jsonl:2: malformed/);
    writeFileSync(bad, `${lines[0]}\n{"step": 2, "lr": 1}\n`);
    assert.throws(() => writeTrainingPlot(bad, join(dir, "bad.svg"), "bad"), /bad\.jsonl:2: malformed/);
  });
});

test("a step logged twice (resumed run) keeps its last record", () => {
  const records = makeRecords(seededRandom(7).uniform, 10, { layers: [] }) as StepMetrics[];
  const resumed = makeRecords(seededRandom(8).uniform, 10, { layers: [] }).slice(5) as StepMetrics[];
  const svg = renderTrainingPlot([...records, ...resumed], "resumed");
  const main = polylines(svg).find((l) => l.series === "main loss")!;
  assert.equal(main.points.length, 10);
  for (let i = 1; i < main.points.length; i++) assert.ok(main.points[i][0] > main.points[i - 1][0]);
});
