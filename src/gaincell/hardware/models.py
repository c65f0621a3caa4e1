"""Decoder shapes for the cost model (``gaincell hw --model``, ``gaincell sweep``), SPEC-hardware §6.3.3.

A shape sets the attention workload (layers, heads, head size) and, for the whole-model (Amdahl) view,
the weights that stay on the GPU: the Q/K/V/output projections, the MLP and the LM head. Five shapes
are known by name; any other comes from a model's ``config.json`` (a saved directory, or a hub id's
config fetched by transformers) through :func:`load_shape`.

Grouped-query models (fewer kv heads than query heads) are costed as :func:`gaincell.convert` maps
them: every query head drives its own pair of arrays holding its group's keys and values, so the chip
has one K and one V array per *query* head. ``kv_heads`` only shrinks the k/v projections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaincell.errors import GainCellError, first_line
from gaincell.validation import check_int


@dataclass(frozen=True)
class DecoderShape:
    """Public architecture of a decoder-only transformer."""

    name: str
    layers: int
    d_model: int
    heads: int
    head_dim: int
    ffn: int  # MLP hidden width
    mlp_matrices: int  # 2 for GELU MLPs (GPT-2), 3 for SwiGLU (Llama)
    vocab: int
    source: str
    kv_heads: int | None = None  # None: as many as query heads (no grouped-query attention)

    @property
    def key_value_heads(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def grouped_query(self) -> bool:
        return self.key_value_heads != self.heads

    @property
    def weights_per_layer(self) -> int:
        """Projection and MLP weights of one layer: (2 H + 2 H_kv) x d_model x D (q, o; k, v) +
        mlp_matrices x d_model x ffn."""
        projections = (2 * self.heads + 2 * self.key_value_heads) * self.d_model * self.head_dim
        return projections + self.mlp_matrices * self.d_model * self.ffn

    @property
    def lm_head_weights(self) -> int:
        """The output projection to the vocabulary, read once per decode step."""
        return self.vocab * self.d_model


_GPT2 = "Hugging Face config.json of openai-community/{}; Radford et al. 2019"
DECODERS: dict[str, DecoderShape] = {
    "gpt2": DecoderShape("gpt2", 12, 768, 12, 64, 3072, 2, 50257, _GPT2.format("gpt2")),
    "gpt2-medium": DecoderShape("gpt2-medium", 24, 1024, 16, 64, 4096, 2, 50257, _GPT2.format("gpt2-medium")),
    "gpt2-large": DecoderShape("gpt2-large", 36, 1280, 20, 64, 5120, 2, 50257, _GPT2.format("gpt2-large")),
    "gpt2-xl": DecoderShape("gpt2-xl", 48, 1600, 25, 64, 6400, 2, 50257, _GPT2.format("gpt2-xl")),
    "llama-7b": DecoderShape(
        "llama-7b", 32, 4096, 32, 128, 11008, 3, 32000, "Touvron et al. 2023 (LLaMA), Table 2: 7B; SwiGLU MLP"
    ),
}


def decoder(name: str) -> DecoderShape:
    """Look a decoder up by name; the error lists the names known."""
    try:
        return DECODERS[name]
    except KeyError:
        raise GainCellError(f"--model: unknown model {name!r}; choose from {sorted(DECODERS)}") from None


#: config.json keys of each quantity, in the spellings of GPT-2, GPT-NeoX and Llama-style configs.
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "heads": ("num_attention_heads", "n_head"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "vocab": ("vocab_size",),
}
#: Families whose MLP is gated (SwiGLU / GeGLU: gate, up and down matrices).
GATED_MLP_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2"})


def _config_value(config: dict[str, Any], quantity: str, source: str) -> int:
    for key in _CONFIG_KEYS[quantity]:
        value = config.get(key)
        if value is not None:
            check_int(f"{source}: {key}", value, 1)
            return value
    raise GainCellError(f"{source}: config has none of {', '.join(_CONFIG_KEYS[quantity])} ({quantity})")


def shape_from_config(config: dict[str, Any], name: str, source: str) -> DecoderShape:
    """A :class:`DecoderShape` from a transformers ``config.json`` dict (GPT-2, GPT-NeoX, Llama, ...)."""
    layers, heads = _config_value(config, "layers", source), _config_value(config, "heads", source)
    d_model, vocab = _config_value(config, "d_model", source), _config_value(config, "vocab", source)
    head_dim = config.get("head_dim") or d_model // heads
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise GainCellError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    ffn = config.get("intermediate_size") or config.get("n_inner") or 4 * d_model
    # A saved gain-cell model names its own architecture; its MLP is the base model's (gaincell.hf.architecture).
    gated = config.get("base_model_type", config.get("model_type")) in GATED_MLP_TYPES
    return DecoderShape(name, layers, d_model, heads, int(head_dim), int(ffn), 3 if gated else 2, vocab, source, kv_heads)


def load_shape(model: str) -> DecoderShape:
    """A decoder shape from a known name, a saved model directory (its ``config.json``, read as JSON),
    or a hub id (its config fetched with transformers, imported only here)."""
    if model in DECODERS:
        return DECODERS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise GainCellError(f"--model: {model} has no config.json (not a saved model directory)")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise GainCellError(f"--model: cannot read {config_file}: {error}") from None
        return shape_from_config(config, path.name, f"--model {model}")
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise GainCellError(f"--model: {model!r} is neither a known name ({', '.join(DECODERS)}) nor a model directory")
    return shape_from_config(_hub_config(model), model, f"--model {model} (hub config)")


def _hub_config(model_id: str) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id).to_dict()
    except Exception as error:  # offline, unknown id, gated repository: one line, named
        raise GainCellError(
            f"--model: {model_id!r} is not a known name ({', '.join(DECODERS)}), a directory, or a readable hub id: "
            f"{first_line(error)}"
        ) from None
