"""gaincell: analog in-memory-computing attention on gain-cell memories, simulated, adapted and costed.

Leroux et al., *Analog in-memory computing attention mechanism for fast and energy-efficient large
language models*, Nature Computational Science 5, 813–824 (2025).
"""

from gaincell.attention import CellGains, Scalers, gain_cell_attention, sliding_window_softmax
from gaincell.cells import CellModel, build_cell, register_cell
from gaincell.checkpoint import load, save
from gaincell.config import (
    PRESETS,
    CellConfig,
    GainCellConfig,
    NoiseConfig,
    PeripheryConfig,
    QuantizerConfig,
    preset,
)
from gaincell.convert import convert
from gaincell.errors import GainCellError
from gaincell.memory import GainCellMemory

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CellConfig",
    "CellGains",
    "CellModel",
    "GainCellConfig",
    "GainCellError",
    "GainCellMemory",
    "NoiseConfig",
    "PeripheryConfig",
    "QuantizerConfig",
    "Scalers",
    "build_cell",
    "convert",
    "gain_cell_attention",
    "load",
    "preset",
    "register_cell",
    "save",
    "sliding_window_softmax",
]
