"""The recipe file of ``gaincell adapt`` (SPEC §4, §4.4): model, data, target chip and the stages to run.

Read and checked whole before anything is loaded (no torch here), so a typo in the last stage's
table fails in a second, not after hours of the first stage: :func:`gaincell.adaptation.stages.adapt`
runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaincell.adaptation.settings import CalibrationConfig, DistillConfig, InitialiseConfig, TrainConfig, TransferConfig
from gaincell.chip.config import GainCellConfig, preset
from gaincell.datadir import expand_data_path
from gaincell.errors import GainCellError
from gaincell.tomlfile import parse_override, read_toml, set_nested
from gaincell.validation import (
    check_int,
    check_string,
    check_table,
    fail,
    field_names,
    is_number,
    merge_tables,
    reject_unknown,
    within,
)


@dataclass(frozen=True)
class DataSection:
    """Where the recipe's tokens come from: a local text file/folder or a hub dataset."""

    text: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    eval_text: str | None = None
    eval_split: str | None = None
    block_size: int = 1024
    eval_fraction: float = 0.05
    eval_blocks: int | None = None

    def __post_init__(self) -> None:
        """Checked with the rest of the recipe, before the model loads."""
        for name in ("text", "dataset", "dataset_config", "eval_text", "eval_split"):
            if getattr(self, name) is not None:
                check_string(name, getattr(self, name))
        for name in ("split", "text_column"):
            check_string(name, getattr(self, name))
        check_int("block_size", self.block_size, 2)
        if not is_number(self.eval_fraction) or not 0 < self.eval_fraction < 1:
            fail("eval_fraction", "a number in (0, 1)", self.eval_fraction)
        if self.eval_blocks is not None:
            check_int("eval_blocks", self.eval_blocks, 1)


#: Every stage a recipe can run, in the only order they can run in (SPEC §4, §4.4).
STAGES = ("initialised", "transfer", "linear", "calibrated", "nonlinear", "distill")
PAPER_STAGES = ("linear", "calibrated", "nonlinear")


@dataclass(frozen=True)
class Recipe:
    """One adaptation run: model, data, target chip and the stages to run (SPEC §4, §4.4).

    ``model`` is a hub id, a local folder or a ``.gguf`` file (or a folder/hub repo plus
    ``gguf_file``). ``stages`` picks, in order, from :data:`STAGES`: the paper's three by default;
    ``initialised`` (data-driven scalers), ``transfer`` (attention transfer) and ``distill``
    (end-to-end fine-tuning against the original model's logits) are ours. ``hardware`` is a preset
    name plus overrides at any depth (``{"preset": "paper", "window": 1024, "periphery": {"adc":
    {"levels": 16}}}``) or a full gain-cell config dict. Training stage tables take
    :class:`~gaincell.adaptation.settings.TrainConfig` fields.
    """

    model: str = "gpt2"
    gguf_file: str | None = None
    stages: tuple[str, ...] = PAPER_STAGES
    output_dir: str = "adapt-run"
    data: DataSection = field(default_factory=DataSection)
    hardware: dict = field(default_factory=lambda: {"preset": "paper"})
    linear: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=3000, batch_size=16, grad_accum=120))
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    nonlinear: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=13000, batch_size=60, grad_accum=32))
    initialise: InitialiseConfig = field(default_factory=InitialiseConfig)
    transfer: TransferConfig = field(
        default_factory=lambda: TransferConfig(max_steps=200, batch_size=8, lr=1e-3, warmup_steps=10, weight_decay=0.0)
    )
    distill: DistillConfig = field(
        default_factory=lambda: DistillConfig(max_steps=1000, batch_size=8, lr=3e-4, warmup_steps=20)
    )

    def hardware_config(self) -> GainCellConfig:
        return hardware_from_dict(self.hardware)


def hardware_from_dict(data: dict) -> GainCellConfig:
    """``{"preset": name, **top-level overrides}`` or a full :meth:`GainCellConfig.to_dict` dict."""
    check_table("hardware", data)
    reject_unknown("hardware", data, ("preset", *field_names(GainCellConfig)))
    data = dict(data)
    with within("hardware"):
        if "preset" in data:
            data = merge_tables(preset(data.pop("preset")).to_dict(), data)
        try:
            return GainCellConfig.from_dict(data)
        except TypeError as error:
            raise GainCellError(f"hardware: {error}") from error


def _section(cls, data: Any, name: str, defaults: Any = None):
    """The table ``[name]`` as a ``cls``, on top of ``defaults`` (the dataclass's own when None)."""
    if data is None:
        return defaults if defaults is not None else cls()
    check_table(name, data)
    reject_unknown(name, data, field_names(cls))
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    with within(name):
        return cls(**{**base, **data})


def recipe_from_dict(data: dict) -> Recipe:
    """Build and validate a :class:`Recipe`; unknown keys anywhere are errors that name them."""
    check_table("recipe", data)
    reject_unknown("recipe", data, field_names(Recipe))
    defaults = Recipe()
    if isinstance(data.get("data"), dict):
        data = {**data, "data": {**data["data"], **_data_paths(data["data"])}}
    recipe = Recipe(
        model=expand_data_path(data.get("model", defaults.model), "model"),
        gguf_file=data.get("gguf_file"),
        stages=_stages(data.get("stages", defaults.stages)),
        output_dir=data.get("output_dir", defaults.output_dir),
        data=_section(DataSection, data.get("data"), "data"),
        hardware=data.get("hardware", defaults.hardware),
        linear=_section(TrainConfig, data.get("linear"), "linear", defaults.linear),
        calibration=_section(CalibrationConfig, data.get("calibration"), "calibration"),
        nonlinear=_section(TrainConfig, data.get("nonlinear"), "nonlinear", defaults.nonlinear),
        initialise=_section(InitialiseConfig, data.get("initialise"), "initialise"),
        transfer=_section(TransferConfig, data.get("transfer"), "transfer", defaults.transfer),
        distill=_section(DistillConfig, data.get("distill"), "distill", defaults.distill),
    )
    for name in ("model", "output_dir"):
        check_string(name, getattr(recipe, name))
    if (recipe.data.text is None) == (recipe.data.dataset is None):
        raise GainCellError("data: needs exactly one of text = PATH or dataset = NAME")
    recipe.hardware_config()  # validate now, not after the linear stage
    if recipe.gguf_file is not None and (not isinstance(recipe.gguf_file, str) or not recipe.gguf_file):
        fail("gguf_file", "a file name", recipe.gguf_file)
    trained = [name for name in ("transfer", "linear", "nonlinear", "distill") if name in recipe.stages]
    if len({getattr(recipe, name).mixed_precision for name in trained}) > 1:
        raise GainCellError(f"mixed_precision must be the same in {trained} (one accelerate state per run)")
    return recipe


def _data_paths(section: dict) -> dict:
    """``[data]``'s paths, each of which may start with ``$GAINCELL_DATA/`` (the shared data folder)."""
    return {name: expand_data_path(section[name], f"data.{name}") for name in ("text", "eval_text") if name in section}


def _stages(value: Any) -> tuple[str, ...]:
    """``stages``: a non-empty list of :data:`STAGES` names, each once, in that order; calibration needs targets."""
    names = ", ".join(STAGES)
    if not isinstance(value, (list, tuple)) or not value or not all(name in STAGES for name in value):
        fail("stages", f"a non-empty list of stage names from {names}", value)
    if list(value) != sorted(set(value), key=STAGES.index):
        fail("stages", f"each stage at most once, in the order {names}", list(value))
    if "calibrated" in value and "linear" not in value:
        raise GainCellError("stages: 'calibrated' needs the 'linear' stage before it (it records the targets)")
    return tuple(value)


def read_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe; ``overrides`` are ``section.key=value`` strings (values parsed as TOML)."""
    data = read_toml(path)
    for override in overrides:
        key, value = parse_override(override, "section.key=value")
        _switch_source(data, key)
        set_nested(data, key, value)
    return recipe_from_dict(data)


#: ``[data]`` keys that only mean something for one source: setting the other source drops them.
_SOURCE_KEYS = {"text": ("dataset", "dataset_config", "split", "text_column"), "dataset": ("text",)}


def _switch_source(data: dict, key: str) -> None:
    """``--set data.text=FILE`` on a recipe that reads a hub dataset (or ``data.dataset=NAME`` on one that
    reads a text) replaces the source instead of leaving the recipe with two: the other source's keys go."""
    section, _, name = key.partition(".")
    if section != "data" or name not in _SOURCE_KEYS or not isinstance(data.get("data"), dict):
        return
    for other in _SOURCE_KEYS[name]:
        data["data"].pop(other, None)
