"""Put gain-cell attention into a Hugging Face causal LM, in place (SPEC §3, §4).

The model stays a normal ``transformers`` model: its attention modules call the attention function
registered here under the name ``"gaincell"`` (transformers' ``AttentionInterface``, selected by
``config._attn_implementation``), so RoPE, projections, caches and masks stay the library's own.
Each attention module gets one child, :class:`GainCellAttention`, holding what the chip adds to
that layer: the per-head scalers (trainable parameters), the calibration targets of SPEC §4
(buffers, saved with the weights) and the chip's cell gains. The gain-cell config is written into
``model.config.gaincell``, so ``save_pretrained`` stores everything in one directory.

Converting an already converted model only switches its config (the scalers and targets are
kept): that is how the adaptation recipe moves from the linear to the nonlinear model.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from gaincell.chip.config import GainCellConfig, preset
from gaincell.errors import GainCellError
from gaincell.hf.layer import GainCellAttention

ATTENTION_NAME = "gaincell"


@dataclass(frozen=True)
class Family:
    """How to find the attention modules of one ``transformers`` model family."""

    model_type: str
    attention_class: str


FAMILIES: dict[str, Family] = {}


def register_family(model_type: str, attention_class: str) -> None:
    """Declare that ``model_type``'s attention modules (class ``attention_class``) call the
    ``AttentionInterface`` with (B, H, T, D) states, RoPE already applied, so they can be converted."""
    FAMILIES[model_type] = Family(model_type, attention_class)


register_family("gpt2", "GPT2Attention")
register_family("gpt_neox", "GPTNeoXAttention")
register_family("llama", "LlamaAttention")


def _attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function transformers calls in place of softmax attention (AttentionInterface signature)."""
    cell = getattr(module, "gaincell", None)
    if not isinstance(cell, GainCellAttention):
        raise GainCellError(
            f"{type(module).__name__} has no gain-cell state but the model selects attn_implementation="
            f"{ATTENTION_NAME!r}; convert it with gaincell.convert(model, config)"
        )
    _check_full_mask(attention_mask)
    return cell(query, key, value, scaling).transpose(1, 2).contiguous(), None


PADDING = (
    "attention_mask has padded positions, which gain-cell attention cannot skip (every token is written "
    "into the analog memory): run sequences of different lengths separately, without padding"
)


def _padding_check(*args, attention_mask=None, **kwargs):
    """Mask function for transformers' mask interface: the op is causal and windowed by itself, so no
    mask is built; padding cannot be honoured (the memory writes every token), so it is refused."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise GainCellError(PADDING)
    return None


def _check_full_mask(attention_mask) -> None:
    """A 4-D mask reaches attention as given (transformers builds none from it): the op applies only its own
    causal window, so a mask that hides or biases any causal position (padding) is refused, not ignored."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        return
    queries, keys = attention_mask.shape[-2:]
    rows = torch.arange(queries, device=attention_mask.device)[:, None] + (keys - queries)
    causal = torch.arange(keys, device=attention_mask.device)[None, :] <= rows
    hidden = ~attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
    if bool((hidden & causal).any()):
        raise GainCellError(PADDING)


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _padding_check)


class GainCellGeneration:
    """Mixed into a converted model's class so ``generate`` runs through the gain-cell memory and
    ``save_pretrained`` writes a folder of the gain-cell architecture (:mod:`gaincell.hf.architecture`).

    Only the default cache changes: unless a cache is passed or ``use_cache=False``, generation
    gets a fresh :class:`~gaincell.hf.cache.GainCellCache` (one memory of M slots per layer).
    """

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Saved as the base model's type, the folder would load everywhere as that model with softmax attention.
        from gaincell.hf.architecture import write_architecture

        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_architecture(save_directory)
        return result

    def generate(self, *args, **kwargs):
        # Imported here, not at the top, only so that `import gaincell` stays free of transformers'
        # cache classes (`gaincell hw` starts in a fraction of the time); there is no cycle to avoid.
        from gaincell.hf.cache import GainCellCache

        name = _cache_argument(type(self))
        if kwargs.get("use_cache", True) is not False and kwargs.get(name) is None:
            kwargs.pop("past_key_values" if name == "cache" else "cache", None)
            kwargs[name] = GainCellCache(self)
        return super().generate(*args, **kwargs)


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The name transformers uses for the cache argument (``cache`` since v5.x, else ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@functools.cache
def _generation_class(base: type) -> type:
    """``base`` with :class:`GainCellGeneration` mixed in, keeping its name (saved as the architecture)."""
    return type(base.__name__, (GainCellGeneration, base), {"__module__": base.__module__, "__doc__": base.__doc__})


def _family(model) -> Family:
    from transformers import PreTrainedModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not isinstance(model, PreTrainedModel):
        raise GainCellError(
            f"model must be a transformers causal LM (a PreTrainedModel such as GPT2LMHeadModel), got {type(model).__name__}"
        )
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise GainCellError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))} "
            "(gaincell.hf.convert.register_family adds one)"
        )
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    causal = {causal} if isinstance(causal, str) else set(causal or ())
    if type(model).__name__ not in causal:
        raise GainCellError(
            f"model must be a causal LM with a language-model head ({', '.join(sorted(causal))}), got {type(model).__name__}"
        )
    return FAMILIES[model_type]


def attention_modules(model) -> list[nn.Module]:
    """The self-attention modules of a supported model, in layer order."""
    family = _family(model)
    modules = [m for m in model.modules() if type(m).__name__ == family.attention_class]
    if not modules:
        raise GainCellError(f"found no {family.attention_class} modules in {type(model).__name__}")
    return sorted(modules, key=lambda m: m.layer_idx)


def model_config(model) -> GainCellConfig:
    """The gain-cell config a converted model runs with."""
    data = getattr(model.config, "gaincell", None)
    if data is None:
        raise GainCellError("model is not converted to gain-cell attention: call gaincell.convert(model, config) first")
    return GainCellConfig.from_dict(data)


def _head_shape(model, module) -> tuple[int, int]:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(module, "head_dim", None) or getattr(module, "head_size", None) or config.hidden_size // heads
    return int(heads), int(head_dim)


def convert(model, config: GainCellConfig | str = "paper", **changes):
    """Turn a ``transformers`` causal LM into a gain-cell model in place, and return it.

    ``config`` is a :class:`~gaincell.chip.config.GainCellConfig` or a preset name (``changes`` override
    its top-level fields, e.g. ``window=128``). Pre-trained weights are kept; each attention layer
    gets fresh scalers (SPEC §3.2 initial values) unless the model was already converted, in which
    case only the config changes. Head dims beyond one sub-tile (D > R rows) cannot be mapped.
    """
    if isinstance(config, str):
        config = preset(config, **changes)
    elif changes:
        config = config.replace(**changes)
    if not isinstance(config, GainCellConfig):
        raise GainCellError(f"config must be a GainCellConfig or a preset name, got {type(config).__name__}")
    modules = attention_modules(model)
    for module in modules:
        heads, head_dim = _head_shape(model, module)
        if config.attention != "softmax" and head_dim > config.subtile_rows:
            raise GainCellError(
                f"head_dim {head_dim} does not fit a sub-tile: sub-tiles are square (subtile_rows x subtile_rows, "
                f"64 x 64 in the paper) and one head's D values span one side; use subtile_rows >= {head_dim}"
            )
    _register()
    for module in modules:
        heads, head_dim = _head_shape(model, module)
        cell = getattr(module, "gaincell", None)
        if isinstance(cell, GainCellAttention):
            cell.set_config(config)
            continue
        parameter = next(module.parameters(), None)
        cell = GainCellAttention(config, heads, head_dim, module.layer_idx)
        if parameter is not None:
            cell.to(parameter.device)
        module.gaincell = cell
    model.config.gaincell = config.to_dict()
    model.set_attn_implementation(ATTENTION_NAME)
    if not isinstance(model, GainCellGeneration):
        model.__class__ = _generation_class(type(model))
    return model
