"""gaincell: analog in-memory-computing attention on gain-cell memories, simulated, adapted and costed.

Leroux et al., *Analog in-memory computing attention mechanism for fast and energy-efficient large
language models*, Nature Computational Science 5, 813–824 (2025).

The public names below are loaded on first use (PEP 562), so ``gaincell hw``, a pure cost model,
starts without importing torch; ``import gaincell; gaincell.convert(...)`` works as usual.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "gain_cell_attention": "gaincell.attention",
    "CellGains": "gaincell.cells",
    "CellModel": "gaincell.cells",
    "build_cell": "gaincell.cells",
    "register_cell": "gaincell.cells",
    "load": "gaincell.checkpoint",
    "save": "gaincell.checkpoint",
    "PRESETS": "gaincell.config",
    "CellConfig": "gaincell.config",
    "GainCellConfig": "gaincell.config",
    "NoiseConfig": "gaincell.config",
    "PeripheryConfig": "gaincell.config",
    "QuantizerConfig": "gaincell.config",
    "preset": "gaincell.config",
    "convert": "gaincell.convert",
    "gain_cell_attention_equations": "gaincell.equations",
    "GainCellError": "gaincell.errors",
    "sliding_window_softmax": "gaincell.kernels.softmax",
    "GainCellMemory": "gaincell.memory",
    "Scalers": "gaincell.scalers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gaincell' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """``gaincell.convert`` is the function even after the module of the same name is imported (the
    import system then sets the package attribute to the module; this keeps the function)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
