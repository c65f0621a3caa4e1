"""Generation through the gain-cell memory: a transformers ``Cache`` whose layers are analog memories.

A converted model's ``generate`` gets a :class:`GainCellCache` (see
:class:`gaincell.hf.convert.GainCellGeneration`). Its layer ``update`` does not keep past keys as a
``DynamicCache`` would; it only counts tokens and hands the new key/value to the same layer's
:class:`~gaincell.hf.layer.GainCellAttention`, which reads them through a
:class:`~gaincell.op.memory.GainCellMemory` of M slots (SPEC §3.6): the prompt is prefilled with the
parallel op, each new token is written into slot t mod M and read step by step. Memory is O(M),
whatever the length generated.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from gaincell.errors import GainCellError
from gaincell.hf.layer import gain_cell_layers
from gaincell.op.memory import GainCellMemory


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
