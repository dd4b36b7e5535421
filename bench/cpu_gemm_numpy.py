"""numpy's square FP32 GEMM, for bench/cpu-gemm.ts: prints one JSON line with GFLOP/s per size.

usage: python3 bench/cpu_gemm_numpy.py --sizes 512,1024 [--threads N] [--min-seconds 1.0]
--threads 0 (the default) leaves numpy's BLAS on its own threading; N > 0 pins it to N threads
(set before numpy loads, the only time OpenBLAS reads it).
"""
import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--sizes", default="512,1024")
parser.add_argument("--threads", type=int, default=0)
parser.add_argument("--min-seconds", type=float, default=1.0)
opts = parser.parse_args()

if opts.threads > 0:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(opts.threads)

import numpy as np  # noqa: E402  (after the thread settings on purpose)


def blas_name():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy: no mode="dicts"
        return "unknown"


def measure(n):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    for _ in range(3):
        np.matmul(a, b, out=c)
    best = float("inf")
    spent = 0.0
    reps = 0
    while reps < 5 or spent < opts.min_seconds:
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        reps += 1
    return 2.0 * n**3 / best / 1e9


sizes = [int(s) for s in opts.sizes.split(",") if s]
result = {
    "numpy": np.__version__,
    "blas": blas_name(),
    "threads": opts.threads,
    "gflops": {str(n): measure(n) for n in sizes},
}
sys.stdout.write(json.dumps(result) + "\n")
