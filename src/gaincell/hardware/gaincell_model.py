"""Analytic energy, latency and area of gain-cell attention per generated token (SPEC-hardware §6.3.1).

The chip of SPEC §1, per attention head: a K array of D rows x M token columns and a V array of M token
rows x D columns, each cut into sub-tiles of R stored tokens (R = 64 in the paper, so M/R sub-tiles).
Per generated token and head, in order:

1. write the new token's k and v: one column of D cells in each array;
2. the PWM DACs turn the D query values into pulses on the K array's rows;
3. first product: every one of the D x M K cells conducts for its row's pulse (<= T_max);
4. a charge-to-pulse converter per token column turns its charge into a pulse for the V array (HardSigmoid);
5. second product: every one of the M x D V cells conducts for its row's pulse (<= T_max);
6. one ADC conversion per sub-tile and output column (M/R x D);
7. the M/R partial sums of each output column are added digitally (an adder tree), routed and sequenced.

With ``normaliser`` (the chip option ``periphery.normaliser``, a named deviation from the paper, see
:func:`normaliser_counts`) a ones column per V sub-tile, its conversions and a digital divider are added.

Energy is the sum of (operation count x per-operation constant); latency is the critical path of those
steps with all heads in parallel; area is cells + periphery per row/column + digital. The constants are
in the technology preset (``presets/paper.toml``), whose defaults are calibrated so that H = 12,
D = 64, M = 1024 reproduces SPEC-hardware §6.1 (6.15 nJ per head, 73.8 nJ and 65 ns per token).
Scaling with M (columns, sub-tiles), D (rows, ADC columns), H (x heads) and layers (x layers) comes only
from the operation counts below, never from a fitted curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gaincell.hardware.constants import Technology
from gaincell.validation import check_int

DEFAULT_SUBTILE_ROWS = 64  # SPEC §2: array sub-tile height R = 64 stored tokens

# SPEC-hardware §6.1 groups the per-operation energies into four components; this is the mapping.
# Writing the new k (v) is charged to the product that uses that array.
# The normaliser's components (present only with the option) join the group of what they extend.
BREAKDOWN_GROUPS: dict[str, tuple[str, ...]] = {
    "first_product_and_charge_to_pulse": ("k_write", "k_read", "charge_to_pulse"),
    "second_product_and_adc": ("v_write", "v_read", "adc", "ones_write", "ones_read", "ones_adc"),
    "digital_control_and_routing": ("adder", "routing", "control", "ones_adder", "ones_routing", "divider"),
    "dac": ("dac",),
}

#: Word width of the normaliser's divider: the digital sum it divides, 5-bit ADC words summed over 16
#: sub-tiles = 9 bits (the 9-bit adder paper.toml costs). The model has no multiplier or divider
#: constants, so the divider is costed in those adders: a b-bit reciprocal by restoring division is b
#: subtract-and-shift steps (b additions, b stages in series); a b x b multiply is b - 1 additions of
#: partial products, reduced in a tree of ceil(log2 b) stages.
DIVIDER_BITS = 9


@dataclass(frozen=True)
class AttentionShape:
    """What the chip must hold: H heads of head size D, a window of M tokens, sub-tiles of R, L layers."""

    heads: int
    head_dim: int
    window: int
    subtile_rows: int = DEFAULT_SUBTILE_ROWS
    layers: int = 1

    def __post_init__(self) -> None:
        for name, flag in (
            ("heads", "--heads"),
            ("head_dim", "--head-dim"),
            ("window", "--window"),
            ("subtile_rows", "--subtile-rows"),
            ("layers", "--layers"),
        ):
            check_int(f"{name} ({flag})", getattr(self, name), 1)

    @property
    def subtiles(self) -> int:
        """Sub-tiles per array: ceil(M / R) (SPEC §1: M/64 sub-tiles per array)."""
        return math.ceil(self.window / self.subtile_rows)


@dataclass(frozen=True)
class OperationCounts:
    """How many of each operation one head performs per generated token (SPEC-hardware §6.3.1)."""

    cells_written: int  # per array: one column of D cells (k into K, v into V)
    dac_rows: int  # D query rows pulsed
    cells_read: int  # per product: D x M cells conduct
    c2p_conversions: int  # one charge-to-pulse converter per stored token: M
    adc_conversions: int  # one per sub-tile and output column: ceil(M/R) x D
    additions: int  # (ceil(M/R) - 1) x D partial sums added
    routed_words: int  # every ADC word travels to its adder: ceil(M/R) x D
    adder_stages: int  # depth of the adder tree: ceil(log2 ceil(M/R))


def operation_counts(shape: AttentionShape) -> OperationCounts:
    """Operation counts of one head and one token; the only place where M, D and R enter the model."""
    d, m, subtiles = shape.head_dim, shape.window, shape.subtiles
    return OperationCounts(
        cells_written=d,
        dac_rows=d,
        cells_read=d * m,
        c2p_conversions=m,
        adc_conversions=subtiles * d,
        additions=(subtiles - 1) * d,
        routed_words=subtiles * d,
        adder_stages=math.ceil(math.log2(subtiles)) if subtiles > 1 else 0,
    )


@dataclass(frozen=True)
class NormaliserCounts:
    """What the normaliser adds per head and generated token (the circuit of :mod:`gaincell.op.normaliser`)."""

    cells: int  # one more V column: a cell per stored token, M (area and read, as the V array's M x D)
    cells_written: int  # the constant c rewritten beside each new token: 1
    adc_conversions: int  # one per sub-tile: ceil(M/R)
    additions: int  # the ones column's partial sums added: ceil(M/R) - 1
    routed_words: int  # its ADC words to their adder: ceil(M/R)
    divider_additions: int  # one reciprocal (b) + D multiplies (b - 1 each), in b-bit adders
    divider_stages: int  # b (reciprocal) + ceil(log2 b) (multiply), after the adder tree


def normaliser_counts(shape: AttentionShape, bits: int = DIVIDER_BITS) -> NormaliserCounts:
    """The normaliser's operation counts for one head and one token (see :data:`DIVIDER_BITS`)."""
    subtiles = shape.subtiles
    return NormaliserCounts(
        cells=shape.window,
        cells_written=1,
        adc_conversions=subtiles,
        additions=subtiles - 1,
        routed_words=subtiles,
        divider_additions=bits + shape.head_dim * (bits - 1),
        divider_stages=bits + math.ceil(math.log2(bits)),
    )


@dataclass(frozen=True)
class GainCellEstimate:
    """Energy (J), latency (s) and area (m²) of gain-cell attention for one shape and technology.

    ``energy_components`` and ``area_components`` are per head; ``latency_components`` are the steps of
    one layer's critical path (heads run in parallel). Totals over heads and layers are properties.
    """

    shape: AttentionShape
    technology: str
    counts: OperationCounts
    energy_components: dict[str, float]
    latency_components: dict[str, float]
    area_components: dict[str, float]
    normaliser: NormaliserCounts | None = None  # None: the paper's chip, without the option

    @property
    def energy_breakdown(self) -> dict[str, float]:
        """Per-head energy in the four components of SPEC-hardware §6.1."""
        components = self.energy_components
        return {group: sum(components.get(name, 0.0) for name in names) for group, names in BREAKDOWN_GROUPS.items()}

    @property
    def energy_per_head(self) -> float:
        return sum(self.energy_components.values())

    @property
    def energy_per_layer(self) -> float:
        """All H heads of one layer, per token (SPEC-hardware §6.1: 73.8 nJ for GPT-2 small)."""
        return self.energy_per_head * self.shape.heads

    @property
    def energy_per_token(self) -> float:
        """All layers, per generated token."""
        return self.energy_per_layer * self.shape.layers

    @property
    def latency_per_layer(self) -> float:
        """One layer's attention per token, heads in parallel (SPEC-hardware §6.1: 65 ns)."""
        return sum(self.latency_components.values())

    @property
    def latency_per_token(self) -> float:
        """Layers run one after the other: L x the per-layer latency."""
        return self.latency_per_layer * self.shape.layers

    @property
    def area_per_head(self) -> float:
        return sum(self.area_components.values())

    @property
    def area_per_layer(self) -> float:
        return self.area_per_head * self.shape.heads

    @property
    def area_total(self) -> float:
        """Arrays and periphery for every head of every layer, for one sequence's window."""
        return self.area_per_layer * self.shape.layers


def estimate(shape: AttentionShape, tech: Technology, *, normaliser: bool = False) -> GainCellEstimate:
    """Per-token cost of gain-cell attention from per-operation constants (SPEC-hardware §6.3.1).

    Energy per head = Σ count x constant, with a cell read costing read power x pulse width, the mean
    pulse width being ``pulse_activity`` x T_max. Latency per layer = write + DAC + T_max + charge-to-
    pulse + T_max + ADC + adder-tree depth x stage time + control (a pulse slot is always T_max long,
    whatever the data). Area per head = 2 arrays of M x D cells + write drivers (D per array) + DACs
    (D) + charge-to-pulse converters (M) + ADCs (ceil(M/R) x D) + adders + control.

    ``normaliser`` adds, per head: a V column of M cells (area, and its read like a V cell's) with one
    write driver and one cell written per token; ceil(M/R) ADC conversions (and ADCs), routed words and
    ceil(M/R) - 1 additions; the divider in adders (:data:`DIVIDER_BITS`). Its conversions and sums run
    beside the values' (ADCs and adders are per column), so only the divider lengthens the path.
    """
    a, p, g = tech.array, tech.periphery, tech.digital
    n = operation_counts(shape)
    read_energy = a.read_power_per_cell * n.cells_read * a.pulse_activity * a.max_pulse_width
    energy = {
        "k_write": a.write_energy_per_cell * n.cells_written,
        "k_read": read_energy,
        "charge_to_pulse": p.c2p_energy_per_column * n.c2p_conversions,
        "v_write": a.write_energy_per_cell * n.cells_written,
        "v_read": read_energy,
        "adc": p.adc_energy_per_conversion * n.adc_conversions,
        "dac": p.dac_energy_per_row * n.dac_rows,
        "adder": g.adder_energy_per_add * n.additions,
        "routing": g.routing_energy_per_word * n.routed_words,
        "control": g.control_energy_per_head,
    }
    latency = {
        "write": a.write_time,
        "dac": p.dac_time,
        "first_pulse": a.max_pulse_width,
        "charge_to_pulse": p.c2p_time,
        "second_pulse": a.max_pulse_width,
        "adc": p.adc_time,
        "adder_tree": g.adder_time_per_stage * n.adder_stages,
        "control": g.control_time,
    }
    area = {
        "cells": 2 * shape.window * shape.head_dim * a.cell_area,
        "write_drivers": 2 * shape.head_dim * a.write_driver_area_per_row,
        "dacs": n.dac_rows * p.dac_area_per_row,
        "charge_to_pulse": n.c2p_conversions * p.c2p_area_per_column,
        "adcs": n.adc_conversions * p.adc_area,
        "adders": n.additions * g.adder_area,
        "control": g.control_area_per_head,
    }
    ones = _add_normaliser(shape, tech, energy, latency, area) if normaliser else None
    return GainCellEstimate(shape, tech.name, n, energy, latency, area, ones)


def _add_normaliser(shape: AttentionShape, tech: Technology, energy: dict, latency: dict, area: dict) -> NormaliserCounts:
    """Add the normaliser's components (see :func:`estimate`) to the per-head dicts; return its counts."""
    a, p, g = tech.array, tech.periphery, tech.digital
    ones = normaliser_counts(shape)
    energy |= {
        "ones_write": a.write_energy_per_cell * ones.cells_written,
        "ones_read": a.read_power_per_cell * ones.cells * a.pulse_activity * a.max_pulse_width,
        "ones_adc": p.adc_energy_per_conversion * ones.adc_conversions,
        "ones_adder": g.adder_energy_per_add * ones.additions,
        "ones_routing": g.routing_energy_per_word * ones.routed_words,
        "divider": g.adder_energy_per_add * ones.divider_additions,
    }
    latency["divider"] = g.adder_time_per_stage * ones.divider_stages
    area |= {
        "ones_cells": ones.cells * a.cell_area,
        "ones_write_driver": a.write_driver_area_per_row,
        "ones_adcs": ones.adc_conversions * p.adc_area,
        "ones_adders": ones.additions * g.adder_area,
        "divider": ones.divider_additions * g.adder_area,
    }
    return ones
