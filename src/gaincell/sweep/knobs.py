"""A sweep's knobs: short names, dotted config paths and the derived knobs, turned into a config dict.

Kept apart from :mod:`gaincell.sweep.spec` (which reads the file) so the one rule that spans two tables
lives in one place: ``retention_time`` and ``token_rate`` give leakage ε together, each from the
point or else from ``[base]`` (a retention sweep at one token rate), exactly as ``gaincell hw`` computes
it (:func:`gaincell.hardware.compare.retention_check`, SPEC-hardware §6.3.4).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gaincell.chip.config import GainCellConfig
from gaincell.errors import GainCellError
from gaincell.hardware.compare import retention_check
from gaincell.validation import check_positive, reject_unknown

#: Short knob names; any dotted path into GainCellConfig.to_dict() (``periphery.adc.levels``) also works.
KNOB_ALIASES: dict[str, str] = {
    "q_levels": "periphery.q.levels",
    "kv_levels": "periphery.kv.levels",
    "adc_levels": "periphery.adc.levels",
    "adc_low": "periphery.adc.low",
    "adc_high": "periphery.adc.high",
    "s_sat": "periphery.s_sat",
    "readout_gain": "periphery.readout_gain",
    "read_noise": "noise.read_noise",
    "variability": "noise.variability",
    "cell": "cell.kind",
    "normaliser": "periphery.normaliser",
}
#: Knobs that set the leakage ε = Δt / τ with Δt = 1 / token_rate (Hz) and τ = retention_time (s).
LEAKAGE_KNOBS = ("retention_time", "token_rate")
#: Knobs that are not config fields: ``adc_range`` r sets the ADC to [-r, r]; the leakage knobs set ε.
DERIVED_KNOBS = ("adc_range", *LEAKAGE_KNOBS)


def knob_path(knob: str, section: str) -> str:
    """The dotted config path of a knob (aliases resolved); unknown names fail naming the knob."""
    path = KNOB_ALIASES.get(knob, knob)
    node: Any = GainCellConfig().to_dict()
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            reject_unknown(section, [knob], [*KNOB_ALIASES, *DERIVED_KNOBS, *_leaf_paths(GainCellConfig().to_dict())])
        node = node[part]
    if isinstance(node, dict):
        raise GainCellError(f"{section}.{knob}: is a table; name one of its fields ({', '.join(node)})")
    return path


def _leaf_paths(node: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in node.items():
        if key == "coefficients":
            continue
        paths += _leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return paths


def apply_knobs(config: dict, knobs: dict, section: str) -> dict:
    """A copy of a config dict with knobs set; ``adc_range`` becomes the ADC's bounds. The leakage knobs
    are only checked here: :func:`point_dict` combines them across ``[base]`` and the point."""
    config = json.loads(json.dumps(config))
    knobs = dict(knobs)
    if "adc_range" in knobs:
        r = knobs.pop("adc_range")
        check_positive(f"{section}.adc_range", r)  # the ADC spans [-r, r]
        config["periphery"]["adc"].update(low=-float(r), high=float(r))
    for name in LEAKAGE_KNOBS:
        if name in knobs:
            check_positive(f"{section}.{name}", knobs.pop(name))
    for knob, value in knobs.items():
        *parents, leaf = knob_path(knob, section).split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def point_dict(model_config: dict, base: dict, point: dict, technology) -> dict:
    """The config dict of a point: the model's config, then ``[base]``, then the point, then ε."""
    config = apply_knobs(apply_knobs(model_config, base, "base"), point, "grid")
    given = {}
    for name in LEAKAGE_KNOBS:
        for section, table in (("grid", point), ("base", base)):
            if name in table and name not in given:
                given[name] = (f"{section}.{name}", table[name])
    if given:
        config["leakage"] = leakage_from_retention(given, technology, config["window"])
    return config


def leakage_from_retention(given: dict[str, tuple[str, Any]], technology, window: int) -> float:
    """ε = Δt / τ with Δt = 1 / token_rate, τ the retention_time or the technology's (``gaincell hw``'s rule).

    ``given`` maps a leakage knob to (where it was written, its value)."""
    if "token_rate" not in given:
        where = given["retention_time"][0]
        raise GainCellError(f"{where}: needs token_rate (Hz) too, in [base] or the grid, to give ε = (1/rate) / retention")
    rate = float(given["token_rate"][1])
    if "retention_time" in given:
        array = dataclasses.replace(technology.array, retention_time=float(given["retention_time"][1]))
        technology = dataclasses.replace(technology, array=array)
    return retention_check(technology, window, 1.0 / rate, "sweep").epsilon
