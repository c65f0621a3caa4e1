"""Which fast form computes the parallel analog core: one place that chooses, one setting that overrides.

``torch`` is the banded form (:mod:`~gaincell.op.kernels.banded`): every device, every feature, and
the reference the other forms are tested against. ``triton`` is the fused GPU kernel. ``auto`` picks
the fused kernel on CUDA tensors when it is installed and supports the config, else the banded form.
The process default is ``$GAINCELL_KERNEL`` (else ``auto``); :func:`set_kernel` changes it and a
``kernel=`` argument of :func:`gaincell.op.attention.gain_cell_attention` overrides it for one call.
"""

from __future__ import annotations

import os

import torch

from gaincell.errors import GainCellError

#: The names a user may ask for.
KERNELS = ("auto", "torch", "triton")

_default = os.environ.get("GAINCELL_KERNEL", "auto") or "auto"


def check_kernel(name, where: str = "kernel") -> str:
    """``name`` if it is one of :data:`KERNELS`, else one clear error naming ``where``."""
    if name not in KERNELS:
        raise GainCellError(f"{where} must be one of {', '.join(KERNELS)}, got {name!r}")
    return name


def set_kernel(name: str) -> None:
    """Set the process default (``auto`` | ``torch`` | ``triton``) for every later call."""
    global _default
    _default = check_kernel(name)


def default_kernel() -> str:
    return check_kernel(_default, "$GAINCELL_KERNEL")


def triton_unsupported(device: torch.device, *, gains: bool, read_noise: float) -> str | None:
    """Why the fused kernel cannot run here (a sentence), or None when it can."""
    return "the fused Triton kernel is not built yet"


def choose_kernel(requested: str | None, device: torch.device, *, gains: bool, read_noise: float) -> str:
    """The form that will run: ``torch`` or ``triton`` (``auto`` falls back quietly; ``triton`` refuses)."""
    name = default_kernel() if requested is None else check_kernel(requested)
    if name == "torch":
        return name
    why = triton_unsupported(device, gains=gains, read_noise=read_noise)
    if why is None:
        return "triton"
    if name == "triton":
        raise GainCellError(f"kernel='triton' cannot run: {why}")
    return "torch"
