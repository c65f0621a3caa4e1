"""Generation through the gain-cell memory: a transformers ``Cache`` whose layers are analog memories.

A converted model's ``generate`` gets a :class:`GainCellCache` (see
:class:`gaincell.convert.GainCellGeneration`). Its layer ``update`` does not keep past keys as a
``DynamicCache`` would; it only counts tokens and hands the new key/value to the same layer's
:class:`~gaincell.layer.GainCellAttention`, which reads them through a
:class:`~gaincell.memory.GainCellMemory` of M slots (SPEC §3.6): the prompt is prefilled with the
parallel op, each new token is written into slot t mod M and read step by step. Memory is O(M),
whatever the length generated.
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from gaincell.errors import GainCellError
from gaincell.layer import gain_cell_layers
from gaincell.memory import GainCellMemory


class GainCellCacheLayer(CacheLayerMixin):
    """One layer's slot in the cache: the token count transformers asks for, and the analog memory."""

    is_sliding = False

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.memory: GainCellMemory | None = None
        self.seen = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Count the new tokens and hand them to this layer's attention, which writes them into memory."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        self.cell.pending = (self, key_states)
        return key_states, value_states

    def read(self, cell, query, key, value) -> torch.Tensor:
        """Attention outputs for new tokens (B, H, T, D): prefill an empty memory, else one step per token."""
        batch, heads, length, dim = query.shape
        if self.memory is None or self.memory.shape != (batch, heads, dim):
            dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
            scalers = None if cell.config.attention == "softmax" else cell.scalers
            self.memory = GainCellMemory(
                cell.config, scalers, batch, heads, dim,
                gains=cell.chip_gains(query.device), device=query.device, dtype=dtype,
            )  # fmt: skip
        if self.memory.length == 0 and length > 1:
            return self.memory.prefill(query, key, value)
        if length == 1:
            return self.memory.step(query, key, value)
        steps = [slice(t, t + 1) for t in range(length)]
        return torch.cat([self.memory.step(query[:, :, t], key[:, :, t], value[:, :, t]) for t in steps], dim=2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1  # the memory holds M tokens but generation may run as long as the positions allow

    def reset(self) -> None:
        if self.memory is not None:
            self.memory.reset()
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the memories of the selected beams."""
        if self.memory is not None:
            self.memory.select(beam_idx)

    def offload(self) -> None:
        return None

    def prefetch(self) -> None:
        return None


class GainCellCache(Cache):
    """A cache of one gain-cell memory per attention layer of a converted model."""

    def __init__(self, model):
        layers = gain_cell_layers(model)
        if [cell.layer for cell in layers] != list(range(len(layers))):
            raise GainCellError("attention layers must be numbered 0..L-1 to map them onto cache layers")
        super().__init__(layers=[GainCellCacheLayer(cell) for cell in layers])

    def crop(self, max_length: int) -> None:
        raise GainCellError("a gain-cell memory cannot forget tokens it has written (no assisted/speculative decoding)")


# -- command line ---------------------------------------------------------------------------------


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
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise GainCellError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise GainCellError(f"--temperature must be a number > 0, got {args.temperature}")
    if args.top_k < 0:
        raise GainCellError(f"--top-k must be >= 0 (0: no limit), got {args.top_k}")
    if args.seed < 0:
        raise GainCellError(f"--seed must be >= 0, got {args.seed}")
    if not args.prompt.strip():
        raise GainCellError("--prompt is empty; give some text to continue")


def run(args: argparse.Namespace) -> int:
    """``gaincell generate``: continue a prompt with a saved model; a gain-cell model generates
    through its analog memories (SPEC §3.6), a plain one as transformers does."""
    from gaincell.checkpoint import (
        is_saved_directory,
        load,
        load_pretrained,
        load_pretrained_tokenizer,
        load_tokenizer,
        torch_device,
    )
    from gaincell.data import model_max_positions

    _check_arguments(args)
    device = torch_device(args.device)
    if is_saved_directory(args.model_dir, args.gguf_file):
        tokenizer = load_tokenizer(args.model_dir)
        model = load(args.model_dir, device=device)
    else:
        tokenizer = load_pretrained_tokenizer(args.model_dir, args.gguf_file)
        model = load_pretrained(args.model_dir, args.gguf_file).to(device)
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
        **sampling,
    )
    print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0
