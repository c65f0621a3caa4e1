"""Every energy, time, area and device figure of the cost model, loaded from sourced TOML presets.

SPEC-hardware asks for one place holding each constant with its unit and source, so that a user can
swap in their own technology. That place is ``hardware/presets/``:

- ``paper.toml`` / ``osfet.toml``: a gain-cell *technology* (array, periphery, digital), one file each;
  ``gaincell hw --tech PATH`` accepts a user's own file in the same format;
- ``gpus.toml``: public bandwidth, power and peak-throughput figures of the named GPUs (§6.3.2);
- ``reference.toml``: the paper's own figures (§6.1 breakdown, §6.2 measurements) that the model is
  checked against.

Every constant is written as ``name = { value = 0.3, unit = "pJ", source = "..." }``. The loader
checks the unit's dimension, converts to SI (J, s, m², W, B/s, FLOP/s) and rejects unknown names,
missing names, negative or non-finite values with an error naming the file, table and field. The
values land in frozen dataclasses; the original value, unit and source stay attached as
:class:`ConstantRecord` entries so that every printed number can be traced back.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from gaincell.errors import GainCellError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TECH_PRESETS: tuple[str, ...] = ("paper", "osfet")

# unit -> (dimension, factor to SI)
_UNITS: dict[str, tuple[str, float]] = {
    "1": ("dimensionless", 1.0),
    "J": ("energy", 1.0),
    "mJ": ("energy", 1e-3),
    "uJ": ("energy", 1e-6),
    "nJ": ("energy", 1e-9),
    "pJ": ("energy", 1e-12),
    "fJ": ("energy", 1e-15),
    "s": ("time", 1.0),
    "ms": ("time", 1e-3),
    "us": ("time", 1e-6),
    "ns": ("time", 1e-9),
    "ps": ("time", 1e-12),
    "m^2": ("area", 1.0),
    "mm^2": ("area", 1e-6),
    "um^2": ("area", 1e-12),
    "W": ("power", 1.0),
    "mW": ("power", 1e-3),
    "uW": ("power", 1e-6),
    "fJ/ns": ("power", 1e-6),
    "pJ/ns": ("power", 1e-3),
    "B/s": ("bandwidth", 1.0),
    "GB/s": ("bandwidth", 1e9),
    "TB/s": ("bandwidth", 1e12),
    "J/bit": ("energy_per_bit", 1.0),
    "pJ/bit": ("energy_per_bit", 1e-12),
    "FLOP/s": ("compute", 1.0),
    "GFLOP/s": ("compute", 1e9),
    "TFLOP/s": ("compute", 1e12),
}


def _quantity(dimension: str, *, positive: bool = False, maximum: float | None = None) -> Any:
    """A dataclass field holding an SI float; the metadata tells the loader how to check it."""
    return field(metadata={"dimension": dimension, "positive": positive, "maximum": maximum})


@dataclass(frozen=True)
class ConstantRecord:
    """One constant as written in its TOML file: where it came from, before conversion to SI."""

    key: str  # "array.cell_area"
    value: float  # as written
    unit: str  # as written
    si_value: float
    source: str


@dataclass(frozen=True)
class ArrayConstants:
    """The gain-cell arrays themselves (SPEC §1, SPEC-hardware §6.3.1): cells, read, write, retention."""

    cell_area: float = _quantity("area", positive=True)
    read_power_per_cell: float = _quantity("power")  # energy per cell per second of read pulse
    write_energy_per_cell: float = _quantity("energy")
    write_time: float = _quantity("time")
    write_driver_area_per_row: float = _quantity("area")
    retention_time: float = _quantity("time", positive=True)
    max_pulse_width: float = _quantity("time", positive=True)  # T_max
    pulse_activity: float = _quantity("dimensionless", maximum=1.0)  # mean pulse width / T_max


@dataclass(frozen=True)
class PeripheryConstants:
    """Mixed-signal periphery: PWM DACs on the query rows, charge-to-pulse converters, ADCs."""

    dac_energy_per_row: float = _quantity("energy")
    dac_time: float = _quantity("time")
    dac_area_per_row: float = _quantity("area")
    c2p_energy_per_column: float = _quantity("energy")
    c2p_time: float = _quantity("time")
    c2p_area_per_column: float = _quantity("area")
    adc_energy_per_conversion: float = _quantity("energy")
    adc_time: float = _quantity("time")
    adc_area: float = _quantity("area")


@dataclass(frozen=True)
class DigitalConstants:
    """Digital sub-tile addition, routing of ADC words, and per-head control (SPEC §6)."""

    adder_energy_per_add: float = _quantity("energy")
    adder_time_per_stage: float = _quantity("time")
    adder_area: float = _quantity("area")
    routing_energy_per_word: float = _quantity("energy")
    control_energy_per_head: float = _quantity("energy")
    control_time: float = _quantity("time")
    control_area_per_head: float = _quantity("area")


@dataclass(frozen=True)
class Technology:
    """A gain-cell technology preset: what ``--tech`` selects."""

    name: str
    description: str
    array: ArrayConstants
    periphery: PeripheryConstants
    digital: DigitalConstants
    records: tuple[ConstantRecord, ...]


@dataclass(frozen=True)
class GpuDevice:
    """Public figures of one GPU, for the memory-roofline model (SPEC-hardware §6.3.2)."""

    key: str
    name: str
    memory: str
    bandwidth: float = _quantity("bandwidth", positive=True)
    tdp: float = _quantity("power", positive=True)
    idle_power: float = _quantity("power")
    dram_energy_per_bit: float = _quantity("energy_per_bit")
    peak_fp16: float = _quantity("compute", positive=True)
    peak_fp32: float = _quantity("compute", positive=True)
    records: tuple[ConstantRecord, ...] = ()


@dataclass(frozen=True)
class PaperGainCell:
    """SPEC-hardware §6.1: the authors' per-head energy breakdown and per-token latency."""

    first_product: float = _quantity("energy", positive=True)
    second_product: float = _quantity("energy", positive=True)
    digital: float = _quantity("energy", positive=True)
    dac: float = _quantity("energy", positive=True)
    per_head: float = _quantity("energy", positive=True)
    per_layer: float = _quantity("energy", positive=True)
    latency: float = _quantity("time", positive=True)


@dataclass(frozen=True)
class PaperGpuMeasurement:
    """SPEC-hardware §6.2: one measured GPU, normalised per sequence-token (see reference.toml)."""

    latency_per_sequence_token: float = _quantity("time", positive=True)
    energy_per_sequence_token: float = _quantity("energy", positive=True)
    latency_ratio: float = _quantity("dimensionless", positive=True)
    energy_ratio: float = _quantity("dimensionless", positive=True)


@dataclass(frozen=True)
class PaperReference:
    """The paper's figures (§6.1, §6.2) and the workload they were taken on."""

    heads: int
    head_dim: int
    window: int
    batch: int
    gain_cell: PaperGainCell
    gpus: dict[str, PaperGpuMeasurement]
    records: tuple[ConstantRecord, ...]


def _read_toml(path: Path | None, preset: str | None) -> tuple[dict, str]:
    """Parse a preset (by file name in ``presets/``) or a user's file; errors name the file."""
    if preset is not None:
        text = resources.files("gaincell.hardware").joinpath("presets").joinpath(preset).read_text("utf-8")
        where = preset
    else:
        assert path is not None
        if not path.is_file():
            raise GainCellError(f"--tech: no such file '{path}'")
        text = path.read_text("utf-8")
        where = str(path)
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as error:
        raise GainCellError(f"{where}: not valid TOML: {error}") from error


def _constant(entry: Any, key: str, where: str, dimension: str, positive: bool, maximum: float | None):
    """Check one ``{ value, unit, source }`` entry and return (SI value, record)."""
    if not isinstance(entry, dict) or set(entry) != {"value", "unit", "source"}:
        raise GainCellError(f'{where}: \'{key}\' must be an inline table {{ value = ..., unit = "...", source = "..." }}')
    value, unit, source = entry["value"], entry["unit"], entry["source"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GainCellError(f"{where}: '{key}' value must be a finite number, got {value!r}")
    if not isinstance(source, str) or not source.strip():
        raise GainCellError(f"{where}: '{key}' needs a non-empty source")
    allowed = sorted(name for name, (dim, _) in _UNITS.items() if dim == dimension)
    if unit not in _UNITS or _UNITS[unit][0] != dimension:
        raise GainCellError(f"{where}: '{key}' unit {unit!r} is not a {dimension} unit; use one of {allowed}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise GainCellError(f"{where}: '{key}' must be {bound}, got {value}")
    si_value = float(value) * _UNITS[unit][1]
    if maximum is not None and si_value > maximum:
        raise GainCellError(f"{where}: '{key}' must be in [0, {maximum}], got {value}")
    return si_value, ConstantRecord(key, float(value), unit, si_value, source.strip())


def _group(cls: type, table: Any, where: str, prefix: str, extra: dict[str, Any] | None = None):
    """Build one frozen dataclass from a TOML table, rejecting unknown and missing fields."""
    if not isinstance(table, dict):
        raise GainCellError(f"{where}: [{prefix}] must be a table")
    quantities = [f for f in fields(cls) if "dimension" in f.metadata]
    names = {f.name for f in quantities}
    unknown = sorted(set(table) - names)
    if unknown:
        raise GainCellError(f"{where}: unknown field(s) {unknown} in [{prefix}]; allowed: {sorted(names)}")
    missing = sorted(names - set(table))
    if missing:
        raise GainCellError(f"{where}: missing field(s) {missing} in [{prefix}]")
    values: dict[str, Any] = dict(extra or {})
    records = []
    for f in quantities:
        meta = f.metadata
        values[f.name], record = _constant(
            table[f.name], f"{prefix}.{f.name}", where, meta["dimension"], meta["positive"], meta["maximum"]
        )
        records.append(record)
    if "records" in {f.name for f in fields(cls)}:
        values["records"] = tuple(records)
    return cls(**values), records


def _check_tables(data: dict, where: str, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise GainCellError(f"{where}: unknown table(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(allowed - set(data))
    if missing:
        raise GainCellError(f"{where}: missing table(s) {missing}")


def load_technology(name_or_path: str | Path = "paper") -> Technology:
    """Load a gain-cell technology: a preset name (``paper``, ``osfet``) or a path to a TOML file."""
    text = str(name_or_path)
    if text in TECH_PRESETS:
        data, where = _read_toml(None, f"{text}.toml")
    elif text.endswith(".toml") or Path(text).exists():
        data, where = _read_toml(Path(text), None)
    else:
        raise GainCellError(f"--tech: unknown preset {text!r}; choose from {list(TECH_PRESETS)} or a path to a .toml file")
    _check_tables(data, where, {"meta", "array", "periphery", "digital"})
    meta = data["meta"]
    if (
        not isinstance(meta, dict)
        or set(meta) != {"name", "description"}
        or not all(isinstance(meta[k], str) and meta[k].strip() for k in ("name", "description"))
    ):
        raise GainCellError(f"{where}: [meta] must hold exactly the strings 'name' and 'description'")
    array, r1 = _group(ArrayConstants, data["array"], where, "array")
    periphery, r2 = _group(PeripheryConstants, data["periphery"], where, "periphery")
    digital, r3 = _group(DigitalConstants, data["digital"], where, "digital")
    return Technology(meta["name"], meta["description"], array, periphery, digital, tuple(r1 + r2 + r3))


def load_gpus() -> dict[str, GpuDevice]:
    """The named GPUs of ``presets/gpus.toml``, keyed by short name (``rtx4090``, ``h100``...)."""
    data, where = _read_toml(None, "gpus.toml")
    devices = {}
    for key, table in data.items():
        if not isinstance(table, dict):
            raise GainCellError(f"{where}: [{key}] must be a table")
        labels = {k: table.get(k) for k in ("name", "memory")}
        if not all(isinstance(v, str) and v for v in labels.values()):
            raise GainCellError(f"{where}: [{key}] needs string fields 'name' and 'memory'")
        constants = {k: v for k, v in table.items() if k not in labels}
        devices[key], _ = _group(GpuDevice, constants, where, key, extra={"key": key, **labels})
    return devices


def load_reference() -> PaperReference:
    """The paper's figures (``presets/reference.toml``): SPEC-hardware §6.1 and §6.2."""
    data, where = _read_toml(None, "reference.toml")
    _check_tables(data, where, {"workload", "gain_cell", "gpu"})
    workload = data["workload"]
    shape = {}
    for name in ("heads", "head_dim", "window", "batch"):
        value = workload.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise GainCellError(f"{where}: [workload] '{name}' must be a positive integer")
        shape[name] = value
    gain_cell, records = _group(PaperGainCell, data["gain_cell"], where, "gain_cell")
    gpus = {}
    for key, table in data["gpu"].items():
        gpus[key], more = _group(PaperGpuMeasurement, table, where, f"gpu.{key}")
        records = records + more
    return PaperReference(**shape, gain_cell=gain_cell, gpus=gpus, records=tuple(records))
