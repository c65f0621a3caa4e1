"""What the chip is: window, sub-tiles, cell model, periphery, leakage, noise (SPEC §3).

One frozen dataclass tree, validated when it is built, so a bad value fails at the line that made
it with a message naming the field. Presets name the models of SPEC §3:

- ``softmax``: the software sliding-window baseline (§3.1);
- ``linear``: the linear intermediate hardware model (§3.3);
- ``paper``: the nonlinear gain-cell model the paper adapts GPT-2 to (§3.4);
- ``ideal``: the paper's cell with no quantisation, no leakage and no noise, for debugging and for
  comparing with the authors' golden single-array outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from gaincell.errors import GainCellError
from gaincell.validation import (
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_number,
    check_positive,
    fail,
    field_names,
    is_number,
    reject_unknown,
)

ATTENTION_KINDS = ("softmax", "gaincell")
#: The largest leakage ε a config accepts: λ = e^−ε = 2^−24, float32's resolution. Beyond it every
#: stored charge is below rounding one step after it is written, so the array remembers nothing.
MAX_LEAKAGE = 24 * math.log(2)
GRADIENT_MODES = ("surrogate", "exact")
#: Where a quantiser's levels sit: ``zero`` at k·step (SPEC §3.2–3.3, 0 is a level), ``ends`` at
#: low + k·step (both range ends are levels; an alternative ADC, nobody's default).
QUANTIZER_GRIDS = ("zero", "ends")
#: The digital output scaler after the read-out: one (a_o, b_o) per head (SPEC §3.3, the paper's), or
#: ``channel``: an extra scale and offset per (head, value column) on top of it (ours, a named deviation).
OUTPUT_SCALERS = ("head", "channel")

#: The paper's fitted charge polynomial f(x, y~) = sum_ij c_ij 0.9^j x y~^i, keyed (i, j) (SPEC §3.4).
PAPER_COEFFICIENTS: tuple[tuple[int, int, float], ...] = (
    (0, 0, 0.17393044),
    (0, 1, 0.15653739),
    (0, 2, 0.14088365),
    (0, 3, 0.12679529),
    (1, 0, 5.51975209),
    (1, 1, 4.96777688),
    (1, 2, 4.4709992),
    (2, 0, -1.44776001),
    (2, 1, -1.30298401),
    (3, 0, 46.05483778),
)


@dataclass(frozen=True)
class QuantizerConfig:
    """A clamp to [low, high] followed by an optional uniform quantiser, step = (high − low)/(levels − 1).

    ``grid="zero"`` is SPEC's quantiser x_q = step · round(x / step) (§3.2, and the ADC of §3.3): 0
    is a level, and a range not aligned with the step rounds its clamped ends outward (the ADC's
    ±1 become ±16·step ≈ ±1.032, as in the authors' simulation). ``grid="ends"`` puts the levels at
    low + k·step, exactly ``levels`` of them inside [low, high]. The two agree when low is a multiple
    of the step (Q, K, V: low = 0). ``levels=None`` keeps the clamp and skips the rounding.
    """

    low: float
    high: float
    levels: int | None
    grid: str = "zero"

    def validate(self, name: str) -> None:
        for bound in ("low", "high"):
            check_number(f"{name}.{bound}", getattr(self, bound))
        if self.low >= self.high:
            fail(f"{name}.low/high", "an increasing range (low < high)", f"[{self.low}, {self.high}]")
        if self.levels is not None:
            check_int(f"{name}.levels", self.levels, 2)
        check_choice(f"{name}.grid", self.grid, QUANTIZER_GRIDS)

    @property
    def step(self) -> float | None:
        return None if self.levels is None else (self.high - self.low) / (self.levels - 1)

    @property
    def origin(self) -> float:
        """The point the levels are counted from: x_q = origin + step · round((x − origin) / step)."""
        return 0.0 if self.grid == "zero" else self.low


#: Names ``cell.kind`` accepts: the built-in models of :mod:`gaincell.chip.cells`, named here so the
#: config needs no torch, and any kind :func:`gaincell.register_cell` adds (it keeps the factory).
_CELL_KINDS = ["linear", "polynomial", "cubic", "quintic", "sigmoid", "exp"]


def cell_kinds() -> tuple[str, ...]:
    """The kinds a :class:`CellConfig` accepts now: built in, then registered."""
    return tuple(_CELL_KINDS)


def add_cell_kind(kind: str) -> None:
    """Accept ``kind`` in :class:`CellConfig` (called by :func:`gaincell.chip.cells.register_cell`)."""
    if kind not in _CELL_KINDS:
        _CELL_KINDS.append(kind)


@dataclass(frozen=True)
class CellConfig:
    """The gain cell's charge for a read pulse of width x on a stored offset voltage y~.

    ``linear``: alpha · x · y~ (SPEC §3.3). ``polynomial``: the paper's fitted total-degree-3
    polynomial with read voltage ``read_voltage`` (§3.4). ``cubic``/``quintic``/``sigmoid``/``exp``:
    the alternative nonlinearities of §3.4, rescaled to alpha's range (see :mod:`gaincell.chip.cells`).
    """

    kind: str = "polynomial"
    alpha: float = 19.3
    read_voltage: float = 0.9
    coefficients: tuple[tuple[int, int, float], ...] = PAPER_COEFFICIENTS
    fit_degree: int = 15

    def validate(self) -> None:
        check_choice("cell.kind", self.kind, cell_kinds())
        check_positive("cell.alpha", self.alpha)
        check_positive("cell.read_voltage", self.read_voltage)
        check_int("cell.fit_degree", self.fit_degree, 1)
        if not isinstance(self.coefficients, (tuple, list)):
            fail("cell.coefficients", "a list of (i, j, c_ij) triples of finite numbers", self.coefficients)
        for entry in self.coefficients:
            if not isinstance(entry, (tuple, list)) or len(entry) != 3 or not all(is_number(x) for x in entry):
                fail("cell.coefficients", "a list of (i, j, c_ij) triples of finite numbers", entry)
            i, j, _ = entry
            if int(i) != i or int(j) != j or i < 0 or j < 0:
                fail("cell.coefficients", "non-negative integer powers (i, j)", entry)


@dataclass(frozen=True)
class PeripheryConfig:
    """Everything around the arrays: DAC/ADC ranges and levels, charge-to-pulse, read-out (SPEC §3.2–3.3).

    ``output_scaler="channel"`` (ours, not the paper's) gives the digital output scaler one gain and one
    offset per value column of each head besides the per-head pair: the same multiply-add per output,
    2·D constants per head instead of 2. Attention transfer uses it so that a head can emit a constant
    vector, as softmax heads that park their mass on a sink token do (docs/real-models.md).

    ``normaliser=True`` (ours, a named deviation, off in every preset) adds the circuit of
    :mod:`gaincell.op.normaliser`: one more column per V sub-tile storing the constant kv.high − offset
    for every token, its read-outs summed with an ideal converter into den_t ≈ g(c)·Σ_n φ(S_tn), and a
    digital divider giving read-out / den before the output scaler (softmax's normalisation, φ for exp).
    ``gaincell hw --normaliser`` costs it (SPEC-hardware §6.3.1).
    """

    q: QuantizerConfig = QuantizerConfig(0.0, 1.0, 16)
    kv: QuantizerConfig = QuantizerConfig(0.0, 0.9, 8)
    adc: QuantizerConfig = QuantizerConfig(-1.0, 1.0, 32)
    offset: float = 0.45
    s_sat: float = 80.0
    readout_gain: float = 1.0 / 40.0
    output_scaler: str = "head"
    normaliser: bool = False

    def validate(self) -> None:
        self.q.validate("periphery.q")
        self.kv.validate("periphery.kv")
        self.adc.validate("periphery.adc")
        check_number("periphery.offset", self.offset)
        check_positive("periphery.s_sat", self.s_sat)
        check_positive("periphery.readout_gain", self.readout_gain)
        check_choice("periphery.output_scaler", self.output_scaler, OUTPUT_SCALERS)
        check_bool("periphery.normaliser", self.normaliser)


@dataclass(frozen=True)
class NoiseConfig:
    """Non-idealities beyond the paper's main model (SPEC §3.5); both off by default.

    ``read_noise``: std of additive Gaussian noise on the first product S and on each sub-tile's
    read-out before its ADC, as a fraction of full scale (S_sat, resp. the ADC's upper bound); the
    full-scale SNR is 1/read_noise. Fresh noise each call, reproducible from torch's seed.
    ``variability``: relative std of each cell's gain, sampled once per simulated chip from ``seed``.
    """

    read_noise: float = 0.0
    variability: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        check_non_negative("noise.read_noise", self.read_noise)
        check_non_negative("noise.variability", self.variability)
        check_int("noise.seed", self.seed, 0)


@dataclass(frozen=True)
class GainCellConfig:
    """The whole attention model of SPEC §3 for one layer type.

    ``leakage`` is ε per token step (retained fraction λ^age with λ = exp(−ε)), at most
    :data:`MAX_LEAKAGE`; ``block_size`` only sets how many queries the banded kernel processes at
    once (speed/memory, not results).
    """

    attention: str = "gaincell"
    window: int = 1024
    subtile_rows: int = 64
    cell: CellConfig = field(default_factory=CellConfig)
    periphery: PeripheryConfig = field(default_factory=PeripheryConfig)
    leakage: float = 1.6e-4
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    gradient: str = "surrogate"
    block_size: int = 128

    def __post_init__(self) -> None:
        check_choice("attention", self.attention, ATTENTION_KINDS)
        check_int("window", self.window, 1)
        check_int("subtile_rows", self.subtile_rows, 1)
        if not (is_number(self.leakage) and 0 <= self.leakage <= MAX_LEAKAGE):
            fail("leakage", f"a number in [0, {MAX_LEAKAGE:.4f}] (beyond, e^-ε < 2^-24: nothing stays stored)", self.leakage)
        check_choice("gradient", self.gradient, GRADIENT_MODES)
        check_int("block_size", self.block_size, 1)
        for name, expected in (("cell", CellConfig), ("periphery", PeripheryConfig), ("noise", NoiseConfig)):
            if not isinstance(getattr(self, name), expected):
                fail(name, f"a {expected.__name__}", getattr(self, name))
        self.cell.validate()
        self.periphery.validate()
        self.noise.validate()

    @property
    def n_subtiles(self) -> int:
        """Sub-tiles per array: a window of M stored tokens uses ceil(M / R) of them (SPEC §1)."""
        return -(-self.window // self.subtile_rows)

    def replace(self, **changes: Any) -> GainCellConfig:
        """A copy with top-level fields changed (``config.replace(leakage=0.0)``); a misspelt field is named with the
        valid ones, not dataclasses' ``TypeError``."""
        reject_unknown("config", changes, field_names(GainCellConfig))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GainCellConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are errors, not ignored."""
        if not isinstance(data, dict):
            fail("config", "a JSON object", type(data).__name__)
        data = dict(data)
        reject_unknown("config", data, field_names(cls))
        if "cell" in data:
            cell = dict(data["cell"])
            reject_unknown("cell", cell, field_names(CellConfig))
            if isinstance(cell.get("coefficients"), (list, tuple)):
                cell["coefficients"] = tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in cell["coefficients"])
            data["cell"] = CellConfig(**cell)
        if "periphery" in data:
            periphery = dict(data["periphery"])
            reject_unknown("periphery", periphery, field_names(PeripheryConfig))
            for name in ("q", "kv", "adc"):
                if name in periphery:
                    reject_unknown(f"periphery.{name}", periphery[name], field_names(QuantizerConfig))
                    periphery[name] = QuantizerConfig(**periphery[name])
            data["periphery"] = PeripheryConfig(**periphery)
        if "noise" in data:
            reject_unknown("noise", data["noise"], field_names(NoiseConfig))
            data["noise"] = NoiseConfig(**data["noise"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GainCellConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise GainCellError(f"gain-cell config is not valid JSON: {error}") from None
        return cls.from_dict(data)


def _no_quantisation(periphery: PeripheryConfig) -> PeripheryConfig:
    return dataclasses.replace(
        periphery,
        q=dataclasses.replace(periphery.q, levels=None),
        kv=dataclasses.replace(periphery.kv, levels=None),
        adc=dataclasses.replace(periphery.adc, levels=None),
    )


PRESETS = ("softmax", "linear", "paper", "ideal")


def preset(name: str, **changes: Any) -> GainCellConfig:
    """A named configuration of SPEC §3, with optional top-level overrides (``window=64``)."""
    check_choice("preset", name, PRESETS)
    if name == "softmax":
        config = GainCellConfig(attention="softmax", leakage=0.0)
    elif name == "linear":
        config = GainCellConfig(cell=CellConfig(kind="linear"))
    elif name == "paper":
        config = GainCellConfig()
    else:  # ideal
        config = GainCellConfig(periphery=_no_quantisation(PeripheryConfig()), leakage=0.0)
    return config.replace(**changes) if changes else config
