"""How many tokens would bring an adapted model to issue 24's targets: power laws fitted to the committed curves.

Issue 24 asks, where its SmolLM2 targets are not reached, for "the budget that the curves say would reach
the targets". This script reads the real-model results already committed under ``benchmarks/results/`` (it
trains nothing) and answers with one explicit model per text.

**The model.** The gap of an adapted model on a text is g = ln(ppl / ppl_a), (a) the original on the same
tokens. The targets become gaps: out of domain "within r of (a)" is g ≤ ln r; in domain "within r of (a′)"
is ppl ≤ r·ppl_a′, with (a′) held at its measured value (fine-tuning the softmax model on more of the same
text moved it little on stories260K: 4.07–4.11 from 3.6M to 28.8M tokens). The gap is assumed to fall as a
power of the tokens, g(N) = c·N^(−α). α comes from two kinds of curve:

- ``stories260K across budgets``: the e-transfer endpoints of three runs of the same recipe at 3.6M, 14.4M
  and 28.8M tokens (each with its own full schedule: the cleanest evidence of what more tokens buy);
- ``SmolLM2 TAG, within the run``: the distillation curve of a SmolLM2 run (``--smollm2 TAG``; by default
  lr9e-3, trained on samples prompted by WikiText openings, and open, on unprompted samples), the
  perplexity on held-out blocks and on each other text after every checkpoint, against the distillation
  tokens so far. One schedule's curve, not endpoints of several: its tail is where the cosine lr runs out.

From the last measured SmolLM2 result (N_end tokens, gap g_end on each text's full evaluation) the budget
that reaches a target gap g* is N* = N_end·(g_end / g*)^(1/α): the whole budget (transfer and distillation
alike) scaled by one factor. Where α ≤ 0 the gap does not shrink with tokens on that curve, and no budget
is given. Table 1 has one measured point per row, so its targets go through perplexity: the rows' Table 1
averages against ln(raw WikiText-2 perplexity) fit a line (rows with perplexity below 1,000; above it
every row is at chance), which names the perplexity a row needs for "within k points of (a)"; that
perplexity is a ratio target on raw WikiText-2.

These are extrapolations from few points over one to two decades of tokens; the table keeps the points
and exponents beside each number so a reader can judge them.

    python benchmarks/budget_to_target.py            # writes benchmarks/results/budget-to-target/
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gaincell.atomic import atomic_file

RESULTS = Path(__file__).resolve().parent / "results"
OOD_TEXTS = ("pydoc", "shakespeare", "wikitext-raw")
#: issue 24's SmolLM2 targets, then the bars for resolving it: in domain against (a′), out of domain against
#: (a) as ratios of perplexity; Table 1 as points below (a)'s average.
TARGETS = {"in-domain": (1.3, 2.0), "ood": (1.5, 3.0), "table1": (2.0, 5.0)}
STORIES_BUDGETS = ("real-models-stories-fair", "real-models-stories-long", "real-models-stories-long2")
#: the SmolLM2 runs read by default (``--smollm2``): each gives an endpoint and a within-run curve
SMOLLM2_RUNS = ("lr9e-3", "open")
SMOLLM2_FAIR = "real-models-smollm2-fair"
#: rows above this perplexity score chance on Table 1, so they say nothing about the slope
TABLE1_PPL_CEILING = 1000.0


def read(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"budget_to_target: {path} is missing (this script reads committed real-model results)")
    return json.loads(path.read_text())


def row(results: dict, name: str) -> dict | None:
    return next((r for r in results["rows"] if r["row"] == name), None)


def fit_power_law(points: list[tuple[float, float]]) -> dict:
    """Least squares of ln g on ln N for points (N, g): g = c·N^(−α). Needs two distinct N and every g > 0
    (a point at or below its bar has no logarithm: the model there is already as good as the bar)."""
    usable = [(n, g) for n, g in points if n > 0 and g > 0]
    if len(usable) < 2 or len({n for n, _ in usable}) < 2:
        return {"alpha": None, "c": None, "points": len(usable), "why": "fewer than two points with a positive gap"}
    xs = [math.log(n) for n, _ in usable]
    ys = [math.log(g) for _, g in usable]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return {"alpha": -slope, "c": math.exp(mean_y - slope * mean_x), "points": len(usable),
            "tokens": [min(n for n, _ in usable), max(n for n, _ in usable)]}  # fmt: skip


def budget_for(tokens_end: float, gap_end: float, target: float, alpha: float | None) -> dict:
    """The budget N* = N_end·(g_end / g*)^(1/α) at which the gap reaches ``target`` (g*), or why there is none."""
    if gap_end <= target:
        return {"tokens": tokens_end, "why": "met at the measured budget"}
    if alpha is None or alpha <= 0:
        return {"tokens": None, "why": "the gap does not shrink with tokens on this curve"}
    return {"tokens": tokens_end * (gap_end / target) ** (1 / alpha), "why": None}


def stories_curves(results: Path) -> dict[str, list[tuple[float, float]]]:
    """Per text, (budget, gap to (a)) of stories260K's e-transfer endpoints."""
    runs = [read(results / name) for name in STORIES_BUDGETS]
    original = next(row(r, "a") for r in runs if row(r, "a"))
    curves: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        adapted = row(run, "e-transfer")
        if adapted is None:
            continue
        for text in ("in-domain", *OOD_TEXTS):
            gap = math.log(adapted["ppl"][text] / original["ppl"][text])
            curves.setdefault(text, []).append((adapted["tokens"], gap))
    return curves


def smollm2_curves(run: dict) -> dict[str, list[tuple[float, float]]]:
    """Per text, (distillation tokens, gap to (a)) along the SmolLM2 run's distillation: held-out blocks of
    the training text (``in-domain``) and each other text, each against the original on the same tokens."""
    original, adapted = row(run, "a"), row(run, "e-transfer")
    distill = [p for p in adapted["curve"] if p["stage"] == "distill"]
    start = max(p["tokens"] for p in adapted["curve"] if p["stage"] == "transfer")
    curves: dict[str, list[tuple[float, float]]] = {"in-domain": []}
    for point in distill:
        tokens = point["tokens"] - start
        curves["in-domain"].append((tokens, math.log(point["ppl"] / original["held_out_ppl"])))
        for text, value in point.get("ood_ppl", {}).items():
            curves.setdefault(text, []).append((tokens, math.log(value / original["ood_curve_ppl"][text])))
    return curves


def table1_line(runs: list[dict]) -> dict:
    """Table 1 average against ln(raw WikiText-2 perplexity) over SmolLM2's rows (every run read), a least-squares
    line; and the perplexity a row needs to be within each target's points of (a)."""
    points = []
    for results in runs:
        for entry in results["rows"]:
            average = (entry.get("table1") or {}).get("columns", {}).get("average")
            ppl = (entry.get("ppl") or {}).get("wikitext-raw")
            if average is not None and ppl is not None and ppl < TABLE1_PPL_CEILING:
                points.append((entry["row"], ppl, 100 * average))
    if not points:
        raise SystemExit("budget_to_target: no SmolLM2 row has both a Table 1 average and a raw WikiText-2 perplexity")
    xs = [math.log(p) for _, p, _ in points]
    ys = [a for _, _, a in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    original = next(a for name, _, a in points if name == "a")
    needed = {points_below: math.exp(mean_x + (original - points_below - mean_y) / slope)
              for points_below in TARGETS["table1"]}  # fmt: skip
    return {"points": [{"row": n, "wikitext_raw_ppl": p, "average": a} for n, p, a in points],
            "slope_points_per_e_fold": slope, "original_average": original, "ppl_needed": needed}  # fmt: skip


STORIES_SOURCE = "stories260K across budgets"


def run_source(tag: str) -> str:
    return f"SmolLM2 {tag}, within the run"


def estimate(results: Path, tags: tuple[str, ...] = SMOLLM2_RUNS) -> dict:
    fair = read(results / SMOLLM2_FAIR)
    runs = {tag: read(results / f"real-models-smollm2-{tag}") for tag in tags}
    fits = {STORIES_SOURCE: {t: fit_power_law(c) for t, c in stories_curves(results).items()}}
    for tag, run in runs.items():
        fits[run_source(tag)] = {text: fit_power_law(curve) for text, curve in smollm2_curves(run).items()}
    table1 = table1_line([fair, *runs.values()])
    estimates = []
    for tag, run in runs.items():
        # (a′) on the run's own training text: its own row, else the fair run's (the same samples)
        softmax = row(run, "a-prime") or row(fair, "a-prime")
        sources = (STORIES_SOURCE, run_source(tag))
        estimates += run_estimates(tag, run, softmax, table1, {source: fits[source] for source in sources})
    return {"sources": {"stories260K": list(STORIES_BUDGETS), "SmolLM2": [f"real-models-smollm2-{t}" for t in tags]},
            "targets": TARGETS, "fits": fits, "table1": table1, "estimates": estimates}  # fmt: skip


def run_estimates(tag: str, run: dict, softmax: dict, table1: dict, fits: dict) -> list[dict]:
    """For one SmolLM2 run's e-transfer: every target as a perplexity, and the budget each fit names for it."""
    adapted, original = row(run, "e-transfer"), row(run, "a")
    # (text, goal, what the goal is measured against, the perplexity it asks for)
    wanted = [("in-domain", kind, f"{r:g}× (a′)", r * softmax["ppl"]["in-domain"])
              for r, kind in zip(TARGETS["in-domain"], ("target", "resolve"), strict=True)]  # fmt: skip
    for text in OOD_TEXTS:
        wanted += [(text, kind, f"{r:g}× (a)", r * original["ppl"][text])
                   for r, kind in zip(TARGETS["ood"], ("target", "resolve"), strict=True)]  # fmt: skip
    for points_below, kind in zip(TARGETS["table1"], ("target", "resolve"), strict=True):
        wanted.append(("wikitext-raw", f"table1 {kind}", f"Table 1 within {points_below:g} points",
                       table1["ppl_needed"][points_below]))  # fmt: skip
    estimates = []
    for text, kind, goal, ppl_wanted in wanted:
        gap_end = math.log(adapted["ppl"][text] / original["ppl"][text])
        gap_wanted = math.log(ppl_wanted / original["ppl"][text])
        budgets = {source: budget_for(adapted["tokens"], gap_end, gap_wanted, fit.get(text, {}).get("alpha"))
                   for source, fit in fits.items()}  # fmt: skip
        estimates.append({"run": tag, "text": text, "kind": kind, "goal": goal, "ppl_wanted": ppl_wanted,
                          "ppl_original": original["ppl"][text], "ppl_end": adapted["ppl"][text],
                          "tokens_end": adapted["tokens"], "budgets": budgets})  # fmt: skip
    return estimates


def tokens_text(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e15:
        return f"{value:.1e}".replace("e+", "e")
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def markdown(found: dict) -> str:
    lines = ["# Budget to issue 24's SmolLM2 targets, extrapolated from the committed curves", "",
             "Gap g = ln(ppl / ppl of (a) on the same tokens); g = c·N^(−α) fitted per text "
             "(`benchmarks/budget_to_target.py`, which says why and how).", "",
             "## Exponents", "", "| curve | text | α | points | tokens |", "|---|---|---:|---:|---|"]  # fmt: skip
    for source, fits in found["fits"].items():
        for text, fit in fits.items():
            alpha = "–" if fit["alpha"] is None else f"{fit['alpha']:.3f}"
            span = "–" if "tokens" not in fit else f"{tokens_text(fit['tokens'][0])}–{tokens_text(fit['tokens'][1])}"
            lines.append(f"| {source} | {text} | {alpha} | {fit['points']} | {span} |")
    line = found["table1"]
    lines += ["", "## Table 1 through perplexity", "",
              f"Average against ln(raw WikiText-2 perplexity), SmolLM2 rows below {TABLE1_PPL_CEILING:,.0f}: "
              f"{line['slope_points_per_e_fold']:.2f} points per e-fold; (a) {line['original_average']:.1f}. "
              "Perplexity needed: " + ", ".join(f"within {k:g} points: {v:.1f}" for k, v in line["ppl_needed"].items()),
              "", "| row | raw WikiText-2 | Table 1 average |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {p['row']} | {p['wikitext_raw_ppl']:.2f} | {p['average']:.1f} |" for p in line["points"]]
    for tag in dict.fromkeys(item["run"] for item in found["estimates"]):
        lines += budget_lines(tag, [item for item in found["estimates"] if item["run"] == tag])
    return "\n".join(lines) + "\n"


def budget_lines(tag: str, estimates: list[dict]) -> list[str]:
    sources = list(estimates[0]["budgets"])
    lines = ["", f"## Budgets from SmolLM2 run `{tag}` (e-transfer; all tokens of the recipe)", "",
             "| text | goal | (a) | ppl wanted | measured (tokens) | " + " | ".join(sources) + " |",
             "|---|---|---:|---:|---|" + "---|" * len(sources)]  # fmt: skip
    for item in estimates:
        cells = []
        for source in sources:
            budget = item["budgets"][source]
            if budget["why"] is None:
                cells.append(tokens_text(budget["tokens"]))
            else:
                cells.append(f"{tokens_text(budget['tokens'])} ({budget['why']})" if budget["tokens"] else budget["why"])
        lines.append(f"| {item['text']} | {item['goal']} | {item['ppl_original']:.2f} | {item['ppl_wanted']:.2f} | "
                     f"{item['ppl_end']:.2f} ({tokens_text(item['tokens_end'])}) | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def plot(found: dict, results: Path, path: Path, tags: tuple[str, ...]) -> None:
    """The gaps and their fitted power laws, one panel per curve, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {STORIES_SOURCE: stories_curves(results)}
    curves.update({run_source(tag): smollm2_curves(read(results / f"real-models-smollm2-{tag}")) for tag in tags})
    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for axis, (source, by_text) in zip(axes[0], curves.items(), strict=True):
        for text, points in by_text.items():
            shown = axis.plot([n for n, _ in points], [g for _, g in points], "o", label=text)[0]
            fit = found["fits"][source][text]
            if fit["alpha"] is not None:
                low, high = fit["tokens"]
                grid = [low * (high / low) ** (i / 20) for i in range(21)]
                axis.plot(grid, [fit["c"] * n ** -fit["alpha"] for n in grid], "-", color=shown.get_color(),
                          label=f"α = {fit['alpha']:.3f}")  # fmt: skip
        for ratio in (1.5, 3.0):
            axis.axhline(math.log(ratio), color="gray", ls=":", lw=0.8)
        xlabel = "recipe tokens" if "across" in source else "distillation tokens"
        axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="gap ln(ppl / ppl of (a))", title=source)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def write(found: dict, folder: Path, results: Path, tags: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(found, indent=1)), ("results.md", markdown(found))):
        with atomic_file(folder / name) as handle:
            handle.write(text)
    plot(found, results, folder / "curves.png", tags)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the committed real-model results are")
    parser.add_argument("--out", type=Path, default=RESULTS / "budget-to-target", help="folder for the tables")
    parser.add_argument("--smollm2", nargs="+", default=list(SMOLLM2_RUNS), metavar="TAG",
                        help="SmolLM2 runs (real-models-smollm2-TAG/) whose endpoints and curves to read")  # fmt: skip
    args = parser.parse_args(argv)
    tags = tuple(args.smollm2)
    found = estimate(args.results, tags)
    write(found, args.out, args.results, tags)
    print(markdown(found))
    return found


if __name__ == "__main__":
    main()
