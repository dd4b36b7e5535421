"""PyTorch's side of bench/host-overhead.ts: host microseconds per enqueued call (best of --runs runs
of --calls back-to-back calls, synchronised before and after) of x.add_(y) over 4096 BF16 elements
and of torch.mm on BF16 [M, 1024] x [1024, 384] at M = 4096 and M = 1. Prints one JSON line.
"""
import argparse
import json
import time

import torch
from torch_common import cuda_device

parser = argparse.ArgumentParser()
parser.add_argument("--calls", type=int, default=2000)
parser.add_argument("--runs", type=int, default=3)
opts = parser.parse_args()
dev = cuda_device("host_overhead_torch.py")


def host_us(fn):
    fn()
    best = float("inf")
    for _ in range(opts.runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(opts.calls):
            fn()
        best = min(best, (time.perf_counter() - t0) * 1e6 / opts.calls)
    torch.cuda.synchronize()
    return best


a = torch.randn(4096, device=dev, dtype=torch.bfloat16)
b = torch.randn(4096, device=dev, dtype=torch.bfloat16)
x = torch.randn(4096, 1024, device=dev, dtype=torch.bfloat16)
wt = torch.randn(384, 1024, device=dev, dtype=torch.bfloat16).t()
y = torch.empty(4096, 384, device=dev, dtype=torch.bfloat16)
x1, y1 = x[:1], torch.empty(1, 384, device=dev, dtype=torch.bfloat16)
print(json.dumps({
    "torch": torch.__version__,
    "add_us": host_us(lambda: a.add_(b)),
    "gemm4096_us": host_us(lambda: torch.mm(x, wt, out=y)),
    "gemm1_us": host_us(lambda: torch.mm(x1, wt, out=y1)),
}))
