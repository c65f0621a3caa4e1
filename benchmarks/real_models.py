"""Real pre-trained LLMs on gain-cell hardware (issue 9): the paper's recipe vs attention transfer.

For each model, rows (a) original, (b) sliding-window softmax, (c) the chip and its linear model
with the pre-trained weights swapped in, (d) calibration only, (e-paper) linear + calibration +
nonlinear stages and (e-transfer) data-driven init + attention transfer + distillation, the two (e)
rows given the same token budget. Each row: tokens trained on, wall time, held-out perplexity, and
for (e) a short sample generated through the gain-cell memory. Writes JSON and a markdown table.

- ``stories``: stories260K (../shared/data/models/stories260K), M = 64. Its text: stories sampled
  from the original model (temperature 1, from BOS, 256 tokens each); the last 10 % are held out
  and never trained on. Perplexity: context 256, stride 128.
- ``smollm2``: SmolLM2-135M-Instruct (benchmarks/fetch_models.py), M = 512, trained on
  wikitext2-valid; perplexity on the first 4,096 tokens of wikitext2-test, context 512, stride 256.

    python benchmarks/real_models.py stories                # 13 min on a shared 2-core CPU
    python benchmarks/real_models.py smollm2 --budget 2000000
    python benchmarks/real_models.py smollm2 --smoke        # a few steps: shows it runs end to end

Not run in CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import gaincell
from gaincell.adapt import CalibrationConfig, adapt, calibrate, linear_config, recipe_from_dict
from gaincell.checkpoint import load_pretrained, load_pretrained_tokenizer
from gaincell.convert import convert
from gaincell.evaluate import strided_perplexity
from gaincell.layer import gain_cell_layers

ROOT = Path(__file__).resolve().parents[1]


def stories_setup(args) -> dict:
    """Sample stories from the original model; 90 % train (text files), 10 % held out."""
    path = args.data / "models" / "stories260K"
    model, tokenizer = load_pretrained(path), load_pretrained_tokenizer(path)
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for _ in range(args.stories // 64):
            bos = torch.full((64, 1), tokenizer.bos_token_id)
            rows.append(
                model.generate(bos, do_sample=True, max_new_tokens=255, pad_token_id=0, attention_mask=torch.ones_like(bos))
            )
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in torch.cat(rows)]
    held = max(8, len(texts) // 10)
    folder = args.work / "stories-text"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n\n".join(texts[:-held]))
    eval_ids = torch.tensor(tokenizer("\n\n".join(texts[-held:]), add_special_tokens=False)["input_ids"])
    return {"model": str(path), "gguf_file": None, "train_text": str(folder / "train.txt"), "eval_ids": eval_ids,
            "window": 64, "context": 256, "stride": 128, "block_size": 256, "prompt": "Once upon a time",
            "eval_text": f"{held} held-out stories sampled from the original model ({len(eval_ids)} tokens)"}  # fmt: skip


def smollm2_setup(args) -> dict:
    from fetch_models import fetch_smollm2

    gguf = fetch_smollm2(args.cache)
    tokenizer = load_pretrained_tokenizer(gguf)
    text = (args.data / "wikitext2-test.txt").read_text()
    eval_ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: args.eval_tokens])
    train_text = str(args.data / "wikitext2-valid.txt")
    return {"model": str(gguf), "gguf_file": None, "train_text": train_text, "eval_ids": eval_ids, "window": 512,
            "context": 512, "stride": 256, "block_size": 512, "prompt": "The history of the",
            "eval_text": f"first {len(eval_ids)} tokens of wikitext2-test"}  # fmt: skip


def perplexity(model, setup) -> float:
    return strided_perplexity(model, setup["eval_ids"], setup["context"], setup["stride"], batch_size=4)["ppl"]


def sample(model, tokenizer, prompt: str, tokens: int = 40) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def stage_table(steps: int, batch: int, **extra) -> dict:
    return {"max_steps": steps, "batch_size": batch, "grad_accum": 1, "warmup_steps": max(1, steps // 20), "eval_every": 0,
            "checkpoint_every": max(1, steps // 4), "log_every": 10, "mixed_precision": "no", **extra}  # fmt: skip


def recipes(setup, args) -> dict[str, dict]:
    """Both recipes spend ``args.budget`` tokens: paper 20 % linear / 80 % nonlinear (about the paper's
    3,000 : 13,000 steps); transfer ``args.transfer_share`` on attention transfer, the rest distillation."""
    per_step = args.batch * setup["block_size"]
    steps = max(2, args.budget // per_step)
    hardware = {"preset": "paper", "window": setup["window"]}
    data = {"text": setup["train_text"], "block_size": setup["block_size"], "eval_fraction": 0.02, "eval_blocks": 4}
    base = {"model": setup["model"], "hardware": hardware, "data": data}
    linear_steps = max(1, steps // 5)
    transfer_steps = max(1, round(steps * args.transfer_share))
    return {
        "e-paper": {**base, "stages": ["linear", "calibrated", "nonlinear"],
                    "calibration": {"batch_size": args.batch, "max_iterations": args.calibration_iterations},
                    "linear": stage_table(linear_steps, args.batch, lr=args.lr),
                    "nonlinear": stage_table(steps - linear_steps, args.batch, lr=args.lr)},
        "e-transfer": {**base, "stages": ["initialised", "transfer", "distill"],
                       "initialise": {"batch_size": args.batch, "batches": max(1, 32 // args.batch)},
                       "transfer": stage_table(transfer_steps, args.batch, lr=args.transfer_lr, weight_decay=0.0),
                       "distill": stage_table(steps - transfer_steps, args.batch, lr=args.lr)},
    }  # fmt: skip


def calibration_only(pretrained, setup, hardware, args):
    """(d): targets from the untrained linear model over a few training forwards, then calibration."""
    from gaincell.adapt import recipe_blocks

    recipe = recipe_from_dict(
        {"model": setup["model"], "data": {"text": setup["train_text"], "block_size": setup["block_size"]}}
    )
    blocks, _ = recipe_blocks(recipe, load_pretrained_tokenizer(setup["model"]))
    model = convert(copy.deepcopy(pretrained), linear_config(hardware)).train()
    for cell in gain_cell_layers(model):
        cell.recording = True
    with torch.no_grad():
        for start in range(0, 4 * args.batch, args.batch):
            model(input_ids=blocks[start : start + args.batch])
    for cell in gain_cell_layers(model):
        cell.recording = False
    calibration = CalibrationConfig(batch_size=args.batch, max_iterations=args.calibration_iterations)
    calibrate(model, blocks[: args.batch], calibration, hardware)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("stories", "smollm2"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gaincell" / "models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gaincell-real-models"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--budget", type=int, help="training tokens per (e) recipe")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=6e-3, help="peak lr of every fine-tuning stage of both recipes")
    parser.add_argument("--transfer-lr", type=float, default=3e-3)
    parser.add_argument("--transfer-share", type=float, default=0.25)
    parser.add_argument("--stories", type=int, default=2048, help="stories to sample (stories260K)")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--calibration-iterations", type=int, default=100, help="the paper's 100; fewer in --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: shows the pipeline runs end to end")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.budget is None:
        args.budget = {"stories": 900_000, "smollm2": 2_000_000}[args.model]
    if args.smoke:
        args.budget, args.stories, args.eval_tokens = (
            args.batch * 2 * (512 if args.model == "smollm2" else 256) * 3,
            128,
            1024,
        )
        args.calibration_iterations = 5
    run(args)


def run(args) -> None:
    started = time.perf_counter()
    setup = (stories_setup if args.model == "stories" else smollm2_setup)(args)
    tokenizer = load_pretrained_tokenizer(setup["model"])
    pretrained = load_pretrained(setup["model"])
    hardware = gaincell.preset("paper", window=setup["window"])
    rows: list[dict] = []

    def measure(row: str, what: str, model, tokens: int = 0, wall: float = 0.0, text: str | None = None) -> None:
        rows.append(
            {
                "row": row,
                "what": what,
                "tokens": tokens,
                "wall_s": round(wall, 1),
                "ppl": perplexity(model, setup),
                "sample": text,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    measure("a", "original", pretrained)
    measure(
        "b",
        f"sliding-window softmax, M = {setup['window']}",
        convert(copy.deepcopy(pretrained), "softmax", window=setup["window"]),
    )
    measure("c", "paper model, weights swapped in", convert(copy.deepcopy(pretrained), hardware))
    measure("c-linear", "linear model, weights swapped in", convert(copy.deepcopy(pretrained), linear_config(hardware)))
    measure("d", "calibration only", calibration_only(pretrained, setup, hardware, args))
    for row, recipe in recipes(setup, args).items():
        output = args.work / f"{args.model}-{row}"
        if output.exists():
            import shutil

            shutil.rmtree(output)
        began = time.perf_counter()
        summary = adapt(recipe_from_dict({**recipe, "output_dir": str(output)}))
        wall = time.perf_counter() - began
        tokens = sum(summary[name].get("tokens", 0) for name in recipe["stages"])
        model = gaincell.load(output / recipe["stages"][-1] / "model")
        measure(row, " + ".join(recipe["stages"]), model, tokens, wall, sample(model, tokenizer, setup["prompt"]))
    write(args, setup, rows, time.perf_counter() - started)


def write(args, setup, rows, total: float) -> None:
    name = f"real-models-{args.model}{'-smoke' if args.smoke else ''}"
    meta = {"model": args.model, "source": setup["model"], "window": setup["window"], "context": setup["context"],
            "stride": setup["stride"], "eval": setup["eval_text"], "train": setup["train_text"],
            "budget_tokens": args.budget, "settings": {k: str(v) for k, v in vars(args).items()},
            "total_wall_s": round(total, 1), "torch": torch.__version__}  # fmt: skip
    (args.out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    title = f"# {args.model}: {setup['eval_text']}, context {setup['context']}, stride {setup['stride']}"
    lines = [
        f"{title}, M = {setup['window']}",
        "",
        "| row | what | tokens | wall (s) | perplexity |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['row']} | {r['what']} | {r['tokens']:,} | {r['wall_s']} | {r['ppl']:,.2f} |" for r in rows]
    lines += ["", "Samples generated through the gain-cell memory (greedy):", ""]
    lines += [f"- **{r['row']}**: {r['sample']!r}" for r in rows if r["sample"]]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
