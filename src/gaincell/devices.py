"""Where a command computes and in which precision: one reading of every ``--device`` and ``--dtype``.

Every command and benchmark that loads or builds a model takes the same two options, so a user who
learned them once can move any of them to a GPU. A device that this machine lacks is refused before
anything is loaded, in one line that names the option (``--device cuda`` on a machine without CUDA),
instead of torch's error from deep inside the first forward. Inputs follow the model:
:func:`model_device` is where a model's weights are, which after ``accelerate`` trained it is the GPU.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gaincell.errors import GainCellError, first_line

#: The floating-point types a model may be loaded in, by the names torch gives them, and their short forms.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: What ``--dtype`` means for a run that trains: accelerate's ``mixed_precision`` (weights stay float32).
MIXED_PRECISION = {"auto": "auto", "float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def parse_device(name: str | torch.device | None, where: str = "--device") -> torch.device:
    """``name`` as a device this machine has; None or ``auto``: the GPU when there is one, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise GainCellError(f"{where} must be auto, cpu, cuda or cuda:N, got {str(name)!r} ({first_line(error)})") from None
    if device.type == "meta":  # torch's shape-only device: no number is ever computed on it
        raise GainCellError(f"{where} must be auto, cpu, cuda or cuda:N, got {str(name)!r} (meta holds no values)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GainCellError(f"{where} {name}: this machine has no CUDA GPU that torch can use; use {where} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GainCellError(f"{where} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return device
    try:
        torch.empty(0, device=device)  # a device type torch knows but this machine lacks fails here
    except Exception as error:
        raise GainCellError(f"{where} {name}: cannot use it here: {first_line(error)}") from None
    return device


def memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """How much memory ``device`` has: a CUDA GPU's total, else this machine's physical memory (None when the
    system does not say)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no limit known
        return None


def check_fits(where: str, shape: str, needed: int, device: str | torch.device = "cpu", hint: str = "") -> None:
    """Refuse a run that needs more than ``device`` holds (``needed`` bytes, a lower bound), before torch tries to
    allocate it: one line with both numbers, not an allocator's traceback (or a machine swapping for hours)."""
    available = memory_bytes(device)
    if available is not None and needed > available:
        where_memory = "GPU" if torch.device(device).type == "cuda" else "machine"
        raise GainCellError(
            f"{where}: {shape} need at least {needed / 1e9:,.1f} GB, more than this {where_memory}'s "
            f"{available / 1e9:,.1f} GB of memory{'; ' + hint if hint else ''}"
        )


def parse_dtype(name: str | torch.dtype | None, where: str = "--dtype") -> torch.dtype | None:
    """``float32`` | ``bfloat16`` | ``float16`` (or fp32, bf16, fp16) as a torch dtype; None stays None."""
    if name is None or isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    key = DTYPE_ALIASES.get(str(name), str(name))
    if key not in DTYPES:
        choices = ", ".join([*DTYPES, *DTYPE_ALIASES])
        raise GainCellError(f"{where} must be one of {choices}, got {str(name)!r}")
    return DTYPES[key]


def mixed_precision(name: str | None, where: str = "--dtype") -> str:
    """A training run's ``--dtype`` as accelerate's ``mixed_precision``: bf16 autocast over float32 weights."""
    if name is None or name == "auto":
        return "auto"
    dtype = parse_dtype(name, where)
    return MIXED_PRECISION[next(key for key, value in DTYPES.items() if value == dtype)]


def add_arguments(parser: argparse.ArgumentParser, dtype_help: str | None = None) -> None:
    """``--device`` and ``--dtype`` with the same words in every command."""
    parser.add_argument("--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N (default: cuda when available)")
    names = " | ".join(DTYPES)
    parser.add_argument("--dtype", metavar="DTYPE", help=dtype_help or f"{names} weights (default: float32)")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def accelerate_on(device: torch.device) -> Iterator[None]:
    """Make accelerate, which places every training run, train on ``device``: it takes the GPU whenever
    there is one unless ``ACCELERATE_USE_CPU`` says otherwise, and the current CUDA device for ``cuda:N``."""
    previous = os.environ.get("ACCELERATE_USE_CPU")
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = previous
