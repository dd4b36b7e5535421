"""Hugging Face transformers' side of bench/decode.ts: greedy generate() (BF16, use_cache) of the
DeepseekV3ForCausalLM in --model-dir on the prompts in --prompts (a JSON list of token lists), at each
batch size of --batches. Decode tokens/s = batch * (n - 1) / (time(n new tokens) - time(1 new token)),
each time the median of --runs runs after a warm-up, so the prefill and the first token are not counted.
Prints one JSON line per batch size as soon as it is measured, with batch row 0's tokens.

usage: python3 bench/decode_torch.py --model-dir DIR --prompts prompts.json [--new-tokens 128] [--batches 1,32] [--runs 2]
Without --model-dir the small preset is built here with random weights, and random prompts are used.
"""
import argparse
import json
import sys
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir")
parser.add_argument("--prompts")
parser.add_argument("--prompt-len", type=int, default=128)
parser.add_argument("--new-tokens", type=int, default=128)
parser.add_argument("--batches", default="1,32")
parser.add_argument("--runs", type=int, default=2)
opts = parser.parse_args()

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, DeepseekV3Config  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("decode_torch.py: torch sees no CUDA device")
dev = torch.device("cuda")
print(f"# versions torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}", flush=True)

# src/train/presets.ts, `small`, with a 32768-token vocabulary (only used without --model-dir)
SMALL = dict(
    vocab_size=32768, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, num_hidden_layers=12, first_k_dense_replace=1,
    num_attention_heads=16, num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
    norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid", max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rope_interleave=True, tie_word_embeddings=False,
    attention_bias=False, bos_token_id=0, eos_token_id=1,
)


def load_model():
    if opts.model_dir:
        try:
            return AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.bfloat16)
        except TypeError:  # transformers before `dtype`
            return AutoModelForCausalLM.from_pretrained(opts.model_dir, torch_dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(DeepseekV3Config(**SMALL))


t0 = time.perf_counter()
model = load_model().to(device=dev, dtype=torch.bfloat16).eval()
# Exactly --new-tokens tokens: no end-of-sequence token stops a run early.
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = 0
model.generation_config.do_sample = False
print(f"# transformers model loaded in {time.perf_counter() - t0:.1f} s, attention {model.config._attn_implementation}", file=sys.stderr, flush=True)

vocab = model.config.vocab_size
batches = [int(b) for b in opts.batches.split(",")]
if opts.prompts:
    with open(opts.prompts) as f:
        prompts = json.load(f)
else:
    g = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, vocab, (max(batches), opts.prompt_len), generator=g).tolist()


def generate(ids, new_tokens):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, use_cache=True)
    torch.cuda.synchronize()
    return time.perf_counter() - start, out[:, ids.shape[1]:]


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


for batch in batches:
    line = {"batch": batch, "tokens_per_s": None, "full_s": [], "first_s": [], "tokens": None, "error": None}
    try:
        if len(prompts) < batch:
            raise ValueError(f"{len(prompts)} prompts for batch {batch}")
        ids = torch.tensor(prompts[:batch], dtype=torch.long, device=dev)
        generate(ids, 8)  # warm-up
        for _ in range(opts.runs):
            seconds, out = generate(ids, opts.new_tokens)
            if out.shape[1] != opts.new_tokens:
                raise RuntimeError(f"generate() returned {out.shape[1]} new tokens, not {opts.new_tokens}")
            line["full_s"].append(seconds)
            line["first_s"].append(generate(ids, 1)[0])
        line["tokens"] = out[0].tolist()
        decode_s = median(line["full_s"]) - median(line["first_s"])
        line["tokens_per_s"] = batch * (opts.new_tokens - 1) / decode_s
        print(f"# transformers batch {batch}: {line['tokens_per_s']:.0f} tokens/s ({opts.new_tokens} tokens in {median(line['full_s']):.2f} s, first in {median(line['first_s']):.3f} s)", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 (reported in the JSON line)
        line["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(json.dumps(line), flush=True)
