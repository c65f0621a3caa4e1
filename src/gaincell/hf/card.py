"""The model card (``README.md``) of a saved gain-cell model, as Hugging Face models carry one.

A researcher who finds a saved folder should see, without running anything, which chip it was
adapted to, by which recipe, on how many tokens, and what it measured. The card is written with
``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` (YAML metadata + markdown), so the hub and
its tools read it as any other card.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

CARD_FILE = "README.md"
PAPER = "Leroux et al., Nature Computational Science 5, 813–824 (2025), arXiv 2409.19315"


def model_card(
    hardware: dict[str, Any] | None,
    *,
    base_model: str | None = None,
    recipe: dict[str, Any] | None = None,
    stages: dict[str, dict] | None = None,
    results: dict[str, Any] | None = None,
) -> ModelCard:
    """A card from what is known: the chip's config, the recipe (as its TOML tables), each stage's summary
    (tokens, steps, losses) and any measured results (``name -> value``, the name saying what was measured)."""
    data = ModelCardData(
        library_name="gaincell",
        base_model=base_model if base_model and "/" in base_model and not base_model.startswith((".", "/")) else None,
        tags=["gain-cell", "analog-in-memory-computing", "attention"],
    )
    sections = [
        "# Gain-cell attention model\n",
        f"Attention simulated on analog gain-cell memories ({PAPER}), saved by gaincell as its own "
        "architecture (`model_type` `gaincell`). `gaincell.load(folder)` gives it back, `gaincell eval` and "
        "`gaincell generate` read it; with gaincell installed, `AutoModelForCausalLM.from_pretrained(folder, "
        "trust_remote_code=True)` and `lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True` "
        "load the same model (the folder's `modeling_gaincell.py` imports gaincell); without `trust_remote_code` "
        "transformers refuses the folder.\n",
    ]
    if base_model:
        sections.append(f"Adapted from `{base_model}`.\n")
    if stages:
        sections += ["## Adaptation\n", _stage_table(stages)]
    if results:
        sections += ["## Results\n", *(f"- {name}: {value}" for name, value in results.items()), ""]
    if hardware:
        sections += ["## Hardware\n", _json_block(hardware)]
    if recipe:
        sections += ["## Recipe\n", _json_block(recipe)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


def _stage_table(stages: dict[str, dict]) -> str:
    rows = ["| stage | steps | tokens | last loss | eval loss |", "|---|---:|---:|---:|---:|"]
    for name, summary in stages.items():
        cells = [summary.get(key) for key in ("steps", "tokens", "loss", "eval_loss")]
        rows.append(f"| {name} | " + " | ".join(_cell(value) for value in cells) + " |")
    total = sum(summary.get("tokens") or 0 for summary in stages.values())
    return "\n".join(rows) + (
        f"\n\n{total:,} training tokens in all. The eval loss is each stage's own objective on held-out text "
        "(attention transfer: its layer error; the others: language-model cross-entropy, nats per token).\n"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_block(value: dict) -> str:
    return "```json\n" + json.dumps(value, indent=1, default=str) + "\n```\n"
