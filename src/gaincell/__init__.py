"""gaincell: analog in-memory-computing attention on gain-cell memories, simulated, adapted and costed.

Leroux et al., *Analog in-memory computing attention mechanism for fast and energy-efficient large
language models*, Nature Computational Science 5, 813–824 (2025).
"""

from gaincell.attention import gain_cell_attention
from gaincell.cells import CellGains, CellModel, build_cell, register_cell
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
from gaincell.equations import gain_cell_attention_equations
from gaincell.errors import GainCellError
from gaincell.kernels.softmax import sliding_window_softmax
from gaincell.memory import GainCellMemory
from gaincell.scalers import Scalers

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
    "gain_cell_attention_equations",
    "load",
    "preset",
    "register_cell",
    "save",
    "sliding_window_softmax",
]
