"""What a sweep leaves behind: ``results.json``, ``report.md`` (a table) and PNG plots.

- ``ppl_vs_<knob>.png`` for each swept knob: perplexity against the knob, one line per setting of
  the other knobs (mean over chip seeds, error bars = std when several);
- ``pareto.png`` and ``pareto_area.png``: perplexity against energy per generated token and against
  chip area, every point, the Pareto front (no other point is both cheaper and better) joined and labelled.

Everything is written atomically (:mod:`gaincell.atomic`), so a reader never sees half a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gaincell.atomic import atomic_file
from gaincell.hardware.render import si
from gaincell.sweep.knobs import LEAKAGE_KNOBS

MAX_LINES = 12  # lines per knob plot before the other knobs are averaged instead
KNOB_UNITS = {"retention_time": "s", "token_rate": "Hz"}


def write_outputs(spec, summary: dict, out: Path, run_note: str = "", adapt_seconds: dict | None = None) -> list[Path]:
    """results.json (no timings: a resumed sweep writes the same file), report.md and the plots;
    ``adapt_seconds``: each point's adaptation time, for the report only."""
    with atomic_file(out / "results.json") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    plots = write_plots(summary, out)
    with atomic_file(out / "report.md") as handle:
        handle.write(markdown(spec, summary, [p.name for p in plots], run_note, adapt_seconds or {}))
    return [out / "results.json", out / "report.md", *plots]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _ppl(row: dict) -> str:
    if row.get("failed"):
        return f"failed: {row['failed']}"
    if len(row["ppl"]) > 1:
        return f"{row['ppl_mean']:.2f} ± {row['ppl_std']:.2f}"
    return f"{row['ppl_mean']:.2f}"


def markdown(spec, summary: dict, plots: list[str], run_note: str = "", adapt_seconds: dict | None = None) -> str:
    """The table of every point: knobs, perplexity (mean ± std over seeds), change vs the reference, cost."""
    rows, knobs = summary["rows"], summary["knobs"]
    reference = next((row for row in rows if row["index"] < 0 and not row.get("failed")), None)
    lines = [
        "# gaincell sweep",
        "",
        f"- model: `{spec.model}`; text: `{spec.text}` (first {spec.max_tokens or 'all'} tokens)",
        f"- base hardware: {'the model’s saved config' if _is_gain_cell(spec) else f'preset `{spec.preset}`'}"
        + (f", with {json.dumps(spec.base)}" if spec.base else ""),
        f"- chip seeds: {list(spec.seeds)} (several only where variability or read noise make the chip random)",
        f"- calibration per point (SPEC §4.2): {'yes' if spec.calibrate else 'no'}; cost: technology `{spec.tech}`, "
        f"ADC cost {spec.adc_cost}",
    ]
    if spec.adapt:
        lines.append(_adapt_line(spec.adapt))
    if spec.tasks:
        limit = f"first {spec.tasks['limit']} items per task" if spec.tasks["limit"] else "every item"
        lines.append(f"- downstream tasks (lm-eval, local files, {limit}): accuracy in % (length-normalised for ARC, "
                     "HellaSwag, PIQA), WikiText-2 word perplexity")  # fmt: skip
    if reference is not None and spec.tasks:
        scores = ", ".join(f"{t} {_task_value(t, (reference.get('tasks') or {}).get(t))}" for t in spec.tasks["names"])
        lines.append(f"- reference on the tasks: {scores}")
    if reference is not None:
        lines.append(f"- reference (the model as loaded): perplexity **{reference['ppl_mean']:.3f}**")
    lines += _consistency_lines(rows, reference)
    if run_note:
        lines.append(f"- time: {run_note}")
    leakage = any(knob in LEAKAGE_KNOBS for knob in knobs)  # the ε each retention / token rate gives
    tasks = spec.tasks["names"] if spec.tasks else []
    header = ["#", *knobs, *(["leakage ε"] if leakage else []), "perplexity", "vs ref.", *tasks, "energy / token"]
    header += ["latency / token", "area", "Pareto: energy", "Pareto: area"]
    header += ["adaptation tokens", "adaptation time"] if spec.adapt else []
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["index"] < 0:
            continue
        cost = row["cost"] or {}
        ratio = f"{row['ppl_mean'] / reference['ppl_mean']:.2f}×" if reference and not row.get("failed") else ""
        cells = [str(row["index"]), *(_value(row["point"].get(k, "")) for k in knobs)]
        cells += [f"{row['leakage']:.3g}"] * leakage + [_ppl(row), ratio]
        cells += [_task_value(task, (row.get("tasks") or {}).get(task)) for task in tasks]
        cells += [si(cost.get("energy_per_token_j"), "J"), si(cost.get("latency_per_token_s"), "s")]
        cells += [f"{cost['area_m2'] * 1e6:.4g} mm²" if cost else "n/a"]
        cells += ["✓" if row.get(key) else "" for key in ("pareto", "pareto_area")]
        if spec.adapt:
            tokens = sum(a["tokens"] for a in row["adaptation"] or [] if a)
            cells += [f"{tokens:,}", f"{(adapt_seconds or {}).get(row['index'], 0.0):.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{name}]({name})" for name in plots)]
    return "\n".join(lines) + "\n"


def _consistency_lines(rows: list[dict], reference: dict | None) -> list[str]:
    """A point at the adapted model's own hardware must score what the model scores as loaded: before
    its distillation where points are distilled (the start of every point's adaptation), else as measured."""
    lines = []
    for row in rows:
        if not row.get("own_hardware") or reference is None or row.get("failed"):
            continue
        starts = [a.get("ppl_start") for a in row.get("adaptation") or [] if a]
        value, when = (starts[0], "before its distillation") if starts and starts[0] is not None else (row["ppl_mean"], "")
        difference = value / reference["ppl_mean"] - 1
        verdict = "reproduces it" if abs(difference) < 1e-3 else "DIFFERS"
        lines.append(f"- consistency check: point {row['index']} is the model's own hardware; {when + ' ' if when else ''}"
                     f"it scores {value:.3f} against the reference's {reference['ppl_mean']:.3f} "
                     f"({difference:+.2%}: {verdict})" + (f"; after it, {row['ppl_mean']:.3f}" if when else ""))  # fmt: skip
    return lines


def _task_value(task: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if task == "wikitext" else f"{100 * value:.1f}"


def _adapt_line(adapt: dict) -> str:
    if adapt["scalers"] == "remap":
        line = "- adaptation per point: the adapted model's trained scalers re-expressed for the point's DAC ranges"
    else:
        line = f"- adaptation per point (SPEC §4.4): scalers initialised from `{adapt['teacher']}` on `{adapt['text']}`"
    if adapt["distill_tokens"]:
        settings = ", ".join(f"{k} {_value(v)}" for k, v in adapt["distill"].items())
        line += f", then distilled for {adapt['distill_tokens']:,} tokens" + (f" ({settings})" if settings else "")
    return line + "; tokens and time per point (over its chip seeds) in the table"


def _is_gain_cell(spec) -> bool:
    config = json.loads((Path(spec.model).expanduser() / "config.json").read_text())
    return "gaincell" in config


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def write_plots(summary: dict, out: Path) -> list[Path]:
    """One plot per swept knob and the Pareto plot."""
    import matplotlib

    matplotlib.use("Agg")
    rows = [row for row in summary["rows"] if row["index"] >= 0 and not row.get("failed")]  # failed: in the table only
    if not rows:
        return []
    reference = next((row["ppl_mean"] for row in summary["rows"] if row["index"] < 0), None)
    written = [_knob_plot(rows, summary["knobs"], knob, out, reference) for knob in summary["knobs"]]
    if any(row["cost"] for row in rows):
        written += [_pareto_plot(rows, summary["knobs"], out, reference, front) for front in PARETO_PLOTS]
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _log_if_wide(axes, perplexities: list[float]) -> None:
    """Log perplexity axis when the values span more than 10x (e.g. a reference far below the points)."""
    if min(perplexities) > 0 and max(perplexities) / min(perplexities) > 10:
        axes.set_yscale("log")


def _reference_line(axes, reference: float | None) -> None:
    if reference is not None:
        axes.axhline(reference, color="k", linestyle="--", linewidth=0.8, label=f"reference {reference:.3g}")


def _knob_plot(rows: list[dict], knobs: list[str], knob: str, out: Path, reference: float | None) -> Path:
    """Perplexity against ``knob``: a line per setting of the other knobs, or their mean if too many."""
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(row["point"].get(knob) for row in rows))
    numeric = _numeric(values)
    position = {v: (v if numeric else i) for i, v in enumerate(values)}
    others = [k for k in knobs if k != knob]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        label = ", ".join(f"{k}={_value(row['point'].get(k))}" for k in others) or "all"
        groups.setdefault(label, []).append(row)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    _reference_line(axes, reference)
    if len(groups) <= MAX_LINES:
        for label, group in groups.items():
            group = sorted(group, key=lambda r: position[r["point"].get(knob)])
            x = [position[r["point"].get(knob)] for r in group]
            axes.errorbar(x, [r["ppl_mean"] for r in group], yerr=[r["ppl_std"] for r in group], marker="o", label=label)
        axes.legend(fontsize=7, loc="best")
    else:  # too many settings: a line per value of one other knob, the mean over the rest
        split = max(others, key=lambda k: (len({_value(r["point"].get(k)) for r in rows}) <= MAX_LINES,
                                           len({_value(r["point"].get(k)) for r in rows})))  # fmt: skip
        for setting in dict.fromkeys(row["point"].get(split) for row in rows):
            chosen = [r for r in rows if r["point"].get(split) == setting]
            means = {v: [r["ppl_mean"] for r in chosen if r["point"].get(knob) == v] for v in values}
            means = {v: sum(m) / len(m) for v, m in means.items() if m}  # a failed point is left out
            label = f"{split}={_value(setting)} (mean over the other knobs)"
            axes.plot([position[v] for v in means], list(means.values()), marker="o", label=label)
        axes.legend(fontsize=7)
    if numeric and min(values) > 0 and max(values) / min(values) >= 8:
        axes.set_xscale("log", base=10 if knob in LEAKAGE_KNOBS else 2)  # retention over decades: 0.1 ms to 1 s
    if not numeric:
        axes.set_xticks(range(len(values)), [_value(v) for v in values])
    _log_if_wide(axes, [row["ppl_mean"] for row in rows] + ([reference] if reference else []))
    axes.set_xlabel(f"{knob} ({KNOB_UNITS[knob]})" if knob in KNOB_UNITS else knob)
    axes.set_ylabel("perplexity")
    axes.set_title(f"perplexity vs {knob}")
    axes.grid(alpha=0.3)
    return _save(figure, out / f"ppl_vs_{knob.replace('.', '_')}.png")


#: Pareto plots: front key -> (cost, its scale to the axis unit, axis label, file).
PARETO_PLOTS = {
    "pareto": ("energy_per_token_j", 1e9, "attention energy per generated token, all layers (nJ)", "pareto.png"),
    "pareto_area": ("area_m2", 1e6, "attention area, all layers (mm²)", "pareto_area.png"),
}


def _pareto_plot(rows: list[dict], knobs: list[str], out: Path, reference: float | None, key: str) -> Path:
    """Perplexity against a cost (energy per token or area), the Pareto front joined and each front point labelled."""
    import matplotlib.pyplot as plt

    cost, scale, xlabel, name = PARETO_PLOTS[key]
    costed = [row for row in rows if row["cost"]]
    figure, axes = plt.subplots(figsize=(7.5, 5))
    _reference_line(axes, reference)
    costs = [row["cost"][cost] * scale for row in costed]
    axes.scatter(costs, [row["ppl_mean"] for row in costed], c="0.6", s=18, label="points")
    front = sorted((row for row in costed if row.get(key)), key=lambda r: r["cost"][cost])
    fx = [row["cost"][cost] * scale for row in front]
    axes.plot(fx, [row["ppl_mean"] for row in front], "r-o", label="Pareto front")
    # Front points crowd together near the best perplexity: each gets a number beside it and its settings in a
    # numbered list to the right of the axes, so no two labels overlap however close the points are.
    legend_lines = []
    for number, (row, x) in enumerate(zip(front, fx, strict=True), start=1):
        offset = (3, 3) if number % 2 else (3, -10)  # neighbours alternate above and below the front
        axes.annotate(str(number), (x, row["ppl_mean"]), fontsize=7, color="r", xytext=offset, textcoords="offset points")
        settings = ", ".join(f"{k}={_value(row['point'].get(k))}" for k in knobs)
        legend_lines.append(f"{number}: {settings} (ppl {row['ppl_mean']:.3g})")
    if legend_lines:
        figure.text(1.02, 0.5, "Pareto front\n" + "\n".join(legend_lines), fontsize=7, va="center", ha="left",
                    transform=axes.transAxes, family="monospace")  # fmt: skip
    if max(costs) / min(costs) >= 3:
        axes.set_xscale("log")
    _log_if_wide(axes, [row["ppl_mean"] for row in costed] + ([reference] if reference else []))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("perplexity")
    axes.set_title(f"perplexity vs {xlabel.split(',')[0]}")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return _save(figure, out / name)
