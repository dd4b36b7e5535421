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

import torch
from torch_common import SMALL_CONFIG, cuda_device, describe_error, median, print_versions, timed

parser = argparse.ArgumentParser()
parser.add_argument("--config-dir")
parser.add_argument("--seq", type=int, default=4096)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--modes", default="eager,compile")
opts = parser.parse_args()

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV3Config  # noqa: E402

dev = cuda_device("train_step_torch.py")
# without --config-dir: the small preset
config = AutoConfig.from_pretrained(opts.config_dir) if opts.config_dir else DeepseekV3Config(**SMALL_CONFIG)
print_versions(transformers)

torch.manual_seed(0)
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
            dt, loss = timed(lambda: train_step(forward))
            if i == 0 and mode == "compile":
                line["compile_s"] = dt
            print(f"# transformers {mode} warm-up step {i + 1}: {dt * 1000:.0f} ms, loss {loss.item():.3f}", file=sys.stderr, flush=True)
        for _ in range(opts.steps):
            dt, loss = timed(lambda: train_step(forward))
            line["step_ms"].append(dt * 1000)
        line["loss"] = loss.item()
        line["tokens_per_s"] = opts.seq / (median(line["step_ms"]) / 1000)
    except Exception as e:  # noqa: BLE001 (reported in the JSON line)
        line["error"] = describe_error(e)
    print(json.dumps(line), flush=True)


for mode in opts.modes.split(","):
    measure(mode)
