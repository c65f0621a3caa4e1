"""Which fast form computes the parallel analog core: one place that chooses, one setting that overrides.

``torch`` is the banded form (:mod:`~gaincell.op.kernels.banded`): every device, every feature, and
the reference the other forms are tested against. ``triton`` is the fused GPU kernel
(:mod:`~gaincell.op.kernels.fused`). ``auto`` picks the fused kernel on CUDA tensors when triton
imports and the kernel computes the config (no read noise, no cell variability, no normaliser, not
float64, a cell polynomial of degree ≤ 5), else the banded form, quietly; ``triton`` refuses with the reason. CPU
tensors run the fused kernel only under ``TRITON_INTERPRET=1`` (Triton's interpreter: for tests).
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


def _triton_missing() -> str | None:
    """Why ``import triton`` fails here (a sentence), or None: checked once per process."""
    global _triton_import_error
    if _triton_import_error is None:
        try:
            import triton  # noqa: F401
        except ImportError as error:  # also a broken install (missing driver pieces, ...)
            _triton_import_error = f"triton is not importable ({error}); install gaincell[gpu]"
        else:
            _triton_import_error = ""
    return _triton_import_error or None


_triton_import_error: str | None = None


def triton_unsupported(
    device: torch.device, *, gains: bool, read_noise: float, config=None, dtype: torch.dtype | None = None
) -> str | None:
    """Why the fused kernel cannot run here (a sentence), or None when it can.

    It runs on CUDA tensors, and on CPU tensors only under the Triton interpreter
    (``TRITON_INTERPRET=1``, slow: how the tests run it). Read noise, cell variability and the
    normaliser are not in the kernel (they stay the banded form's), nor float64, nor cells of high
    polynomial degree.
    """
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"it needs CUDA tensors, got {device.type} (CPU tensors only under TRITON_INTERPRET=1)"
    if read_noise:
        return "read noise is not in the fused kernel (the torch form has it)"
    if config is not None and config.periphery.normaliser:
        return "the normaliser (periphery.normaliser) is not in the fused kernel (the torch form has it)"
    if gains:
        return "cell variability (gains) is not in the fused kernel (the torch form has it)"
    if dtype == torch.float64:
        return "float64 inputs (the fused kernel computes in float32)"
    if config is not None:
        from gaincell.op.kernels.fused import unsupported

        why = unsupported(config)
        if why:
            return why
    return _triton_missing()


def choose_kernel(
    requested: str | None,
    device: torch.device,
    *,
    gains: bool,
    read_noise: float,
    config=None,
    dtype: torch.dtype | None = None,
) -> str:
    """The form that will run: ``torch`` or ``triton`` (``auto`` falls back quietly; ``triton`` refuses)."""
    name = default_kernel() if requested is None else check_kernel(requested)
    if name == "torch":
        return name
    if name == "auto" and torch.device(device).type != "cuda":
        return "torch"  # the interpreter is for tests, never picked on its own
    why = triton_unsupported(device, gains=gains, read_noise=read_noise, config=config, dtype=dtype)
    if why is None:
        return "triton"
    if name == "triton":
        raise GainCellError(f"kernel='triton' cannot run: {why}")
    return "torch"
