"""PNG plots of the cost model (SPEC-hardware §6.3.5): scaling with the window M, breakdown, area.

- ``energy_vs_window.png`` / ``latency_vs_window.png``: per token and attention layer, log axes; gain
  cells against each GPU's roofline, per sequence-token (solid) and per batch step (dashed);
- ``energy_breakdown.png``: the per-head components of SPEC-hardware §6.1, model against paper, and
  how the four groups grow with M;
- ``area_vs_window.png``: area of one layer's arrays and periphery against M, by component.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from gaincell.atomic import atomic_file, check_own_file, record_written
from gaincell.hardware.constants import load_reference
from gaincell.hardware.gaincell_model import GainCellEstimate, estimate
from gaincell.hardware.gpu import roofline
from gaincell.hardware.report import Resolved


def sweep_windows(window: int, subtile_rows: int) -> list[int]:
    """Windows from one sub-tile to 16k tokens (powers of two), plus the chosen one."""
    windows = {subtile_rows * 2**k for k in range(12) if subtile_rows * 2**k <= max(16384, window)}
    return sorted(windows | {window})


#: The files :func:`write_plots` writes (checked before anything is drawn: a user's file of that name is kept).
PLOT_FILES = ("energy_vs_window.png", "latency_vs_window.png", "energy_breakdown.png", "area_vs_window.png")
#: The writer :func:`write_plots` records in the folder's manifest (:mod:`gaincell.atomic`).
WRITER = "gaincell hw --plot"


def check_plot_folder(directory: str | os.PathLike) -> None:
    """Refuse, before any work, a folder where a plot's name is a file gaincell hw did not write."""
    for name in PLOT_FILES:
        check_own_file("--plot", Path(directory) / name, WRITER)


def _save(figure, directory: Path, name: str) -> Path:
    path = directory / name
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    return path


def write_plots(resolved: Resolved, directory: str | os.PathLike) -> list[Path]:
    """Write the four plots into ``directory`` (created if missing; checked by :func:`check_plot_folder`),
    listed in its manifest; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    check_plot_folder(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shape, tech = resolved.shape, resolved.tech
    windows = sweep_windows(shape.window, shape.subtile_rows)
    normaliser = resolved.normaliser
    chips: list[GainCellEstimate] = [estimate(replace(shape, window=m), tech, normaliser=normaliser) for m in windows]
    title = f"H={shape.heads}, D={shape.head_dim}, R={shape.subtile_rows}, GPU batch {resolved.batch}"
    written = [
        _scaling_plot(plt, resolved, windows, chips, quantity, title, directory) for quantity in ("energy", "latency")
    ]
    written.append(_breakdown_plot(plt, resolved, windows, chips, title, directory))
    written.append(_area_plot(plt, resolved, windows, chips, title, directory))
    record_written(directory, [path.name for path in written], WRITER)
    return written


def _scaling_plot(plt, resolved: Resolved, windows, chips, quantity: str, title: str, directory: Path) -> Path:
    """Energy or latency per token and layer against M: gain cells against each GPU's roofline."""
    shape, tech = resolved.shape, resolved.tech
    unit = {"energy": "J", "latency": "s"}[quantity]
    gpus = {d.key: [roofline(d, resolved.workload(m)) for m in windows] for d in resolved.devices}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(windows, [getattr(c, f"{quantity}_per_layer") for c in chips], "k-o", label=f"gain cells ({tech.name})")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, estimates) in enumerate(gpus.items()):
        colour = colours[i % len(colours)]
        steps = [getattr(g, f"{quantity}_step") for g in estimates]
        axes.plot(windows, [v / resolved.batch for v in steps], "-", color=colour, label=f"{key} per seq-token")
        axes.plot(windows, steps, "--", color=colour, label=f"{key} per batch step")
    axes.axvline(shape.window, color="grey", lw=0.8, ls=":")
    axes.set(xscale="log", yscale="log", xlabel="window M (tokens)", ylabel=f"{quantity} per token and layer ({unit})")
    axes.set_title(
        f"{quantity.capitalize()} of one attention layer per token; GPUs: roofline, "
        f"{resolved.kernel} {resolved.dtype}\n{title}",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    path = _save(figure, directory, f"{quantity}_vs_window.png")
    plt.close(figure)
    return path


def _breakdown_plot(plt, resolved: Resolved, windows, chips, title: str, directory: Path) -> Path:
    """The per-head energy components of SPEC-hardware §6.1, model against paper, and against M."""
    shape, tech = resolved.shape, resolved.tech
    chip = estimate(shape, tech, normaliser=resolved.normaliser)
    reference = load_reference().gain_cell
    paper = [reference.first_product, reference.second_product, reference.digital, reference.dac]
    groups = list(chip.energy_breakdown)
    labels = [g.replace("_and_", " +\n").replace("_", " ") for g in groups]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    positions = range(len(groups))
    left.bar([p - 0.2 for p in positions], [chip.energy_breakdown[g] * 1e12 for g in groups], 0.4, label="model")
    left.bar([p + 0.2 for p in positions], [v * 1e12 for v in paper], 0.4, label="paper §6.1 (M=1024)")
    left.set_xticks(list(positions), labels, fontsize=7)
    left.set(ylabel="energy per head and token (pJ)", title=f"Breakdown at M={shape.window}")
    left.legend(fontsize=8)
    bottom = [0.0] * len(windows)
    for group, label in zip(groups, labels, strict=True):
        top = [b + c.energy_breakdown[group] * 1e12 for b, c in zip(bottom, chips, strict=True)]
        right.fill_between(windows, bottom, top, label=label.replace("\n", " "))
        bottom = top
    right.set(
        xscale="log", xlabel="window M (tokens)", ylabel="energy per head and token (pJ)",
        title="Components against the window",
    )  # fmt: skip
    right.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"Gain-cell energy breakdown ({tech.name}); {title}", fontsize=9)
    path = _save(figure, directory, "energy_breakdown.png")
    plt.close(figure)
    return path


def _area_plot(plt, resolved: Resolved, windows, chips, title: str, directory: Path) -> Path:
    """Area of one layer's arrays and periphery against M, by component."""
    shape, tech = resolved.shape, resolved.tech
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for component in chips[0].area_components:
        values = [c.area_components[component] * c.shape.heads * 1e6 for c in chips]
        axes.plot(windows, values, "-", label=component.replace("_", " "))
    axes.plot(windows, [c.area_per_layer * 1e6 for c in chips], "k-o", label="total")
    axes.axvline(shape.window, color="grey", lw=0.8, ls=":")
    axes.set(xscale="log", yscale="log", xlabel="window M (tokens)", ylabel="area per layer (mm²)")
    axes.set_title(f"Gain-cell area of one attention layer ({tech.name}); {title}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    path = _save(figure, directory, "area_vs_window.png")
    plt.close(figure)
    return path
