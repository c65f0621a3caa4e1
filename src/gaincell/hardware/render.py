"""Render a ``gaincell hw`` report (the dict of :func:`gaincell.hardware.report.build_report`) as text.

Kept apart from building it, so the numbers can be computed, tested and dumped as JSON without the
presentation: :func:`render` prints rich tables, :func:`summary_lines` gives a few plain lines for
other reports (``gaincell demo``), and :func:`si` formats a quantity for any report (``gaincell sweep``).
"""

from __future__ import annotations

import math
from typing import Any


def si(value: float | None, unit: str) -> str:
    """Engineering notation: 7.38e-08 J -> '73.8 nJ'; None (not computed) -> 'n/a'."""
    if value is None:
        return "n/a"
    prefixes = (
        (1e-15, "f"),
        (1e-12, "p"),
        (1e-9, "n"),
        (1e-6, "µ"),
        (1e-3, "m"),
        (1.0, ""),
        (1e3, "k"),
        (1e9, "G"),
        (1e12, "T"),
    )
    scale, prefix = prefixes[0]
    for candidate, name in prefixes:
        if abs(value) >= candidate:
            scale, prefix = candidate, name
    return f"{value / scale:.4g} {prefix}{unit}"


def _area(square_metres: float) -> str:
    return f"{square_metres * 1e6:.4g} mm²"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def _pair(first: float | None, second: float | None, unit: str | None = None) -> str:
    if unit is None:
        return f"{_ratio(first)}, {_ratio(second)}"
    return f"{si(first, unit)}, {si(second, 'J')}"


def summary_lines(report: dict[str, Any], simulated_leakage: float | None = None) -> list[str]:
    """A few plain lines for another command's report (``gaincell demo``). ``simulated_leakage``: the ε the
    caller's simulation used, stated beside the cost model's ε = Δt/τ so a reader sees one leakage and where
    the other comes from, not two unexplained numbers."""
    w, layer = report["workload"], report["gain_cell"]["per_layer"]
    lines = [
        f"gain-cell attention ({w['technology']}), H={w['heads']} D={w['head_dim']} M={w['window']}: "
        f"{si(layer['energy_j'], 'J')} and {si(layer['latency_s'], 's')} per token and layer, "
        f"{_area(layer['area_m2'])} per layer",
    ]
    for gpu in report["gpus"]:
        r = gpu["roofline"]["ratios"]["per_sequence_token"]
        lines.append(
            f"vs {gpu['name']} (roofline, {w['gpu_baseline']['name']} baseline, per sequence-token): "
            f"latency {_ratio(r['latency_ratio'])}, energy {_ratio(r['energy_ratio'])}"
        )
    retention = report["retention"]
    if simulated_leakage is None:
        lines.append(f"leakage ε = {retention['epsilon']:.3g} per step ({retention['scenario']})")
    else:
        epsilon = retention["epsilon"]
        lines.append(
            f"leakage: simulated at ε = {simulated_leakage:.3g} per token step (the chip config's value); this shape "
            f"at the cost model's pace ({retention['scenario']}) would leak ε = Δt/τ = {epsilon:.3g} "
            f"({_leakage_comparison(simulated_leakage, epsilon)})"
        )
    return lines + list(retention["warnings"])


def _leakage_comparison(simulated: float, paced: float) -> str:
    if simulated == paced:
        return "the same"
    if paced == 0 or simulated == 0:
        return "the simulation assumes no leakage" if simulated == 0 else "the cells would not leak"
    factor = simulated / paced
    return f"the simulation assumes {factor:.3g}x more" if factor > 1 else f"the simulation assumes {1 / factor:.3g}x less"


def _table(title: str, columns: tuple[str, ...]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):  # fold, never cut: a narrow terminal wraps a number, it does not lose digits
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    return table


def _render_gain_cell(report: dict[str, Any], console: Any) -> None:
    w, cell, paper = report["workload"], report["gain_cell"], report["paper_6_1"]
    table = _table(
        "Gain-cell attention, per head and token (SPEC-hardware §6.1)",
        ("component", "model", "paper §6.1", "share"),
    )
    total = cell["per_head"]["energy_j"]
    for name, value in cell["per_head"]["breakdown_j"].items():
        reference = paper[f"{name}_per_head_j"]["paper"]
        table.add_row(name.replace("_", " "), si(value, "J"), si(reference, "J"), f"{value / total:.1%}")
    rows = (
        ("[bold]total per head[/bold]", total, "energy_per_head_j", "J"),
        (f"x {w['heads']} heads, per layer", cell["per_layer"]["energy_j"], "energy_per_layer_j", "J"),
        ("latency per layer", cell["per_layer"]["latency_s"], "latency_per_layer_s", "s"),
    )
    for label, value, key, unit in rows:
        table.add_row(label, si(value, unit), si(paper[key]["paper"], unit), "")
    every = cell["per_token_all_layers"]
    table.add_row(f"all {w['layers']} layers: energy per token", si(every["energy_j"], "J"), "", "")
    table.add_row(f"all {w['layers']} layers: latency per token", si(every["latency_s"], "s"), "", "")
    table.add_row("area per layer", _area(cell["per_layer"]["area_m2"]), "", "")
    table.add_row(f"area, all {w['layers']} layers (one sequence)", _area(every["area_m2"]), "", "")
    console.print(table)
    if not w["matches_paper_workload"] or w["technology"] != "paper":
        console.print("[dim]paper §6.1 column: the paper's figures for its own workload (reference only)[/dim]")


def _render_gpus(report: dict[str, Any], console: Any) -> None:
    columns = (
        "GPU",
        "bandwidth",
        "step: latency, energy",
        "DRAM floor",
        "per seq-token: latency, energy",
        "ratio per step",
        "ratio per seq-token",
        "roofline / measured",
    )
    table = _table("GPU decode attention, one layer (memory roofline), and GPU / gain-cell ratios", columns)
    for gpu in report["gpus"]:
        r = gpu["roofline"]
        step, seq = r["ratios"]["per_batch_step"], r["ratios"]["per_sequence_token"]
        table.add_row(
            gpu["name"],
            si(gpu["bandwidth_bytes_per_s"], "B/s"),
            _pair(r["latency_step_s"], r["energy_step_j"], "s"),
            si(r["dram_energy_step_j"], "J"),
            _pair(r["latency_per_sequence_token_s"], r["energy_per_sequence_token_j"], "s"),
            _pair(step["latency_ratio"], step["energy_ratio"]),
            _pair(seq["latency_ratio"], seq["energy_ratio"]),
            "",
        )
        measured = gpu["paper_measured"]
        if measured:
            step, seq = measured["ratios"]["per_batch_step"], measured["ratios"]["per_sequence_token"]
            check = measured["paper_protocol_roofline"]
            table.add_row(
                "  measured in the paper (§6.2)",
                "",
                _pair(measured["latency_step_s"], measured["energy_step_j"], "s"),
                "",
                _pair(measured["latency_per_sequence_token_s"], measured["energy_per_sequence_token_j"], "s"),
                _pair(step["latency_ratio"], step["energy_ratio"]),
                _pair(seq["latency_ratio"], seq["energy_ratio"]),
                f"{check['latency_over_measured']:.2f}, {check['energy_over_measured']:.2f}",
            )
    console.print(table)
    console.print(
        "[dim]pairs are (latency, energy); roofline / measured: the paper's protocol (eager, fp32) "
        "against the paper's measurement[/dim]"
    )
    for name, note in report["normalisations"].items():
        console.print(f"[dim]{name}: {note}[/dim]")


def _render_measured(measured: dict[str, Any], console: Any) -> None:
    step, seq = measured["ratios"]["per_batch_step"], measured["ratios"]["per_sequence_token"]
    console.print(
        f"[bold]measured here[/bold] on {measured['device']} ({measured['kernel']}, {measured['dtype']}; "
        f"{measured['repetitions']} x {measured['steps']} steps after {measured['warmup']} warm-up): step "
        f"{si(measured['latency_step_s'], 's')} (min {si(measured['latency_step_min_s'], 's')}, max "
        f"{si(measured['latency_step_max_s'], 's')}), energy {si(measured['energy_step_j'], 'J')} "
        f"({measured['energy_method']}); ratios per step "
        f"{_pair(step['latency_ratio'], step['energy_ratio'])}; "
        f"per seq-token {_pair(seq['latency_ratio'], seq['energy_ratio'])}"
    )


def _render_whole_model(view: dict[str, Any], console: Any) -> None:
    """One column for the speed-up when latency and energy agree (they do by construction in the roofline:
    every GPU part is charged the same power, so attention's share of energy is its share of time), two
    when they do not; the Amdahl limit beside it with the fraction of it reached."""
    rows = view["rows"]
    same = all(math.isclose(row["latency_speedup"], row["energy_reduction"], rel_tol=5e-3) for row in rows)
    speedups = ("speed-up, latency = energy",) if same else ("latency speed-up", "energy reduction")
    table = _table(
        f"Whole model per decode step on {view['gpu']} ({view['kernel']}, {view['dtype']}): "
        "attention on gain cells, the rest on the GPU (Amdahl)",
        ("model", "attention share", *speedups, "Amdahl limit", "of the limit", "chip area / seq."),
    )
    for row in rows:
        reductions = (row["latency_speedup"],) if same else (row["latency_speedup"], row["energy_reduction"])
        table.add_row(
            f"[bold]{row['model']}[/bold]" if row["selected"] else row["model"],
            f"{row['attention_latency_fraction']:.1%}",
            *(_ratio(value) for value in reductions),
            _ratio(row["latency_bound"]),
            f"{row['latency_speedup'] / row['latency_bound']:.1%}",
            _area(row["chip_area_per_sequence_m2"]),
        )
    console.print(table)
    if same:
        console.print(
            "[dim]latency and energy agree within 0.5 %: the roofline charges each GPU part (TDP − idle) x its "
            "time, so attention's share of energy equals its share of time; the Amdahl limit is 1 / (1 − share), "
            "attention made free[/dim]"
        )


def _render_retention(retention: dict[str, Any], console: Any) -> None:
    for check in retention["checks"]:
        console.print(
            f"retention, {check['scenario']}: Δt = {si(check['token_period'], 's')}, τ = "
            f"{si(check['retention_time'], 's')}, ε = Δt/τ = {check['epsilon']:.3g} per step; "
            f"the window spans {si(check['window_time'], 's')}, "
            f"its oldest token keeps {check['oldest_retained_fraction']:.1%}"
        )
    console.print(f"leakage for the simulator: ε = {retention['epsilon']:.3g} ({retention['scenario']})")
    for warning in retention["warnings"]:
        console.print(f"[yellow]warning: {warning}[/yellow]")


def render(report: dict[str, Any], console: Any) -> None:
    """Print the report as rich tables (the default output of ``gaincell hw``)."""
    w, base = report["workload"], report["workload"]["gpu_baseline"]
    console.print(
        f"[bold]gaincell hw[/bold]: {w['model']}, H={w['heads']}, D={w['head_dim']}, window M={w['window']} "
        f"({w['subtiles']} sub-tiles of R={w['subtile_rows']}), {w['layers']} layers, GPU batch "
        f"{w['batch']}; technology [bold]{w['technology']}[/bold]; GPU baseline {base['name']} "
        f"({base['kernel']}, {base['dtype']})"
    )
    if w.get("grouped_query_note"):
        console.print(f"[dim]{w['grouped_query_note']}[/dim]")
    if w.get("normaliser"):
        console.print(
            "[bold]with the normaliser[/bold] (periphery.normaliser, not the paper's chip): a ones column per V "
            "sub-tile, its conversions and a digital divider are costed (components ones_*, divider)"
        )
    _render_gain_cell(report, console)
    _render_gpus(report, console)
    if report["measured"]:
        _render_measured(report["measured"], console)
    _render_whole_model(report["whole_model"], console)
    _render_retention(report["retention"], console)
