"""``gaincell generate MODEL --prompt TEXT``: continue a prompt; a gain-cell model generates through
its analog memories (:mod:`gaincell.hf.cache`, SPEC §3.6)."""

from __future__ import annotations

import argparse
import math

import torch
from transformers import LogitsProcessorList

from gaincell import devices
from gaincell.adaptation.data import model_max_positions
from gaincell.errors import GainCellError
from gaincell.hf.finite import FiniteLogits
from gaincell.hf.pretrained import (
    is_saved_directory,
    load,
    load_pretrained,
    load_pretrained_tokenizer,
    load_tokenizer,
)
from gaincell.validation import check_int, check_utf8_text

#: The largest seed ``torch.manual_seed`` takes (an unsigned 64-bit integer).
SEED_MAX = 2**64 - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gaincell generate``."""
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="a saved model directory (weights and tokenizer), a .gguf file or a hub id"
    )
    parser.add_argument("--gguf-file", metavar="NAME", help="the GGUF file inside MODEL_DIR or the hub repo")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50, metavar="N", help="tokens to generate (default: 50)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token (default: sample)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default: 1.0)")
    parser.add_argument(
        "--top-k", type=int, default=50, metavar="K", help="sample among the K most likely tokens, 0 for all (default: 50)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    devices.add_arguments(parser)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise GainCellError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise GainCellError(f"--temperature must be a number > 0, got {args.temperature}")
    if args.top_k < 0:
        raise GainCellError(f"--top-k must be >= 0 (0: no limit), got {args.top_k}")
    check_int("--seed", args.seed, 0, SEED_MAX)
    if not args.prompt.strip():
        raise GainCellError("--prompt is empty; give some text to continue")
    check_utf8_text("--prompt", args.prompt)


def run(args: argparse.Namespace) -> int:
    """``gaincell generate``: continue a prompt with a saved model; a gain-cell model generates
    through its analog memories (SPEC §3.6), a plain one as transformers does."""
    _check_arguments(args)
    device, dtype = devices.parse_device(args.device), devices.parse_dtype(args.dtype)
    if is_saved_directory(args.model_dir, args.gguf_file):
        tokenizer = load_tokenizer(args.model_dir)
        model = load(args.model_dir, device=device, dtype=dtype)
    else:
        tokenizer = load_pretrained_tokenizer(args.model_dir, args.gguf_file)
        model = load_pretrained(args.model_dir, args.gguf_file, dtype=dtype).to(device)
    input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    prompt_tokens = input_ids.shape[1]
    if prompt_tokens == 0:
        raise GainCellError("--prompt encodes to no tokens; give some text to continue")
    limit = model_max_positions(model)
    if limit is not None and prompt_tokens >= limit:
        raise GainCellError(
            f"--prompt: {prompt_tokens} tokens do not fit the model's {limit} positions with room for new ones; shorten it"
        )
    if limit is not None and prompt_tokens + args.max_new_tokens > limit:
        raise GainCellError(
            f"--max-new-tokens: the prompt's {prompt_tokens} tokens + {args.max_new_tokens} new ones exceed the "
            f"model's {limit} positions; use --max-new-tokens {limit - prompt_tokens} or less"
        )
    sampling = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k}
    if args.greedy:
        sampling = {"do_sample": False}
    torch.manual_seed(args.seed)
    output = model.generate(
        input_ids.to(device),
        attention_mask=torch.ones_like(input_ids, device=device),
        max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        logits_processor=LogitsProcessorList([FiniteLogits()]),  # a NaN model stops here, not after appending token 0
        **sampling,
    )
    print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0
