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
from torch_common import SMALL_CONFIG, cuda_device, describe_error, median, print_versions, timed

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

dev = cuda_device("decode_torch.py")
print_versions(transformers)


def load_model():
    if opts.model_dir:
        try:
            return AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.bfloat16)
        except TypeError:  # transformers before `dtype`
            return AutoModelForCausalLM.from_pretrained(opts.model_dir, torch_dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(DeepseekV3Config(**SMALL_CONFIG))


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
    """(seconds, the new tokens) of a greedy generate() of `new_tokens` tokens after `ids`."""
    with torch.no_grad():
        seconds, out = timed(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, use_cache=True))
    return seconds, out[:, ids.shape[1]:]


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
        line["error"] = describe_error(e)
    print(json.dumps(line), flush=True)
