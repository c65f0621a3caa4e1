"""The per-head affine scalers around the arrays (SPEC §3.2–3.3): trainable, set by the adaptation."""

from __future__ import annotations

import torch
from torch import nn

from gaincell.validation import check_int


class Scalers(nn.Module):
    """Per-head affine maps before the arrays (q, k, v) and after the ADC (output), SPEC §3.2–3.3.

    Initial values as the paper: a = 1, b_q = 0, b_k = b_v = the cell offset (0.45 V), b_o = 0.
    """

    names = ("q", "k", "v", "o")

    def __init__(self, n_heads: int, offset: float = 0.45):
        super().__init__()
        check_int("n_heads", n_heads, 1)
        self.n_heads = n_heads
        for name in self.names:
            bias = offset if name in ("k", "v") else 0.0
            self.register_parameter(f"a_{name}", nn.Parameter(torch.ones(n_heads)))
            self.register_parameter(f"b_{name}", nn.Parameter(torch.full((n_heads,), bias)))

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """a · x + b with one (a, b) per head; x is (B, H, T, D)."""
        a = getattr(self, f"a_{name}").to(x.dtype)[:, None, None]
        b = getattr(self, f"b_{name}").to(x.dtype)[:, None, None]
        return torch.addcmul(b, a, x)
