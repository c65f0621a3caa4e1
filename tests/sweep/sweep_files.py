"""What the sweep tests share: a tiny Llama saved plain, a text, a spec dict and a TOML writer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import gaincell
from gaincell.adaptation.data import train_bpe_tokenizer

WORDS = "the a cell gain stores charge leaks slowly while pulses read each column of tiny arrays".split()


def make_files(root: Path) -> Path:
    """A tiny grouped-query Llama (saved plain), its tokenizer and a text of ~1.5k tokens under ``root``."""
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(250))
    (root / "text.txt").write_text(text)
    tokenizer = train_bpe_tokenizer(text, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    gaincell.save(AutoModelForCausalLM.from_config(config), root / "model", tokenizer)
    return root


def spec_dict(files, **changes) -> dict:
    data = {
        "model": str(files / "model"),
        "text": str(files / "text.txt"),
        "output_dir": str(files / "out"),
        "max_tokens": 300,
        "context": 64,
        "stride": 32,
        "seeds": [0, 1],
        "grid": {"adc_levels": [8, 32], "window": [16, 32], "read_noise": [0.0, 0.2]},
    }
    return {**data, **changes}


def write_toml(path, data: dict) -> str:
    """Top-level values, then tables; a table inside a table (``[adapt.distill]``) as an inline table."""
    lines, tables = [], []
    for key, value in data.items():
        (tables if isinstance(value, dict) else lines).append((key, value))
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines)
    for name, table in tables:
        text += f"[{name}]\n" + "".join(f'"{k}" = {_toml(v)}\n' for k, v in table.items())
    path.write_text(text)
    return str(path)


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return json.dumps(value)
