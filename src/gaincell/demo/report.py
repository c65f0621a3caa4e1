"""What ``gaincell demo`` shows: its two plots and ``report.md`` (:mod:`gaincell.demo.experiment` runs it)."""

from __future__ import annotations

from pathlib import Path


def plots(folder: Path, curves: dict[str, list[tuple[int, float]]], rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            axis.plot(steps, losses, label=label)
    axis.set(xlabel="optimizer step (of that run)", ylabel="training loss (nats/token)", title="Training runs")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "loss_curves.png", dpi=120)
    plt.close(figure)

    # Bars compare magnitudes, so the axis is linear from zero: a bar twice as tall is twice the perplexity.
    figure, axis = plt.subplots(figsize=(8, 4))
    position = {row["key"]: index for index, row in enumerate(rows)}  # the table's order, whatever the colour
    for kind, colour, keys in (("softmax", "#4c72b0", "ab"), ("gain cells", "#dd8452", "cdef")):
        chosen = [row for row in rows if row["key"][0] in keys]
        bars = axis.bar([position[row["key"]] for row in chosen], [row["ppl"] for row in chosen], color=colour, label=kind)
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_xticks(range(len(rows)), [row["key"] for row in rows])
    axis.set(ylabel="perplexity (held-out, lower is better)", title="Perplexity per row of the table", ylim=(0, None))
    axis.legend(title="attention")
    figure.tight_layout()
    figure.savefig(folder / "perplexity.png", dpi=120)
    plt.close(figure)
    return ["loss_curves.png", "perplexity.png"]


def verbatim(text: str) -> list[str]:
    """``text`` as a fenced block: generated text has newlines, ``*`` and ``>`` that would break a quote or
    turn into markup; the fence is longer than any run of backticks inside it."""
    ticks = 3
    while "`" * ticks in text:
        ticks += 1
    return ["`" * ticks + "text", *text.splitlines(), "`" * ticks]


def markdown(results: dict, images: list[str]) -> str:
    config = results["config"]
    lines = [
        "# gaincell demo",
        "",
        f"Corpus: {results['corpus']} — {results['train_tokens']:,} training tokens, "
        f"{results['eval_tokens']:,} held-out tokens. Model: GPT-2 architecture, {config['layers']} layers, "
        f"{config['heads']} heads of {config['embedding'] // config['heads']}, context {config['context']}; "
        f"gain-cell window M = {config['window']}, `paper` preset (SPEC §3.4). Run time {results['seconds'] / 60:.1f} min.",
        "",
        "| | model | perplexity |",
        "|---|---|---:|",
    ]
    lines += [f"| ({row['key']}) | {row['label']} | {row['ppl']:.2f} |" for row in results["perplexity"]]
    lines += ["", "Between (c) and (e):", ""]
    lines += [f"- {row['label']}: {row['ppl']:.2f}" for row in results["diagnostics"]]
    checks = results["checks"]
    lines += [
        "",
        f"- (e) better than (c), (d) and (f): **{'yes' if checks['e_better_than_c_d_f'] else 'no'}**",
        f"- (e) within 25% of (b′), the sliding-window model given the same fine-tuning budget: "
        f"**{'yes' if checks['e_within_25_percent_of_b_prime'] else 'no'}**",
        "",
    ]
    lines += [f"![{name}]({name})" for name in images]
    sample = results["sample"]
    lines += ["", "## Generated through the gain-cell memory", "", "Prompt (the held-out text's first 16 tokens):", ""]
    lines += [*verbatim(sample["prompt"]), "", "Continuation, sampled by the adapted model (e):", ""]
    lines += [*verbatim(sample["continuation"]), ""]
    lines += ["## Cost model (SPEC §6) for this attention shape", ""] + [f"- {line}" for line in results["hardware_summary"]]
    return "\n".join(lines) + "\n"
