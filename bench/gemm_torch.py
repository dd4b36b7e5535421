"""PyTorch's side of bench/gpu-gemm.ts: BF16 torch.mm(x, w.t()) and the FP8 block-scaled product
through torch._scaled_mm (1x128 activation scales, 128x128 weight scales, fast accumulation off), each
the median of --iters iterations timed with CUDA events after --warmup runs. Prints one JSON line.

usage: python3 bench/gemm_torch.py --shapes 4096x7168x2048,... [--iters 30] [--warmup 10]   (M x N x K)

Scale layouts _scaled_mm takes for this recipe (ATen ScaledBlas.cpp, is_blockwise_1x128_scaling and
is_blockwise_128x128_scaling): a [M, K] row-major with scale_a [M, K/128] stored outer-dim-major
(strides (1, M)); b = w.t() with w [N, K] row-major, and scale_b = w_scale.t() where w_scale
[N/128, K/128] is row-major (the checkpoint's weight_scale_inv). Scales multiply (dequantize).
"""
import argparse
import json
import sys

import torch
from torch_common import cuda_device, describe_error, median_ms

parser = argparse.ArgumentParser()
parser.add_argument("--shapes", required=True)
parser.add_argument("--iters", type=int, default=30)
parser.add_argument("--warmup", type=int, default=10)
opts = parser.parse_args()

dev = cuda_device("gemm_torch.py")
torch.manual_seed(0)


def quantize_1x128(x):
    """x [M, K] -> E4M3 codes [M, K] and scaleInv [M, K/128] (amax / 448 per 1x128 tile)."""
    m, k = x.shape
    tiles = x.float().view(m, k // 128, 128)
    s = tiles.abs().amax(dim=-1).clamp(min=1e-12) / 448.0
    return (tiles / s.unsqueeze(-1)).to(torch.float8_e4m3fn).view(m, k), s


def quantize_128x128(w):
    """w [N, K] -> E4M3 codes [N, K] and scaleInv [N/128, K/128] (amax / 448 per 128x128 block)."""
    n, k = w.shape
    blocks = w.float().view(n // 128, 128, k // 128, 128)
    s = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    return (blocks / s[:, None, :, None]).to(torch.float8_e4m3fn).view(n, k), s


def scaled_mm_v1(a, b, scale_a, scale_b):
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=False)


def scaled_mm_v2(a, b, scale_a, scale_b):
    from torch.nn.functional import ScalingType, scaled_mm

    return scaled_mm(a, b, scale_a, ScalingType.BlockWise1x128, scale_b, ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)


fp8_api = None
rows = []
for spec in opts.shapes.split(","):
    m, n, k = (int(v) for v in spec.lower().split("x"))
    row = {"M": m, "N": n, "K": k, "bf16_ms": None, "fp8_ms": None, "fp8_max_rel_err": None, "error": None}
    rows.append(row)
    errors = []
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    y = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
    try:
        wt = w.t()
        row["bf16_ms"] = median_ms(lambda: torch.mm(x, wt, out=y), opts.iters, opts.warmup)
    except Exception as e:  # noqa: BLE001 (reported, the other figures still count)
        errors.append(f"bf16: {type(e).__name__}: {e}")
    if m % 128 or n % 128 or k % 128:
        errors.append("fp8: the torch reference quantizes whole 128-tiles only (M, N, K multiples of 128)")
    else:
        try:
            a, sa = quantize_1x128(x)
            wq, sw = quantize_128x128(w)
            b = wq.t()
            scale_a = sa.t().contiguous().t()  # [M, K/128], strides (1, M)
            scale_b = sw.t()  # [K/128, N/128], strides (1, K/128)
            candidates = [("torch._scaled_mm", scaled_mm_v1), ("torch.nn.functional.scaled_mm", scaled_mm_v2)]
            if fp8_api is not None:
                candidates = [c for c in candidates if c[0] == fp8_api]
            failures = []
            out = None
            for name, fn in candidates:
                try:
                    out = fn(a, b, scale_a, scale_b)
                    fp8_api = name
                    call = fn
                    break
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{name}: {describe_error(e)}")
            if out is None:
                raise RuntimeError("; ".join(failures))
            # the call must mean what we think: compare with the dequantized product
            ref = (a.float().view(m, k // 128, 128) * sa.unsqueeze(-1)).view(m, k) @ (
                (wq.float().view(n // 128, 128, k // 128, 128) * sw[:, None, :, None]).view(n, k).t()
            )
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            row["fp8_max_rel_err"] = err
            if not err < 2e-2:
                errors.append(f"fp8: {fp8_api} differs from the dequantized product by {err:.3g} (max relative): wrong scale layout?")
            else:
                row["fp8_ms"] = median_ms(lambda: call(a, b, scale_a, scale_b), opts.iters, opts.warmup)
            del ref, out
        except Exception as e:  # noqa: BLE001
            errors.append(f"fp8: {type(e).__name__}: {e}")
    row["error"] = "; ".join(errors) or None
    del x, w, y
    torch.cuda.empty_cache()
    print(f"# torch {m}x{n}x{k}: bf16 {row['bf16_ms']} ms, fp8 {row['fp8_ms']} ms{'; ' + row['error'] if row['error'] else ''}", file=sys.stderr)

print(json.dumps({
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0),
    "fp8_api": fp8_api or "unavailable",
    "rows": rows,
}))
