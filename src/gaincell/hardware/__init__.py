"""Hardware cost model of gain-cell attention against GPUs (SPEC §6, SPEC-hardware).

- :mod:`~gaincell.hardware.constants`: sourced TOML presets -> frozen dataclasses (technologies, GPUs,
  the paper's figures);
- :mod:`~gaincell.hardware.gaincell_model`: analytic energy, latency and area per token (§6.3.1);
- :mod:`~gaincell.hardware.gpu`: memory-roofline decode attention and a local measurement (§6.2, §6.3.2),
  with the energy counters of :mod:`~gaincell.hardware.meters`;
- :mod:`~gaincell.hardware.compare`: ratios in both normalisations, whole-model Amdahl view, leakage ε
  (§6.3.3, §6.3.4);
- :mod:`~gaincell.hardware.report` / :mod:`~gaincell.hardware.render` / :mod:`~gaincell.hardware.plots`
  (``gaincell hw`` is :mod:`gaincell.commands.hw`): the report as data, as text, and its plots.

Importing this package loads only the standard library; torch, matplotlib and rich are imported by
the functions that need them.
"""

from gaincell.hardware.compare import RetentionCheck, ratios, retention_check, whole_model, with_leakage
from gaincell.hardware.constants import GpuDevice, Technology, load_gpus, load_reference, load_technology
from gaincell.hardware.gaincell_model import AttentionShape, GainCellEstimate, estimate
from gaincell.hardware.gpu import DecodeWorkload, GpuEstimate, measure, roofline

__all__ = [
    "AttentionShape",
    "DecodeWorkload",
    "GainCellEstimate",
    "GpuDevice",
    "GpuEstimate",
    "RetentionCheck",
    "Technology",
    "estimate",
    "load_gpus",
    "load_reference",
    "load_technology",
    "measure",
    "ratios",
    "retention_check",
    "roofline",
    "whole_model",
    "with_leakage",
]
