"""gaincell: analog in-memory-computing attention on gain-cell memories, simulated, adapted and costed.

Leroux et al., *Analog in-memory computing attention mechanism for fast and energy-efficient large
language models*, Nature Computational Science 5, 813–824 (2025).

The public names below are loaded on first use (PEP 562), so ``gaincell hw``, a pure cost model,
starts without importing torch; ``import gaincell; gaincell.convert(...)`` works as usual.
"""

from __future__ import annotations

import importlib

from gaincell.noise import filter_known_warnings

__version__ = "0.1.0"
filter_known_warnings()

#: Public name -> the module that defines it.
_EXPORTS = {
    "gain_cell_attention": "gaincell.op.attention",
    "CellGains": "gaincell.chip.cells",
    "CellModel": "gaincell.chip.cells",
    "build_cell": "gaincell.chip.cells",
    "register_cell": "gaincell.chip.cells",
    "load": "gaincell.hf.pretrained",
    "save": "gaincell.hf.pretrained",
    "PRESETS": "gaincell.chip.config",
    "CellConfig": "gaincell.chip.config",
    "GainCellConfig": "gaincell.chip.config",
    "NoiseConfig": "gaincell.chip.config",
    "PeripheryConfig": "gaincell.chip.config",
    "QuantizerConfig": "gaincell.chip.config",
    "preset": "gaincell.chip.config",
    "convert": "gaincell.hf.convert",
    "gain_cell_attention_equations": "gaincell.op.equations",
    "GainCellError": "gaincell.errors",
    "sliding_window_softmax": "gaincell.op.kernels.softmax",
    "GainCellMemory": "gaincell.op.memory",
    "Scalers": "gaincell.op.scalers",
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
