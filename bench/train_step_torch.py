"""Hugging Face transformers' side of bench/train-step.ts: DeepseekV3ForCausalLM with the `small`
preset's config (no MTP: transformers has none), in BF16, trained with torch.optim.AdamW (fused) and
gradient clipping at 1.0 on random tokens, batch 1 x --seq. Measures eager first, then
torch.compile(model), in one process; prints one JSON line per mode as soon as it is measured (so an
eager figure survives a compile that runs out of time). Tokens/s is seq / the median step time.

usage: python3 bench/train_step_torch.py [--config-dir DIR] [--seq 4096] [--steps 5] [--warmup 2] [--modes eager,compile]
--config-dir holds the config.json bench/train-step.ts writes; without it the small preset is built here.
"""
import argparse
import json
import sys
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--config-dir")
parser.add_argument("--seq", type=int, default=4096)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--modes", default="eager,compile")
opts = parser.parse_args()

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV3Config  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("train_step_torch.py: torch sees no CUDA device")

# src/train/presets.ts, `small`, with a 32768-token vocabulary
SMALL = dict(
    vocab_size=32768, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, num_hidden_layers=12, first_k_dense_replace=1,
    num_attention_heads=16, num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
    norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid", max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rope_interleave=True, tie_word_embeddings=False,
    attention_bias=False, bos_token_id=0, eos_token_id=1,
)
config = AutoConfig.from_pretrained(opts.config_dir) if opts.config_dir else DeepseekV3Config(**SMALL)
print(f"# versions torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}", flush=True)

torch.manual_seed(0)
dev = torch.device("cuda")
with torch.device(dev):
    model = AutoModelForCausalLM.from_config(config)
model.to(device=dev, dtype=torch.bfloat16)
model.train()
params = sum(p.numel() for p in model.parameters())
print(f"# transformers model: {params / 1e6:.0f} M parameters, attention {model.config._attn_implementation}", file=sys.stderr, flush=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
vocab = config.vocab_size


def train_step(forward):
    ids = torch.randint(0, vocab, (1, opts.seq), device=dev)
    loss = forward(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure(mode):
    line = {"mode": mode, "tokens_per_s": None, "step_ms": [], "loss": None, "compile_s": None, "error": None}
    try:
        forward = torch.compile(model) if mode == "compile" else model
        for i in range(opts.warmup):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = train_step(forward)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if i == 0 and mode == "compile":
                line["compile_s"] = dt
            print(f"# transformers {mode} warm-up step {i + 1}: {dt * 1000:.0f} ms, loss {loss.item():.3f}", file=sys.stderr, flush=True)
        for _ in range(opts.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = train_step(forward)
            torch.cuda.synchronize()
            line["step_ms"].append((time.perf_counter() - t0) * 1000)
        line["loss"] = loss.item()
        times = sorted(line["step_ms"])
        n = len(times)
        med = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
        line["tokens_per_s"] = opts.seq / (med / 1000)
    except Exception as e:  # noqa: BLE001 (reported in the JSON line)
        line["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(json.dumps(line), flush=True)


for mode in opts.modes.split(","):
    measure(mode)
