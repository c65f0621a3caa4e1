"""Sliding-window softmax attention (SPEC §3.1): its banded parallel form and its generation step."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sliding_window_softmax(q, k, v, window: int, block_size: int = 128) -> torch.Tensor:
    """Softmax attention (scale D^-1/2) masked to the causal window, banded like the gain-cell op.

    Each query block is checkpointed, so training memory stays O(T·D + block·M) here too.
    """
    length = q.shape[2]
    outputs = []
    for start in range(0, length, block_size):
        stop = min(start + block_size, length)
        first = max(0, start - window + 1)
        query_pos = torch.arange(start, stop, device=q.device)[:, None]
        key_pos = torch.arange(first, stop, device=q.device)[None, :]
        age = query_pos - key_pos
        mask = (age >= 0) & (age < window)
        block = (q[:, :, start:stop], k[:, :, first:stop], v[:, :, first:stop], mask)
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            outputs.append(torch.utils.checkpoint.checkpoint(_softmax_block, *block, use_reentrant=False))
        else:
            outputs.append(_softmax_block(*block))
    return torch.cat(outputs, dim=2)


def _softmax_block(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sliding_window_softmax_step(q, keys, values, positions) -> torch.Tensor:
    """The step form: one query (B, H, 1, D) against the M kept raw keys and values (B, H, M, D);
    slots whose ``positions`` are −1 are empty. Every kept slot is in the window (SPEC §3.6)."""
    valid = (positions >= 0)[None, None, None, :]
    return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=valid)
