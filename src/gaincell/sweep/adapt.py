"""A sweep's ``[adapt]`` section: adapt the model to each point's hardware before measuring it.

An unadapted model's perplexity on a point says more about the mismatch with softmax than about the
point (docs/sweep.md); a designer sizing an ADC wants each point's model adapted to that ADC. Per
point, from the base model (plain or already adapted), the sweep re-runs the data-driven scaler
initialisation of SPEC §4.4 for that point's DAC/ADC ranges (no gradient: statistics of the original
softmax model, ``teacher``, on ``text``), then optionally distils the point's model against that
softmax model for ``distill_tokens`` tokens (:func:`gaincell.adaptation.transfer.distill_stage`)::

    [adapt]
    teacher = "$GAINCELL_DATA/models/stories260K"   # the pre-trained softmax model (required)
    text = "examples/data/stories260K-samples.txt"  # statistics (and training) text (required)
    block_size = 256                                # tokens per block; default: the sweep's context
    distill_tokens = 65536                          # per point; 0 (default): initialisation only
    distill_text = "…"                              # default: text
    [adapt.initialise]                              # InitialiseConfig fields (sigmas, batch_size, batches, output, seed)
    [adapt.distill]                                 # DistillConfig fields: lr, batch_size, checkpoint_every, teacher, …

Pure validation here (no torch); :mod:`gaincell.sweep.adapter` does the work.
"""

from __future__ import annotations

from typing import Any

from gaincell.adaptation.settings import DistillConfig, InitialiseConfig
from gaincell.chip.config import GainCellConfig
from gaincell.datadir import expand_data_path
from gaincell.errors import GainCellError
from gaincell.sweep.inputs import check_model_dir, check_text
from gaincell.validation import check_choice, check_int, check_table, fail, field_names, reject_unknown, within

ADAPT_PATHS = ("teacher", "text", "distill_text")
ADAPT_KEYS = ("teacher", "text", "scalers", "block_size", "distill_tokens", "distill_text", "initialise", "distill")
#: How a point's scalers start: the original model's statistics (SPEC §4.4), or the adapted model's own
#: trained scalers re-expressed for the point's DAC ranges; "auto": statistics for a plain model, else remap.
SCALER_STARTS = ("auto", "statistics", "remap")
#: DistillConfig fields the sweep sets itself: the steps come from the token budget; no evaluation, logs or bars.
FIXED_DISTILL = ("max_steps", "eval_every", "eval_batches", "log_jsonl", "report_to", "progress_bar")
#: The sweep's defaults for a short distillation (DistillConfig's own warm-up of 100 steps is for long runs).
DISTILL_DEFAULTS = {"warmup_steps": 0, "checkpoint_every": 50, "eval_every": 0, "eval_batches": None,
                    "log_jsonl": None, "progress_bar": False}  # fmt: skip


def adapt_from_dict(value: Any, gain_cell: bool = False) -> dict | None:
    """The checked ``[adapt]`` table (paths expanded, defaults filled), or None without one.

    ``gain_cell``: the sweep's model is already adapted (saved with a gain-cell config), which
    decides ``scalers = "auto"``."""
    if value is None:
        return None
    check_table("adapt", value)
    reject_unknown("adapt", value, ADAPT_KEYS)
    table = {**value, **{name: expand_data_path(value[name], f"adapt.{name}") for name in ADAPT_PATHS if name in value}}
    if not isinstance(table.get("teacher"), str) or not table["teacher"]:
        expected = "a path to the pre-trained softmax model (initialisation and distillation imitate it)"
        fail("adapt.teacher", expected, table.get("teacher"))
    _check_teacher(table["teacher"])
    for name in ("text", "distill_text"):
        if name == "text" and not isinstance(table.get(name), str):
            fail("adapt.text", "a text file or folder of .txt files (the statistics' text)", table.get(name))
        if name in table:
            check_text(table[name], f"adapt.{name}")
    table["scalers"] = _scaler_start(table.get("scalers", "auto"), gain_cell)
    table.setdefault("distill_tokens", 0)
    check_int("adapt.distill_tokens", table["distill_tokens"], 0)
    table.setdefault("block_size", None)
    if table["block_size"] is not None:
        check_int("adapt.block_size", table["block_size"], 2)
    table["initialise"] = _settings(table.get("initialise", {}), "initialise", InitialiseConfig, ())
    table["distill"] = _settings(table.get("distill", {}), "distill", DistillConfig, FIXED_DISTILL)
    if table["distill"] and table["distill_tokens"] == 0:
        raise GainCellError("adapt.distill: distillation settings given, but adapt.distill_tokens is 0 (no distillation)")
    distill_config(table, steps=10**9)  # every field checked now; the steps once the block size is known
    return table


def _scaler_start(value: Any, gain_cell: bool) -> str:
    check_choice("adapt.scalers", value, SCALER_STARTS)
    if value == "remap" and not gain_cell:
        raise GainCellError("adapt.scalers: 'remap' re-expresses an adapted model's trained scalers, but the sweep's "
                            "model is a plain one; use 'statistics' (or 'auto')")  # fmt: skip
    if value == "auto":
        return "remap" if gain_cell else "statistics"
    return value


def _check_teacher(path: str) -> None:
    """The teacher is the original softmax model: plain, or converted to softmax attention only."""
    saved = check_model_dir(path, "adapt.teacher").get("gaincell")
    if saved is not None and GainCellConfig.from_dict(saved).attention != "softmax":
        raise GainCellError(f"adapt.teacher: {path} is a gain-cell model; name the pre-trained softmax model")


def _settings(value: Any, name: str, cls: type, fixed: tuple[str, ...]) -> dict:
    check_table(f"adapt.{name}", value)
    reject_unknown(f"adapt.{name}", value, [field for field in field_names(cls) if field not in fixed])
    if cls is InitialiseConfig:
        with within(f"adapt.{name}"):
            cls(**value)
    return dict(value)


def initialise_config(adapt: dict) -> InitialiseConfig:
    return InitialiseConfig(**adapt["initialise"])


def distill_config(adapt: dict, steps: int) -> DistillConfig:
    """The distillation's settings for ``steps`` optimiser steps; errors name ``adapt.distill.<field>``."""
    with within("adapt.distill"):
        return DistillConfig(**{**DISTILL_DEFAULTS, **adapt["distill"], "max_steps": steps})
