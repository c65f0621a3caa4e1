"""A sweep's spec: reading and validating its TOML, the knobs, each point's config and cost (``gaincell sweep``).

A hardware designer asks "how many ADC bits", "which window", "how much read noise can the model take".
gaincell has both halves, the simulated op with every knob (SPEC §3) and the cost model (SPEC §6); a
sweep joins them. One TOML file names a saved model (gain-cell or plain), an evaluation text and a
grid (or list) of points over any :class:`~gaincell.chip.config.GainCellConfig` field; per point it
measures the strided perplexity (as ``gaincell eval``), optionally after adapting the model to that
point (``[adapt]``, :mod:`gaincell.sweep.adapt`) and re-running the calibration loop of SPEC §4.2,
and the cost model's energy, latency and area per token for the model's shape
(:func:`gaincell.hardware.models.load_shape`).

Pure configuration and arithmetic (no torch, no files written): :mod:`gaincell.sweep.run` runs a spec,
:mod:`gaincell.sweep.worker` measures one point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from gaincell.adaptation.settings import CalibrationConfig
from gaincell.chip.config import GainCellConfig, preset
from gaincell.datadir import expand_data_path
from gaincell.errors import GainCellError, first_line
from gaincell.hardware.constants import load_technology
from gaincell.hardware.gaincell_model import AttentionShape, estimate
from gaincell.sweep.adapt import adapt_from_dict
from gaincell.sweep.downstream import tasks_from_dict
from gaincell.sweep.inputs import check_model_dir, check_text
from gaincell.sweep.knobs import KNOB_ALIASES, LEAKAGE_KNOBS, point_dict
from gaincell.tomlfile import parse_override, read_toml, set_nested
from gaincell.validation import (
    FieldError,
    check_bool,
    check_choice,
    check_int,
    check_string,
    check_table,
    fail,
    field_names,
    is_int,
    reject_unknown,
    within,
)

ADC_COSTS = ("scaled", "fixed")

_TOP_LEVEL = {
    "model", "text", "output_dir", "preset", "context", "stride", "max_tokens", "batch_size", "seeds",
    "calibrate", "calibration_text", "calibration", "tech", "adc_cost", "jobs", "base", "grid", "points", "adapt", "tasks",
    "device", "dtype",
}  # fmt: skip


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: what to load, how to score, and the points (knob -> value) in order."""

    model: str
    text: str
    output_dir: str = "sweep"
    preset: str = "paper"  # the base hardware of a plain model (a gain-cell model starts from its own)
    context: int | None = None  # None: the model's positions
    stride: int | None = None  # None: half the context
    max_tokens: int | None = 8192
    batch_size: int = 1
    seeds: tuple[int, ...] = (0,)
    calibrate: bool = False
    calibration_text: str | None = None  # None: tokens of ``text`` after the scored ones
    calibration: dict = field(default_factory=dict)  # CalibrationConfig fields
    tech: str = "paper"
    adc_cost: str = "scaled"
    jobs: int = 1
    base: dict = field(default_factory=dict)
    points: tuple[dict, ...] = ()
    knobs: tuple[str, ...] = ()  # the swept ones, in the order the file gives them
    adapt: dict | None = None  # the [adapt] section (gaincell.sweep.adapt): per-point initialisation, distillation
    tasks: dict | None = None  # the [tasks] section (gaincell.sweep.downstream): lm-eval tasks per point
    device: str = "auto"  # where each process loads the model (gaincell.devices.parse_device)
    dtype: str = "float32"  # the model's weights (the op computes in float32 whatever they are)

    def fingerprint(self) -> str:
        """What the results depend on (not where they go, nor how many processes make them)."""
        data = dataclasses.asdict(self)
        for name in ("output_dir", "jobs", "device"):
            data.pop(name)
        if data["dtype"] == "float32":  # the fingerprint sweeps had before dtype existed
            data.pop("dtype")
        for section in ("adapt", "tasks"):  # a sweep without one keeps the fingerprint it had before it existed
            if data[section] is None:
                data.pop(section)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- reading and validating ----------------------------------------------------------------------


def read_spec(path: str | os.PathLike, overrides: list[str] = ()) -> SweepSpec:
    """Read and validate a sweep TOML; ``overrides`` are ``key=value`` strings (``grid.window=[64]``)."""
    data = read_toml(path)
    for override in overrides:
        _apply_override(data, override)
    return spec_from_dict(data)


def _apply_override(data: dict, override: str) -> None:
    key, value = parse_override(override)
    section, dot, rest = key.partition(".")
    if dot and section in ("grid", "base", "calibration", "tasks"):  # grid.adc_levels=[8,16]: the knob keeps its dots
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise GainCellError(f"--set {key}: {section} is not a table")
        table[rest] = value
    elif dot and section == "adapt":  # adapt.distill.lr=1e-3: nested tables, as the TOML writes them
        set_nested(data, key, value)
    else:
        data[key] = value


#: Fields that are paths; each may start with ``$GAINCELL_DATA/`` (:func:`gaincell.datadir.expand_data_path`).
_PATHS = ("model", "text", "calibration_text")


def spec_from_dict(data: dict) -> SweepSpec:
    """Every field checked, each failure one line naming it; the model and texts must exist."""
    reject_unknown("sweep", data, _TOP_LEVEL)
    data = {**data, **{name: expand_data_path(data[name], name) for name in _PATHS if name in data}}
    for name in ("model", "text"):
        if not isinstance(data.get(name), str) or not data[name]:
            fail(name, "a path", data.get(name))
    saved = check_model_dir(data["model"]).get("gaincell")
    check_text(data["text"], "text")
    if data.get("calibration_text") is not None:
        check_text(data["calibration_text"], "calibration_text")
    spec = SweepSpec(
        model=data["model"],
        text=data["text"],
        seeds=_seeds(data.get("seeds", [0])),
        calibration_text=data.get("calibration_text"),
        calibration=_calibration(data.get("calibration", {})),
        adapt=adapt_from_dict(data.get("adapt"), gain_cell=saved is not None and saved.get("attention") != "softmax"),
        tasks=tasks_from_dict(data.get("tasks")),
        **_scalars(data),
    )
    check_choice("adc_cost", spec.adc_cost, ADC_COSTS)
    from gaincell.devices import parse_device, parse_dtype  # torch, only once a spec is read (this module has none)

    parse_device(spec.device, "device")
    parse_dtype(spec.dtype, "dtype")
    if spec.context is not None and spec.stride is not None and spec.stride > spec.context:
        fail("stride", f"<= context ({spec.context})", spec.stride)

    technology = load_technology(spec.tech)
    model_dict = _model_base_config(spec).to_dict()
    base = _table(data.get("base", {}), "base")
    points, knobs = _points(data)
    for point in points:
        for knob, value in point.items():  # each knob alone first, so an error names the knob at fault
            alone = {k: point[k] for k in LEAKAGE_KNOBS if k in point} if knob in LEAKAGE_KNOBS else {knob: value}
            _build(point_dict(model_dict, base, alone, technology), f"grid.{knob} = {value!r}", knob)
        _build(point_dict(model_dict, base, point, technology), f"grid point {point}")
    return dataclasses.replace(spec, base=base, points=tuple(points), knobs=tuple(knobs))


#: The plain settings: strings (name -> default) and integers (name -> default, minimum; None: from the model).
_STRINGS = {
    "output_dir": "sweep",
    "preset": "paper",
    "tech": "paper",
    "adc_cost": "scaled",
    "device": "auto",
    "dtype": "float32",
}
_INTEGERS = {"context": (None, 2), "stride": (None, 1), "max_tokens": (8192, 2), "batch_size": (1, 1), "jobs": (1, 1)}


def _scalars(data: dict) -> dict[str, Any]:
    values = {name: data.get(name, default) for name, default in _STRINGS.items()}
    for name, value in values.items():
        check_string(name, value)
    for name, (default, minimum) in _INTEGERS.items():
        values[name] = data.get(name, default)
        if values[name] is not None:
            check_int(name, values[name], minimum)
    values["calibrate"] = data.get("calibrate", False)
    check_bool("calibrate", values["calibrate"])
    return values


def _seeds(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(is_int(seed, 0) for seed in value):
        fail("seeds", "a non-empty list of chip seeds (integers >= 0)", value)
    if len(set(value)) != len(value):
        fail("seeds", "distinct chip seeds", value)
    return tuple(value)


def _calibration(value: Any) -> dict:
    """The ``[calibration]`` table: :class:`~gaincell.adaptation.settings.CalibrationConfig` fields, checked now."""
    table = _table(value, "calibration")
    reject_unknown("calibration", table, field_names(CalibrationConfig))
    with within("calibration"):
        CalibrationConfig(**table)
    return table


def _table(value: Any, name: str) -> dict:
    """A TOML table with nested tables flattened to dotted keys (``periphery.adc.levels = [8]`` in TOML
    is a nested table; the knob is the dotted path)."""
    check_table(name, value)
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update({f"{key}.{inner}": v for inner, v in _table(item, f"{name}.{key}").items()})
        else:
            flat[key] = item
    return flat


def _model_base_config(spec: SweepSpec) -> GainCellConfig:
    """A gain-cell model's own saved config, or the ``preset`` for a plain model."""
    saved = json.loads((Path(spec.model).expanduser() / "config.json").read_text()).get("gaincell")
    if saved is not None:
        try:
            return GainCellConfig.from_dict(saved)
        except GainCellError as error:
            raise GainCellError(f"model: its saved gain-cell config is invalid: {error}") from None
    return preset(spec.preset)


def _points(data: dict) -> tuple[list[dict], list[str]]:
    """[grid] (cartesian product, knobs in file order) or [[points]] (a list), not both."""
    grid, listed = data.get("grid"), data.get("points")
    if (grid is None) == (listed is None):
        raise GainCellError("grid: give exactly one of a [grid] table or a [[points]] list")
    if grid is not None:
        grid = _table(grid, "grid")
        if not grid:
            raise GainCellError("grid: empty table; give at least one knob with a list of values")
        for knob, values in grid.items():
            if not isinstance(values, list) or not values:
                fail(f"grid.{knob}", "a non-empty list of values", values)
            if len(set(map(repr, values))) != len(values):
                fail(f"grid.{knob}", "a list of distinct values", values)
        knobs = list(grid)
        return [dict(zip(knobs, combo, strict=True)) for combo in product(*grid.values())], knobs
    if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) and p for p in listed):
        fail("points", "a non-empty list of non-empty tables ([[points]])", listed)
    listed = [_table(point, "points") for point in listed]
    knobs = list(dict.fromkeys(knob for point in listed for knob in point))
    return listed, knobs


def _build(config: dict, where: str, knob: str | None = None) -> GainCellConfig:
    """The config of a point; an error names the point, or the knob alone where its own field is at fault."""
    try:
        return GainCellConfig.from_dict(config)
    except (GainCellError, TypeError) as error:
        if isinstance(error, FieldError) and knob is not None and error.path == KNOB_ALIASES.get(knob, knob):
            raise FieldError(f"grid.{knob}", error.problem) from None
        raise GainCellError(f"{where}: {first_line(error)}") from None


def point_config(spec: SweepSpec, point: dict, seed: int) -> GainCellConfig:
    """The simulator config of one point and chip seed (the seed sets ``noise.seed``)."""
    config = point_dict(_model_base_config(spec).to_dict(), spec.base, point, load_technology(spec.tech))
    config["noise"]["seed"] = seed
    return _build(config, f"grid point {point}")


def seeds_for(spec: SweepSpec, config: GainCellConfig) -> tuple[int, ...]:
    """All chip seeds where the chip is random (variability or read noise), else the first only."""
    random = config.attention != "softmax" and (config.noise.variability > 0 or config.noise.read_noise > 0)
    return spec.seeds if random else spec.seeds[:1]


# -- cost ----------------------------------------------------------------------------------------

#: The technology preset's ADC constants are for a 5-bit SAR ADC (paper.toml: 10 fJ per step x 2^5
#: steps, 5 cycles): with ``adc_cost = "scaled"`` energy scales with the levels, time with the bits.
REFERENCE_ADC_LEVELS = 32


def point_cost(shape, config: GainCellConfig, tech, adc_cost: str = "scaled") -> dict[str, float] | None:
    """Energy (J), latency (s) per generated token and area (m²) of the chip for the model's shape."""
    if config.attention == "softmax":
        return None
    levels = config.periphery.adc.levels
    if adc_cost == "scaled" and levels is not None:
        periphery = dataclasses.replace(
            tech.periphery,
            adc_energy_per_conversion=tech.periphery.adc_energy_per_conversion * levels / REFERENCE_ADC_LEVELS,
            adc_time=tech.periphery.adc_time * math.ceil(math.log2(levels)) / math.log2(REFERENCE_ADC_LEVELS),
        )
        tech = dataclasses.replace(tech, periphery=periphery)
    chip_shape = AttentionShape(shape.heads, shape.head_dim, config.window, config.subtile_rows, shape.layers)
    chip = estimate(chip_shape, tech, normaliser=config.periphery.normaliser)
    return {
        "energy_per_token_j": chip.energy_per_token,
        "latency_per_token_s": chip.latency_per_token,
        "area_m2": chip.area_total,
    }


# -- units of work -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One measurement: a point (or the reference model, index -1) on one chip seed."""

    index: int
    point: dict
    seed: int

    @property
    def key(self) -> str:
        return json.dumps({"index": self.index, "point": self.point, "seed": self.seed}, sort_keys=True)


def work_units(spec: SweepSpec) -> list[Unit]:
    """Every (point, seed) the sweep measures, in order; the reference model first."""
    units = [Unit(-1, {}, spec.seeds[0])]
    for index, point in enumerate(spec.points):
        config = point_config(spec, point, spec.seeds[0])
        units += [Unit(index, point, seed) for seed in seeds_for(spec, config)]
    return units
