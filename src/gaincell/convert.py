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
import math
from dataclasses import dataclass

import torch
from torch import nn

from gaincell.attention import gain_cell_attention
from gaincell.cells import CellGains
from gaincell.config import GainCellConfig, preset
from gaincell.errors import GainCellError
from gaincell.scalers import Scalers

ATTENTION_NAME = "gaincell"

#: EMA weight of the target statistics recorded in the linear stage (SPEC §4.1: α = 0.1).
TARGET_MOMENTUM = 0.1


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


class GainCellAttention(nn.Module):
    """The gain-cell state of one attention layer: scalers, calibration targets, chip gains.

    ``targets`` are per (scaler q/k/v/o, head) running mean and std of the scaler outputs, recorded
    as an EMA while ``recording`` in training mode (SPEC §4.1). While ``observing``, each forward leaves the current
    statistics in ``observed`` for the calibration loop (SPEC §4.2).
    """

    def __init__(self, config: GainCellConfig, n_heads: int, head_dim: int, layer: int):
        super().__init__()
        self.n_heads, self.head_dim, self.layer = n_heads, head_dim, layer
        self.scalers = Scalers(n_heads, config.periphery.offset)
        names = len(Scalers.names)
        self.register_buffer("target_mean", torch.zeros(names, n_heads))
        self.register_buffer("target_std", torch.ones(names, n_heads))
        self.register_buffer("target_count", torch.zeros((), dtype=torch.long))
        self.recording = False
        self.observing = False
        self.observed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pending = None  # (cache layer, key tensor) handed over by GainCellCacheLayer.update
        self.set_config(config)

    def set_config(self, config: GainCellConfig) -> None:
        self.config = config
        self._gains: dict[torch.device, CellGains | None] = {}

    def chip_gains(self, device) -> CellGains | None:
        """This layer's cell variability (SPEC §3.5), sampled once per device from the config's seed."""
        device = torch.device(device)
        if device not in self._gains:
            self._gains[device] = CellGains.sample(self.config, self.n_heads, self.head_dim, self.layer, device)
        return self._gains[device]

    def extra_repr(self) -> str:
        return f"layer={self.layer}, heads={self.n_heads}, head_dim={self.head_dim}, attention={self.config.attention}"

    def forward(self, query, key, value, scaling: float | None = None) -> torch.Tensor:
        """(B, H, T, D) states in, (B, H, T, D) attention out, through the generation memory when a
        :class:`~gaincell.generation.GainCellCache` just stored ``key``, else the parallel op."""
        cache_layer = self._claim(key)
        if query.shape[2] != key.shape[2]:
            raise GainCellError(
                f"gain-cell attention got {query.shape[2]} queries against {key.shape[2]} keys: a transformers "
                "cache that keeps past keys was passed; gain-cell models generate through "
                "gaincell.GainCellCache(model) (model.generate uses it by default)"
            )
        softmax = self.config.attention == "softmax"
        if softmax and scaling is not None:  # the model's own score scale; the window does the rest
            query = query * (scaling * math.sqrt(query.shape[-1]))
        if key.shape[1] != query.shape[1]:  # grouped-query attention: each query head reads its own copy
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scalers = None if softmax else self.scalers
        if cache_layer is not None:
            output = cache_layer.read(self, query, key, value)
        else:
            output = gain_cell_attention(query, key, value, scalers, self.config, gains=self.chip_gains(query.device))
        if not softmax and ((self.recording and self.training) or self.observing):
            self._statistics(query, key, value, output)
        return output

    def _claim(self, key):
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        layer, stored = pending
        if stored is not key:
            raise GainCellError(
                f"layer {self.layer}: the keys given to attention are not those the gain-cell cache just stored; "
                "this model family transforms keys between the cache and attention and cannot generate through "
                "the gain-cell memory"
            )
        return layer

    @torch.no_grad()
    def _statistics(self, query, key, value, output) -> None:
        """Per-head mean and std after each scaler (q, k, v after a·x + b; o is the op's output)."""
        after = [self.scalers.apply(name, x) for name, x in zip("qkv", (query, key, value), strict=True)] + [output]
        means = torch.stack([x.float().mean(dim=(0, 2, 3)) for x in after])
        stds = torch.stack([x.float().std(dim=(0, 2, 3), unbiased=False) for x in after])
        if self.observing:
            self.observed = (means, stds)
        if self.recording and self.training:
            if int(self.target_count) == 0:
                self.target_mean.copy_(means)
                self.target_std.copy_(stds)
            else:
                self.target_mean.lerp_(means, TARGET_MOMENTUM)
                self.target_std.lerp_(stds, TARGET_MOMENTUM)
            self.target_count += 1


def _attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function transformers calls in place of softmax attention (AttentionInterface signature)."""
    cell = getattr(module, "gaincell", None)
    if not isinstance(cell, GainCellAttention):
        raise GainCellError(
            f"{type(module).__name__} has no gain-cell state but the model selects attn_implementation="
            f"{ATTENTION_NAME!r}; convert it with gaincell.convert(model, config)"
        )
    return cell(query, key, value, scaling).transpose(1, 2).contiguous(), None


def _padding_check(*args, attention_mask=None, **kwargs):
    """Mask function for transformers' mask interface: the op is causal and windowed by itself, so no
    mask is built; padding cannot be honoured (the memory writes every token), so it is refused."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise GainCellError(
            "attention_mask has padded positions, which gain-cell attention cannot skip (every token is written "
            "into the analog memory): run sequences of different lengths separately, without padding"
        )
    return None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _padding_check)


class GainCellGeneration:
    """Mixed into a converted model's class so ``generate`` runs through the gain-cell memory.

    Only the default cache changes: unless a cache is passed or ``use_cache=False``, generation
    gets a fresh :class:`~gaincell.generation.GainCellCache` (one memory of M slots per layer).
    """

    def generate(self, *args, **kwargs):
        from gaincell.generation import GainCellCache

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
            "(gaincell.convert.register_family adds one)"
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


def gain_cell_layers(model) -> list[GainCellAttention]:
    """The :class:`GainCellAttention` of every layer of a converted model, in layer order."""
    layers = [getattr(m, "gaincell", None) for m in attention_modules(model)]
    if not all(isinstance(layer, GainCellAttention) for layer in layers):
        raise GainCellError("model is not converted to gain-cell attention: call gaincell.convert(model, config) first")
    return layers


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

    ``config`` is a :class:`~gaincell.config.GainCellConfig` or a preset name (``changes`` override
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
