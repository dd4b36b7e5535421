"""What the PyTorch sides of the GPU benchmarks (bench/*_torch.py) share: the CUDA check, medians and
timing (CUDA events, or wall time between device synchronisations), error lines for the JSON, the
`small` preset's transformers config and the versions line the TypeScript side reports.

The scripts run as `python3 bench/<name>_torch.py`, so this folder is on sys.path and
`from torch_common import ...` finds this file.
"""
import sys
import time

import torch

# src/train/presets.ts, `small`, with a 32768-token vocabulary, as DeepseekV3Config arguments
SMALL_CONFIG = dict(
    vocab_size=32768, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, num_hidden_layers=12, first_k_dense_replace=1,
    num_attention_heads=16, num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
    norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid", max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rope_interleave=True, tie_word_embeddings=False,
    attention_bias=False, bos_token_id=0, eos_token_id=1,
)


def cuda_device(script):
    """torch.device("cuda"); exits with `<script>: torch sees no CUDA device` where there is none."""
    if not torch.cuda.is_available():
        sys.exit(f"{script}: torch sees no CUDA device")
    return torch.device("cuda")


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


IDLE_S = 0.5


def median_ms(fn, iters, warmup):
    """Median milliseconds of fn over `iters` calls, each between its own pair of CUDA events (enqueued
    back to back), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    time.sleep(IDLE_S)  # the same pause as bench/common.ts's idleGpu before ours
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return median([s.elapsed_time(e) for s, e in zip(starts, ends)])


def timed(fn):
    """(seconds, fn()) with the device synchronised before and after: the wall time of everything fn queued."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def describe_error(e, limit=None):
    """`TypeName: first line of the message` (that line cut to `limit` characters when given)."""
    message = str(e)
    first = message.splitlines()[0] if message else ""
    return f"{type(e).__name__}: {first if limit is None else first[:limit]}"


def print_versions(transformers):
    """The `# versions …` line the TypeScript side takes its note from."""
    print(f"# versions torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
