"""PyTorch's side of bench/memory-bound.ts: GB/s (bytes read + written, counted as memory-bound.ts
counts them) of a device-to-device copy, RMSNorm and SwiGLU (silu(g) * u, eager) in BF16, one fused
AdamW step in FP32 and an eager 1x128 FP8 quantization of BF16, at the same DeepSeek-V3 sizes. Each
figure is the median of --iters iterations timed with CUDA events after --warmup runs. Prints one JSON
line.

usage: python3 bench/memory_bound_torch.py [--tokens 16384] [--iters 20] [--warmup 5]
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch_common import cuda_device, describe_error, median_ms

parser = argparse.ArgumentParser()
parser.add_argument("--tokens", type=int, default=16384)
parser.add_argument("--iters", type=int, default=20)
parser.add_argument("--warmup", type=int, default=5)
opts = parser.parse_args()

dev = cuda_device("memory_bound_torch.py")
T, D, FFN = opts.tokens, 7168, 18432
COPY_BYTES = 1 << 30


gbs = {}
errors = {}


def measure(name, setup):
    try:
        nbytes, fn = setup()
        ms = median_ms(fn, opts.iters, opts.warmup)
        gbs[name] = nbytes / (ms * 1e-3) / 1e9
        print(f"# torch {name}: {gbs[name]:.0f} GB/s ({ms:.3f} ms)", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 (reported; the other figures still count)
        gbs[name] = None
        errors[name] = describe_error(e)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def copy_setup():
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * COPY_BYTES, lambda: dst.copy_(src)


def rmsnorm_setup():
    x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
    w = torch.randn(D, device=dev, dtype=torch.bfloat16)
    return 2 * x.numel() * 2 + D * 2, lambda: F.rms_norm(x, (D,), w, 1e-6)


def swiglu_setup():
    g = torch.randn(T, FFN, device=dev, dtype=torch.bfloat16)
    u = torch.randn(T, FFN, device=dev, dtype=torch.bfloat16)
    return 3 * g.numel() * 2, lambda: F.silu(g) * u


def adamw_setup():
    # FP32 master weight, gradient and moments, as our backend trains
    p = torch.nn.Parameter(torch.randn(D, FFN, device=dev, dtype=torch.float32))
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    opt.step()  # creates the moments
    n = p.numel() * 4
    return 2 * n + n + 2 * n + 2 * n, opt.step


def quantize_setup():
    x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)

    def run():
        tiles = x.float().view(T, D // 128, 128)
        s = tiles.abs().amax(dim=-1).clamp(min=1e-12) / 448.0
        q = (tiles / s.unsqueeze(-1)).to(torch.float8_e4m3fn)
        return q, s

    return x.numel() * 2 + x.numel() + 4 * T * (D // 128), run


measure("copy", copy_setup)
measure("rmsnorm", rmsnorm_setup)
measure("swiglu", swiglu_setup)
measure("adamw", adamw_setup)
measure("quantize_1x128", quantize_setup)

print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "gbs": gbs, "errors": errors}))
