"""One attention layer's gain-cell state: scalers, calibration targets, chip gains (SPEC §3, §4).

:func:`gaincell.hf.convert.convert` gives every attention module of a model one
:class:`GainCellAttention` child; the attention function transformers calls hands it the layer's
(B, H, T, D) queries, keys and values, and it runs the parallel op, or reads through the layer's
analog memory when :class:`~gaincell.hf.cache.GainCellCache` is generating.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gaincell.chip.cells import CellGains
from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.op.attention import gain_cell_attention
from gaincell.op.scalers import Scalers

#: EMA weight of the target statistics recorded in the linear stage (SPEC §4.1: α = 0.1).
TARGET_MOMENTUM = 0.1


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
        per_channel = config.periphery.output_scaler == "channel" and config.attention != "softmax"
        if per_channel and not hasattr(self, "channel_gain"):  # identity at first: a_o, b_o per head as before
            device = self.scalers.a_o.device
            self.channel_gain = nn.Parameter(torch.ones(self.n_heads, self.head_dim, device=device))
            self.channel_offset = nn.Parameter(torch.zeros(self.n_heads, self.head_dim, device=device))
        elif not per_channel and hasattr(self, "channel_gain"):
            del self.channel_gain, self.channel_offset

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
        :class:`~gaincell.hf.cache.GainCellCache` just stored ``key``, else the parallel op."""
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
        if hasattr(self, "channel_gain"):  # periphery.output_scaler = "channel": per value column, after a_o, b_o
            gain, offset = self.channel_gain.to(output.dtype), self.channel_offset.to(output.dtype)
            output = torch.addcmul(offset[None, :, None, :], gain[None, :, None, :], output)
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


def gain_cell_layers(model: nn.Module) -> list[GainCellAttention]:
    """The :class:`GainCellAttention` of every layer of a converted model, in layer order."""
    layers = sorted((m for m in model.modules() if isinstance(m, GainCellAttention)), key=lambda m: m.layer)
    if not layers:
        raise GainCellError("model is not converted to gain-cell attention: call gaincell.convert(model, config) first")
    return layers
