"""Sum the GPU time of every kernel of an Nsight Compute CSV by kernel name: where a program's GPU
time goes, and how much of its wall time the GPU was busy at all.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        --log-file kernels.csv node dist/bench/train-step.js --steps 1 --warmup 1 --no-torch
    python3 bench/kernel_times.py kernels.csv [--top 40] [--divide 2]

--divide N divides every total by N (for example the number of identical steps profiled).
"""
import argparse
import csv
import sys
from collections import defaultdict

parser = argparse.ArgumentParser()
parser.add_argument("csv_file")
parser.add_argument("--top", type=int, default=40)
parser.add_argument("--divide", type=float, default=1.0)
opts = parser.parse_args()

with open(opts.csv_file, newline="") as f:
    lines = [line for line in f if line.startswith('"')]  # ncu's own messages start with ==PROF==
rows = list(csv.DictReader(lines))
if not rows:
    sys.exit(f"kernel_times.py: no kernel rows in {opts.csv_file}")

total_ns = defaultdict(float)
count = defaultdict(int)
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"]
    name = name if len(name) <= 90 else name[:87] + "..."
    total_ns[name] += float(r["Metric Value"].replace(",", ""))
    count[name] += 1

grand = sum(total_ns.values())
print(f"{len(rows)} kernel launches, GPU time {grand / 1e6 / opts.divide:.3f} ms (divided by {opts.divide:g})")
print(f"{'ms':>9} {'share':>6} {'launches':>9}  kernel")
for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[: opts.top]:
    print(f"{ns / 1e6 / opts.divide:9.3f} {100 * ns / grand:5.1f}% {count[name] / opts.divide:9.0f}  {name}")
