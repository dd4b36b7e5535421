"""PyTorch baselines for bench/attention.ts: prints one JSON line.

Training: causal scaled_dot_product_attention on BF16 q, k [B, H, T, Dk], v [B, H, T, Dv], forward
and forward+backward (torch.autograd.grad with a random dOut), for every SDPA backend that takes
the shape: flash (FlashAttention-2 inside PyTorch; it needs Dv == Dk, so v is zero-padded to Dk and
the output sliced, which it then computes on the padding too), efficient (memory-efficient
attention), cudnn, and the default choice (reported by name when torch says which it picks).
Decode: absorbed MLA attention over a latent cache done with plain torch ops (bmm, softmax in FP32,
bmm), the obvious eager implementation, for scale.

usage: python3 bench/attention_torch.py --B 1 --T 4096 --H 16,128 --dk 192 --dv 128 \
           --decode-B 1,32 --decode-H 16 --S 4096 --C 512 --R 64 [--iters 20]
"""
import argparse
import json
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--B", type=int, default=1)
parser.add_argument("--T", type=int, default=4096)
parser.add_argument("--H", default="16")
parser.add_argument("--dk", type=int, default=192)
parser.add_argument("--dv", type=int, default=128)
parser.add_argument("--decode-B", default="1,32")
parser.add_argument("--decode-H", type=int, default=16)
parser.add_argument("--S", type=int, default=4096)
parser.add_argument("--C", type=int, default=512)
parser.add_argument("--R", type=int, default=64)
parser.add_argument("--iters", type=int, default=20)
opts = parser.parse_args()

try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch_common import describe_error
except Exception as e:  # no torch: say so in the JSON, the caller reports it
    sys.stdout.write(json.dumps({"error": f"torch unavailable: {e}"}) + "\n")
    sys.exit(0)

if not torch.cuda.is_available():
    sys.stdout.write(json.dumps({"error": "torch sees no CUDA device"}) + "\n")
    sys.exit(0)

dev = torch.device("cuda")


def median_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


BACKEND_NAMES = {}
for name in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "OVERRIDEABLE", "ERROR"):
    try:
        member = getattr(SDPBackend, name)
        BACKEND_NAMES[int(getattr(member, "value", member))] = name.lower()
    except (AttributeError, TypeError, ValueError):
        pass


def default_choice(q, k, v):
    """The backend torch picks for this call, when the private helper exists."""
    try:
        choice = torch._fused_sdp_choice(q, k, v, None, 0.0, True)
        return BACKEND_NAMES.get(int(choice), str(choice))
    except Exception as e:  # the helper is private and may change
        return f"unknown ({type(e).__name__})"


def train_case(B, T, H, dk, dv, iters):
    g = torch.Generator(device=dev).manual_seed(0)
    scale = dk ** -0.5

    def rand(*shape):
        return torch.randn(*shape, device=dev, dtype=torch.bfloat16, generator=g)

    q = rand(B, H, T, dk).requires_grad_()
    k = rand(B, H, T, dk).requires_grad_()
    v = rand(B, H, T, dv).requires_grad_()
    dout = rand(B, H, T, dv)
    v_pad = torch.cat([v.detach(), torch.zeros(B, H, T, dk - dv, device=dev, dtype=torch.bfloat16)], dim=-1).requires_grad_() if dk > dv else v
    dout_pad = torch.cat([dout, torch.zeros(B, H, T, dk - dv, device=dev, dtype=torch.bfloat16)], dim=-1) if dk > dv else dout
    result = {"H": H, "default_backend": default_choice(q, k, v), "backends": {}}
    variants = [
        ("flash", [SDPBackend.FLASH_ATTENTION], v_pad, dout_pad, dk > dv),
        ("efficient", [SDPBackend.EFFICIENT_ATTENTION], v, dout, False),
        ("cudnn", [SDPBackend.CUDNN_ATTENTION], v, dout, False),
        ("default", None, v, dout, False),
    ]
    for name, backends, vv, dd, padded in variants:
        entry = {"padded_v": padded}
        try:
            def fwd():
                with torch.no_grad():
                    if backends is None:
                        return F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)
                    with sdpa_kernel(backends):
                        return F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)

            def fwdbwd():
                if backends is None:
                    o = F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)
                    return torch.autograd.grad(o, (q, k, vv), dd)
                with sdpa_kernel(backends):
                    o = F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)
                    return torch.autograd.grad(o, (q, k, vv), dd)

            entry["fwd_ms"] = median_ms(fwd, iters)
            entry["fwdbwd_ms"] = median_ms(fwdbwd, iters)
            entry["bwd_ms"] = entry["fwdbwd_ms"] - entry["fwd_ms"]
        except Exception as e:
            entry["error"] = describe_error(e, limit=200)
        result["backends"][name] = entry
        torch.cuda.empty_cache()
    del q, k, v, dout, v_pad, dout_pad
    torch.cuda.empty_cache()
    return result


def decode_case(B, H, S, C, R, iters):
    g = torch.Generator(device=dev).manual_seed(0)
    scale = (128 + R) ** -0.5
    q_lat = torch.randn(B, H, C, device=dev, dtype=torch.bfloat16, generator=g)
    q_pe = torch.randn(B, H, R, device=dev, dtype=torch.bfloat16, generator=g)
    ckv = torch.randn(B, S, C, device=dev, dtype=torch.bfloat16, generator=g)
    kpe = torch.randn(B, S, R, device=dev, dtype=torch.bfloat16, generator=g)

    def step():
        s = torch.bmm(q_lat, ckv.transpose(1, 2)) + torch.bmm(q_pe, kpe.transpose(1, 2))
        p = torch.softmax(s.float() * scale, dim=-1).to(torch.bfloat16)
        return torch.bmm(p, ckv)

    with torch.no_grad():
        ms = median_ms(step, max(iters, 50))
    return {"B": B, "H": H, "S": S, "us": ms * 1000.0}


out = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0),
    "train": [],
    "decode": [],
}
for H in [int(h) for h in opts.H.split(",") if h]:
    try:
        out["train"].append(train_case(opts.B, opts.T, H, opts.dk, opts.dv, opts.iters))
    except Exception as e:  # e.g. out of memory for the largest H
        out["train"].append({"H": H, "error": describe_error(e, limit=200)})
        torch.cuda.empty_cache()
for B in [int(b) for b in opts.decode_B.split(",") if b]:
    try:
        out["decode"].append(decode_case(B, opts.decode_H, opts.S, opts.C, opts.R, opts.iters))
    except Exception as e:
        out["decode"].append({"B": B, "H": opts.decode_H, "S": opts.S, "error": f"{type(e).__name__}: {e}"})
sys.stdout.write(json.dumps(out) + "\n")
