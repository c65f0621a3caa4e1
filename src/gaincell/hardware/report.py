"""Assemble the ``gaincell hw`` report: one JSON-able dict.

Every number in the report comes from a constant of ``presets/`` (listed with its source under
``sources``) or a formula of :mod:`~gaincell.hardware.gaincell_model`, :mod:`~gaincell.hardware.gpu`
or :mod:`~gaincell.hardware.compare`, whose docstrings cite SPEC-hardware. Units are SI and named in
each key (``_j``, ``_s``, ``_m2``, ``_w``). :mod:`~gaincell.hardware.render` turns it into text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gaincell.errors import GainCellError
from gaincell.hardware.compare import RetentionCheck, ratios, retention_check, whole_model
from gaincell.hardware.constants import (
    ConstantRecord,
    GpuDevice,
    Technology,
    load_gpus,
    load_reference,
    load_technology,
)
from gaincell.hardware.gaincell_model import AttentionShape, GainCellEstimate, estimate
from gaincell.hardware.gpu import BASELINES, DecodeWorkload, measure, resolve_gpus, roofline
from gaincell.hardware.models import DECODERS, DecoderShape, load_shape
from gaincell.validation import check_choice, check_int

FORMULAS = {  # where each section of the report is computed; § are SPEC-hardware sections
    "gain_cell": "gaincell_model.estimate: sum of operation count x per-operation constant (§6.3.1)",
    "paper_6_1": "report._paper_section: model / paper - 1 for the components of SPEC-hardware §6.1",
    "gpus.roofline": "gpu.roofline: max(bytes / bandwidth, FLOPs / peak); time x (TDP - idle) (§6.3.2)",
    "gpus.paper_measured": "reference.toml (SPEC-hardware §6.2, per sequence-token) x batch = per step",
    "ratios": "compare.ratios: GPU / gain cell per batch step and per sequence-token (§6.2)",
    "measured": "gpu.measure: median step time; (meter energy - idle power x time) / steps (§6.2 protocol)",
    "whole_model": "compare.whole_model: weights roofline + L x attention roofline vs chip (Amdahl, §6.3.3)",
    "retention": "compare.retention_check: ε = Δt / τ, oldest token keeps exp(-ε (M - 1)) (§6.3.4)",
}

NORMALISATION_NOTES = {
    "per_batch_step": "one GPU decode step (batch of B sequences, one token each) vs one gain-cell token",
    "per_sequence_token": "GPU step / B vs one gain-cell token: equal work; the paper's ratios use this",
}


@dataclass(frozen=True)
class HardwareQuery:
    """What ``gaincell hw`` was asked: the workload, the technology, the GPUs and the extras."""

    model: str = "gpt2"  # a known name, a saved model directory or a hub id (see models.load_shape)
    heads: int | None = None  # None: the model's
    head_dim: int | None = None
    layers: int | None = None
    kv_heads: int | None = None
    hidden_size: int | None = None
    vocab: int | None = None
    window: int = 1024
    subtile_rows: int = 64
    normaliser: bool = False  # the chip option periphery.normaliser (a named deviation from the paper)
    tech: str = "paper"
    gpus: tuple[str, ...] | None = None  # None: all
    batch: int = 64
    baseline: str = "paper"
    dtype: str | None = None  # None: the baseline's
    token_rate: float | None = None  # Hz; None: the chip's own pace
    measure: bool = False
    measure_device: str = "cpu"
    measure_steps: int = 20
    measure_repeats: int = 5
    measure_warmup: int = 5
    measure_threads: int | None = None
    measure_energy_s: float = 1.0  # each energy window: idle, then running (hardware.meters)


@dataclass(frozen=True)
class Resolved:
    """A query checked and turned into model objects (shared by the report and the plots)."""

    model: DecoderShape  # the decoder asked for, with --heads/--kv-heads/--head-dim/--layers/... applied
    customised: bool
    shape: AttentionShape
    tech: Technology
    devices: tuple[GpuDevice, ...]
    batch: int
    kernel: str
    dtype: str
    normaliser: bool = False

    def workload(self, window: int | None = None) -> DecodeWorkload:
        """The GPU decode step matching the chip's shape (optionally at another window)."""
        shape = self.shape
        return DecodeWorkload(self.batch, shape.heads, shape.head_dim, window or shape.window, self.dtype, self.kernel)


def resolve(query: HardwareQuery) -> Resolved:
    """Validate a query: unknown names and out-of-range numbers raise :class:`GainCellError`."""
    named = load_shape(query.model)
    check_choice("--baseline", query.baseline, sorted(BASELINES))
    kernel, default_dtype = BASELINES[query.baseline]
    model = _with_overrides(named, query)
    customised = model != named
    if customised:
        model = dataclasses.replace(model, name=f"{named.name} (custom)")
    shape = AttentionShape(model.heads, model.head_dim, query.window, query.subtile_rows, model.layers)
    if query.token_rate is not None and not query.token_rate > 0:
        raise GainCellError(f"--token-rate must be > 0 Hz, got {query.token_rate!r}")
    resolved = Resolved(
        model,
        customised,
        shape,
        load_technology(query.tech),
        tuple(resolve_gpus(query.gpus)),
        query.batch,
        kernel,
        query.dtype or default_dtype,
        bool(query.normaliser),
    )
    resolved.workload()  # checks batch and dtype
    return resolved


def _with_overrides(named: DecoderShape, query: HardwareQuery) -> DecoderShape:
    """The shape with the explicit flags applied; a smaller kv-head count must divide the heads."""
    changes = {
        field: value
        for field, value in (
            ("heads", query.heads),
            ("head_dim", query.head_dim),
            ("layers", query.layers),
            ("kv_heads", query.kv_heads),
            ("d_model", query.hidden_size),
            ("vocab", query.vocab),
        )
        if value is not None
    }
    for field, value in changes.items():
        flag = {"d_model": "--hidden-size", "kv_heads": "--kv-heads"}.get(field, "--" + field.replace("_", "-"))
        check_int(f"{field} ({flag})", value, 1)
    if "heads" in changes and "kv_heads" not in changes and named.kv_heads is not None:
        changes["kv_heads"] = min(named.kv_heads, changes["heads"])
    model = dataclasses.replace(named, **changes)
    if model.heads % model.key_value_heads:
        raise GainCellError(f"kv_heads (--kv-heads) must divide heads {model.heads}, got {model.key_value_heads}")
    return model


def grouped_query_note(model: DecoderShape) -> str | None:
    """How a grouped-query model is costed (as gaincell.convert maps it), or None for plain attention."""
    if not model.grouped_query:
        return None
    return (
        f"grouped-query attention ({model.heads} query heads, {model.key_value_heads} kv heads): costed as converted, "
        f"one K and one V array per query head ({2 * model.heads} arrays per layer), each holding its group's keys "
        "and values; the GPU roofline also reads K and V per query head, an upper bound for kernels that read each kv "
        "head once"
    )


def _records(records: tuple[ConstantRecord, ...]) -> dict[str, dict[str, Any]]:
    return {r.key: {"value": r.value, "unit": r.unit, "si_value": r.si_value, "source": r.source} for r in records}


def _gain_cell_section(chip: GainCellEstimate, tech: Technology) -> dict[str, Any]:
    return {
        "technology": tech.name,
        "description": tech.description,
        "operation_counts_per_head": dataclasses.asdict(chip.counts),
        "normaliser_counts_per_head": None if chip.normaliser is None else dataclasses.asdict(chip.normaliser),
        "per_head": {
            "energy_j": chip.energy_per_head,
            "breakdown_j": chip.energy_breakdown,
            "components_j": chip.energy_components,
            "area_m2": chip.area_per_head,
            "area_components_m2": chip.area_components,
        },
        "per_layer": {
            "energy_j": chip.energy_per_layer,
            "latency_s": chip.latency_per_layer,
            "area_m2": chip.area_per_layer,
            "latency_components_s": chip.latency_components,
        },
        "per_token_all_layers": {
            "energy_j": chip.energy_per_token,
            "latency_s": chip.latency_per_token,
            "area_m2": chip.area_total,
        },
    }


def _paper_section(chip: GainCellEstimate) -> dict[str, Any]:
    """Our model against SPEC-hardware §6.1 (meaningful for the reference workload and ``paper`` tech)."""
    ref = load_reference().gain_cell
    reference = {
        "first_product_and_charge_to_pulse": ref.first_product,
        "second_product_and_adc": ref.second_product,
        "digital_control_and_routing": ref.digital,
        "dac": ref.dac,
    }
    ours = chip.energy_breakdown
    pairs = {f"{k}_per_head_j": (ours[k], v) for k, v in reference.items()}
    pairs["energy_per_head_j"] = (chip.energy_per_head, ref.per_head)
    pairs["energy_per_layer_j"] = (chip.energy_per_layer, ref.per_layer)
    pairs["latency_per_layer_s"] = (chip.latency_per_layer, ref.latency)
    return {
        name: {"model": model, "paper": paper, "relative_error": model / paper - 1.0}
        for name, (model, paper) in pairs.items()
    }


def _gpu_section(resolved: Resolved, chip: GainCellEstimate) -> list[dict[str, Any]]:
    """Roofline per device; for the paper's devices and workload also the §6.2 measurements."""
    reference = load_reference()
    workload = resolved.workload()
    paper_workload = (reference.heads, reference.head_dim, reference.window, reference.batch)
    matches_paper = (workload.heads, workload.head_dim, workload.window, workload.batch) == paper_workload
    paper_kernel, paper_dtype = BASELINES["paper"]
    sections = []
    for device in resolved.devices:
        gpu = roofline(device, workload)
        entry: dict[str, Any] = {
            "key": device.key,
            "name": device.name,
            "memory": device.memory,
            "bandwidth_bytes_per_s": device.bandwidth,
            "tdp_w": device.tdp,
            "idle_power_w": device.idle_power,
            "roofline": {
                "bytes_per_step": workload.bytes_per_step,
                "flops_per_step": workload.flops_per_step,
                "bound": gpu.bound,
                "latency_step_s": gpu.latency_step,
                "energy_step_j": gpu.energy_step,
                "dram_energy_step_j": gpu.dram_energy_step,
                "latency_per_sequence_token_s": gpu.latency_per_sequence_token,
                "energy_per_sequence_token_j": gpu.energy_per_sequence_token,
                "ratios": ratios(gpu.latency_step, gpu.energy_step, workload.batch, chip),
            },
            "paper_measured": None,
        }
        measured = reference.gpus.get(device.key)
        if measured is not None and matches_paper:
            latency_step = measured.latency_per_sequence_token * reference.batch
            energy_step = measured.energy_per_sequence_token * reference.batch
            protocol = roofline(device, dataclasses.replace(workload, kernel=paper_kernel, dtype=paper_dtype))
            entry["paper_measured"] = {
                "latency_per_sequence_token_s": measured.latency_per_sequence_token,
                "energy_per_sequence_token_j": measured.energy_per_sequence_token,
                "latency_step_s": latency_step,
                "energy_step_j": energy_step,
                "ratios": ratios(latency_step, energy_step, reference.batch, chip),
                "paper_stated_ratios": {"latency": measured.latency_ratio, "energy": measured.energy_ratio},
                "paper_protocol_roofline": {
                    "kernel": paper_kernel,
                    "dtype": paper_dtype,
                    "bandwidth_bytes_per_s": device.bandwidth,
                    "latency_step_s": protocol.latency_step,
                    "energy_step_j": protocol.energy_step,
                    "latency_over_measured": protocol.latency_step / latency_step,
                    "energy_over_measured": protocol.energy_step / energy_step,
                },
            }
        sections.append(entry)
    return sections


def _measured_section(query: HardwareQuery, resolved: Resolved, chip: GainCellEstimate) -> dict[str, Any]:
    result = measure(
        resolved.workload(),
        device=query.measure_device,
        steps=query.measure_steps,
        repetitions=query.measure_repeats,
        warmup=query.measure_warmup,
        threads=query.measure_threads,
        energy_seconds=query.measure_energy_s,
    )
    return {
        "device": result.device,
        "kernel": resolved.kernel,
        "dtype": resolved.dtype,
        "steps": result.steps,
        "repetitions": result.repetitions,
        "warmup": result.warmup,
        "latency_step_s": result.latency_step,
        "latency_step_min_s": result.latency_step_min,
        "latency_step_max_s": result.latency_step_max,
        "latency_per_sequence_token_s": result.latency_per_sequence_token,
        "energy_step_j": result.energy_step,
        "energy_per_sequence_token_j": result.energy_per_sequence_token,
        "idle_power_w": result.idle_power,
        "energy_method": result.energy_method,
        "energy_window": result.energy_window,
        "ratios": ratios(result.latency_step, result.energy_step, resolved.batch, chip),
    }


def _whole_model_rows(resolved: Resolved) -> list[dict[str, Any]]:
    """SPEC-hardware §6.3.3 for GPT-2 small..XL, Llama-7B and, if customised, the selected shape."""
    known = list(DECODERS.values())
    decoders = known + ([] if resolved.model in known else [resolved.model])
    shape, primary = resolved.shape, resolved.devices[0]
    rows = []
    for model in decoders:
        workload = (shape.window, resolved.batch, resolved.dtype, resolved.kernel, shape.subtile_rows)
        view = whole_model(model, primary, resolved.tech, *workload, normaliser=resolved.normaliser)
        rows.append(
            {
                "model": view.model,
                "selected": model == resolved.model,
                "gpu_rest_latency_step_s": view.gpu_rest_latency,
                "gpu_attention_latency_step_s": view.gpu_attention_latency,
                "chip_attention_latency_step_s": view.chip_attention_latency,
                "gpu_rest_energy_step_j": view.gpu_rest_energy,
                "gpu_attention_energy_step_j": view.gpu_attention_energy,
                "chip_attention_energy_step_j": view.chip_attention_energy,
                "attention_latency_fraction": view.attention_latency_fraction,
                "attention_energy_fraction": view.attention_energy_fraction,
                "latency_speedup": view.latency_speedup,
                "energy_reduction": view.energy_reduction,
                "latency_bound": view.latency_bound,
                "energy_bound": view.energy_bound,
                "chip_area_per_sequence_m2": view.chip_area_per_sequence,
            }
        )
    return rows


def _retention_checks(
    resolved: Resolved, chip: GainCellEstimate, selected: dict[str, Any], token_rate: float | None
) -> list[RetentionCheck]:
    """ε at the chip's own pace (the paper's), with the rest of the model on the GPU, and --token-rate."""
    tech, window = resolved.tech, resolved.shape.window
    hybrid = selected["gpu_rest_latency_step_s"] + selected["chip_attention_latency_step_s"]
    checks = [
        retention_check(tech, window, chip.latency_per_token, "chip-paced (the paper's assumption)"),
        retention_check(tech, window, hybrid, f"hybrid: rest of the model on {resolved.devices[0].key}"),
    ]
    if token_rate is not None:
        checks.append(retention_check(tech, window, 1.0 / token_rate, "--token-rate"))
    return checks


def build_report(query: HardwareQuery) -> dict[str, Any]:
    """Run every part of the cost model for one query and return the report as plain data."""
    resolved = resolve(query)
    shape, reference = resolved.shape, load_reference()
    chip = estimate(shape, resolved.tech, normaliser=resolved.normaliser)
    rows = _whole_model_rows(resolved)
    selected = next(row for row in rows if row["selected"])
    checks = _retention_checks(resolved, chip, selected, query.token_rate)
    chosen = checks[-1] if query.token_rate is not None else checks[0]
    paper_workload = (reference.heads, reference.head_dim, reference.window, reference.batch)
    return {
        "workload": {
            "model": resolved.model.name,
            "heads": shape.heads,
            "kv_heads": resolved.model.key_value_heads,
            "head_dim": shape.head_dim,
            "hidden_size": resolved.model.d_model,
            "vocab": resolved.model.vocab,
            "shape_source": resolved.model.source,
            "grouped_query_note": grouped_query_note(resolved.model),
            "window": shape.window,
            "subtile_rows": shape.subtile_rows,
            "subtiles": shape.subtiles,
            "normaliser": resolved.normaliser,
            "layers": shape.layers,
            "batch": resolved.batch,
            "technology": resolved.tech.name,
            "gpu_baseline": {"name": query.baseline, "kernel": resolved.kernel, "dtype": resolved.dtype},
            "matches_paper_workload": (shape.heads, shape.head_dim, shape.window, resolved.batch) == paper_workload,
        },
        "gain_cell": _gain_cell_section(chip, resolved.tech),
        "paper_6_1": _paper_section(chip),
        "gpus": _gpu_section(resolved, chip),
        "measured": _measured_section(query, resolved, chip) if query.measure else None,
        "whole_model": {
            "gpu": resolved.devices[0].key,
            "kernel": resolved.kernel,
            "dtype": resolved.dtype,
            "rows": rows,
        },
        "retention": {
            "epsilon": chosen.epsilon,
            "scenario": chosen.scenario,
            "checks": [dataclasses.asdict(check) for check in checks],
            "warnings": [check.warning for check in checks if check.warning],
        },
        "normalisations": NORMALISATION_NOTES,
        "formulas": FORMULAS,
        "sources": {
            "technology": _records(resolved.tech.records),
            "gpus": _records(tuple(r for device in load_gpus().values() for r in device.records)),
            "paper": _records(reference.records),
        },
    }
