"""Real pre-trained LLMs on gain-cell hardware: the paper's recipe vs attention transfer, measured fairly.

For each model, rows (a) original, (a′) the original fine-tuned with the (e) recipes' tokens (softmax),
(b) sliding-window softmax, (c) the chip and its linear model
with the pre-trained weights swapped in, (d) calibration only, (e-paper) linear + calibration +
nonlinear stages and (e-transfer) data-driven init + attention transfer + distillation, the two (e)
rows given the same token budget. Each row: tokens trained on, wall time, perplexity on the in-domain
text and on texts no recipe trained on (Python's docs, Tiny Shakespeare, raw WikiText-2 test), and a
short greedy sample. Writes JSON and a markdown table (``--tag`` names them).

- ``stories``: stories260K (models/stories260K in the shared data folder, ``--data``), M = 64. Its text: stories sampled
  from the original model (temperature 1, from BOS, 256 tokens each); the last 10 % are held out
  and never trained on. Perplexity: context 256, stride 128.
- ``smollm2``: SmolLM2-135M-Instruct (benchmarks/fetch_models.py), M = 512, trained on
  wikitext2-valid; perplexity on the first 4,096 tokens of wikitext2-test, context 512, stride 256.

    python benchmarks/real_models.py stories                # 13 min on a shared 2-core CPU
    python benchmarks/real_models.py stories --stories 8192 --budget 3600000   # the recorded run, ~25 min
    python benchmarks/real_models.py smollm2 --budget 2000000
    python benchmarks/real_models.py smollm2 --smoke        # a few steps: shows it runs end to end

On a GPU (``benchmarks/device_run.py``'s part f): ``--device cuda`` puts the original, every row's model
and every evaluation there (the recipes' initialisation, calibration and teachers too),
``--mixed-precision bf16`` trains under bf16 autocast, ``--sample-batch`` samples stories260K's text in
larger batches there, ``--eval-batch`` scores more windows at once and ``--checkpoints 1`` keeps one
checkpoint per stage. Their defaults are the CPU runs recorded so far.

A row killed part-way (a session ends) continues with ``--resume`` from its checkpoints in ``--work``; one
that finished is read back with ``--reuse``. ``--untie-embeddings`` trains every whole-model stage, (a′) too,
with the output head apart from the input embedding (``TrainConfig.untie_embeddings``).

Not run in CI (its row logic is: tests/benchmarks/test_real_models_rows.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import gaincell
from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.data import default_corpus_text
from gaincell.adaptation.recipe import recipe_from_dict
from gaincell.adaptation.settings import CalibrationConfig
from gaincell.adaptation.stages import adapt, linear_config
from gaincell.atomic import atomic_file
from gaincell.datadir import data_dir
from gaincell.devices import model_device
from gaincell.evaluation.perplexity import strided_perplexity
from gaincell.evaluation.tasks import MAIN_METRICS, PAPER_TASKS
from gaincell.hf.convert import convert
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load_pretrained, load_pretrained_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("a", "a-prime", "b", "c", "c-linear", "d", "e-paper", "e-transfer")


def stories_setup(args) -> dict:
    """Sample stories from the original model; 90 % train (text files), 10 % held out (both kept in --work:
    a rerun with the same --stories reads them instead of sampling again). ``--sample-batch`` stories are
    drawn at once on ``--device`` (64 on the CPU by default: other batches or devices draw other stories)."""
    path = args.data / "models" / "stories260K"
    model, tokenizer = load_pretrained(path), load_pretrained_tokenizer(path)
    batch, device = getattr(args, "sample_batch", 64), getattr(args, "device", None)
    folder, held = args.work / "stories-text", max(8, args.stories // batch * batch // 10)
    marker = str(args.stories) if (batch, device) == (64, None) else f"{args.stories} in batches of {batch} on {device}"
    if not (folder / "held-out.txt").is_file() or (folder / "stories.txt").read_text() != marker:
        torch.manual_seed(0)
        model.to(device or "cpu")
        rows = []
        with torch.no_grad():
            for _ in range(args.stories // batch):
                bos = torch.full((batch, 1), tokenizer.bos_token_id, device=model_device(model))
                rows.append(model.generate(bos, do_sample=True, max_new_tokens=255, pad_token_id=0,
                                           attention_mask=torch.ones_like(bos)).cpu())  # fmt: skip
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in torch.cat(rows)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stories.txt").write_text(marker)
        (folder / "train.txt").write_text("\n\n".join(texts[:-held]))
        (folder / "held-out.txt").write_text("\n\n".join(texts[-held:]))
    held_text = (folder / "held-out.txt").read_text()
    eval_ids = torch.tensor(tokenizer(held_text, add_special_tokens=False)["input_ids"])
    eval_ids = eval_ids[: getattr(args, "in_domain_tokens", None)]  # None: every held-out token
    return {"model": str(path), "gguf_file": None, "train_text": str(folder / "train.txt"), "eval_ids": eval_ids,
            "window": 64, "context": 256, "stride": 128, "block_size": 256, "prompt": "Once upon a time",
            "eval_text": f"{held} held-out stories sampled from the original model ({len(eval_ids)} tokens)"}  # fmt: skip


def smollm2_setup(args) -> dict:
    """SmolLM2 from its GGUF; with ``--dequantised DIR``, dequantised once into DIR (model and tokenizer,
    ``save_pretrained``), which every row then loads: a GGUF load takes seconds to tens of seconds, and an
    (e) row loads the original three times."""
    from fetch_models import fetch_smollm2

    gguf = fetch_smollm2(args.cache)
    if getattr(args, "dequantised", None) is not None:
        gguf = dequantised_copy(gguf, args.dequantised)
    tokenizer = load_pretrained_tokenizer(gguf)
    text = (args.data / "wikitext2-test.txt").read_text()
    eval_ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: args.eval_tokens])
    train_text = str(args.data / "wikitext2-valid.txt")
    return {"model": str(gguf), "gguf_file": None, "train_text": train_text, "eval_ids": eval_ids, "window": 512,
            "context": 512, "stride": 256, "block_size": 512, "prompt": "The history of the",
            "eval_text": f"first {len(eval_ids)} tokens of wikitext2-test"}  # fmt: skip


def dequantised_copy(gguf: Path, folder: Path) -> Path:
    """``gguf`` dequantised (float32) and saved, with its tokenizer, as a plain transformers folder."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")  # renamed once whole
        load_pretrained_tokenizer(gguf).save_pretrained(partial)
        load_pretrained(gguf).save_pretrained(partial)
        partial.replace(folder)
    return folder


def own_training_text(args, setup, tokenizer) -> None:
    """``--train-text FILE`` (e.g. benchmarks/sample_corpus.py's samples of the original model): its
    paragraphs split 90/10 by a fixed seed; the 10 % become the in-domain evaluation text."""
    import random

    paragraphs = [p for p in args.train_text.read_text().split("\n\n") if p.strip()]
    random.Random(0).shuffle(paragraphs)
    held = max(8, len(paragraphs) // 10)
    folder = args.work / f"{args.model}-own-text"
    folder.mkdir(parents=True, exist_ok=True)
    train = "\n\n".join(paragraphs[held:])
    if not (folder / "train.txt").is_file() or (folder / "train.txt").read_text() != train:
        with atomic_file(folder / "train.txt") as handle:  # processes side by side may be reading it
            handle.write(train)
    ids = tokenizer("\n\n".join(paragraphs[:held]), add_special_tokens=False)["input_ids"][: args.eval_tokens]
    setup.update(train_text=str(folder / "train.txt"), eval_ids=torch.tensor(ids),
                 eval_text=f"{len(ids)} held-out tokens of {args.train_text.name} (90/10 paragraph split)")  # fmt: skip


def evaluation_texts(args, setup, tokenizer) -> dict[str, torch.Tensor]:
    """The in-domain text and texts no recipe trains on: Python's bundled docs (its last tokens, as the
    issue measured), Tiny Shakespeare (first tokens) and raw WikiText-2 test (first tokens, no ``<unk>``)."""
    n = args.eval_tokens

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])

    return {
        "in-domain": setup["eval_ids"],
        "pydoc": ids(default_corpus_text())[-n:],
        "shakespeare": ids((args.data / "tinyshakespeare.txt").read_text()[: 40 * n])[:n],
        "wikitext-raw": ids((args.data / "tasks" / "wikitext" / "wiki.test.raw").read_text()[: 40 * n])[:n],
    }


#: Table 1's columns: the metric each task is read by (length-normalised where lm-eval offers it), then WikiText-2.
TABLE1 = {task: MAIN_METRICS[task] for task in PAPER_TASKS}


def table1(model, tokenizer, args, max_length: int) -> dict:
    """lm-eval's six tasks (and WikiText-2 word perplexity when ``--tasks table1``), from the shared files,
    every request at most ``max_length`` tokens: the training blocks' length, past which every fine-tuned
    row, softmax ones included, degrades (docs/real-models.md, "Positions")."""
    from gaincell.evaluation.harness import run_tasks

    table = run_tasks(model, tokenizer, args.tasks, limit=args.task_limit, batch_size=8, max_length=max_length)
    row = {task: table["tasks"][task][metric] for task, metric in TABLE1.items() if task in table["tasks"]}
    if len(row) == len(TABLE1):
        row["average"] = sum(row.values()) / len(TABLE1)
    if "wikitext" in table["tasks"]:
        row["wikitext_word_ppl"] = table["tasks"]["wikitext"]["word_perplexity,none"]
    return {"limit": args.task_limit, "max_length": max_length, "columns": row, "seconds": table["seconds"]}


def perplexities(model, setup) -> dict[str, float]:
    """Every text at the setup's context, ``eval_batch`` windows at a time (4 unless set: the sums do not
    depend on it); with ``--long-context N`` the in-domain text also at context N (positions the training
    blocks never reached: docs/real-models.md, "Positions")."""
    batch = setup.get("eval_batch", 4)
    scores = {name: strided_perplexity(model, ids, setup["context"], setup["stride"], batch_size=batch)["ppl"]
              for name, ids in setup["texts"].items()}  # fmt: skip
    if setup.get("long_context"):
        long = setup["long_context"]
        scores[f"in-domain@{long}"] = strided_perplexity(model, setup["texts"]["in-domain"], long, long // 2, batch)["ppl"]
    return scores


class OutOfDomainCurve:
    """A training callback (``--ood-curve N``): at each evaluation of every training stage, the model's
    perplexity on the first N tokens of each text no recipe trains on, logged beside the held-out loss as
    ``ood_ppl`` (issue 24: a recipe that learns its corpus's format can improve in domain while it gets
    worse everywhere else, which only these curves show while it happens)."""

    def __init__(self, setup, tokens: int):
        self.texts = {name: ids[:tokens] for name, ids in setup["texts"].items() if name != "in-domain"}
        self.context, self.stride = min(setup["context"], tokens), min(setup["stride"], tokens // 2)
        self.batch = setup.get("eval_batch", 4)

    def on_eval(self, step: int, model, metrics: dict) -> None:
        metrics["ood_ppl"] = self.scores(getattr(model, "student", model))  # transfer and distillation wrap it

    def scores(self, model) -> dict[str, float]:
        """``model``'s perplexity on each text's first N tokens (row (a) gets them too: the curves' baseline)."""
        training = model.training
        model.eval()
        with torch.no_grad():
            scores = {name: strided_perplexity(model, ids, self.context, self.stride, batch_size=self.batch)["ppl"]
                      for name, ids in self.texts.items()}  # fmt: skip
        model.train(training)
        return scores


def callbacks(args, setup) -> list:
    """The training callbacks of every stage this run trains: the out-of-domain curve when asked."""
    return [OutOfDomainCurve(setup, args.ood_curve)] if args.ood_curve else []


def softmax_fine_tuned(pretrained, recipe: dict, output: Path, args, callbacks=()):
    """(a′): the original model, its own attention, fine-tuned on the (e) recipes' blocks for their whole
    budget (one LM stage, the whole-model lr and schedule of their stages): what the tokens alone buy."""
    from gaincell.adaptation.settings import TrainConfig
    from gaincell.adaptation.stages import recipe_blocks
    from gaincell.adaptation.state import latest_checkpoint
    from gaincell.adaptation.train import train

    recipe = recipe_from_dict({**recipe, "output_dir": str(output)})
    train_blocks, eval_blocks = recipe_blocks(recipe, load_pretrained_tokenizer(recipe.model))
    blocks = sum(getattr(recipe, stage).max_steps * getattr(recipe, stage).batch_size for stage in ("transfer", "distill"))
    steps = blocks // args.batch  # the recipes' tokens (the transfer may step in smaller batches: --transfer-batch)
    config = TrainConfig(**stage_settings(steps, args.batch, **gpu_settings(args), lr=args.lr,
                                          position_offset=args.position_offset,
                                          untie_embeddings=getattr(args, "untie_embeddings", False)))  # fmt: skip
    result = train(copy.deepcopy(pretrained), train_blocks, eval_blocks, config, output / "a-prime",
                   resume=latest_checkpoint(output / "a-prime") is not None, callbacks=callbacks)  # fmt: skip
    wall = stage_seconds(output, "a-prime")  # train keeps the clock across resumes
    return result.model.eval(), result.step * args.batch * int(train_blocks.shape[1]), wall


def sample(model, tokenizer, prompt: str, tokens: int = 40) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model_device(model))
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def stage_settings(steps: int, batch: int, checkpoints: int = 4, **extra) -> dict:
    """One training stage; it evaluates 8 times (the held-out curve) and checkpoints ``checkpoints`` times
    (the last at the end); full precision unless ``extra`` says otherwise."""
    return {"max_steps": steps, "batch_size": batch, "grad_accum": 1, "warmup_steps": max(1, steps // 20),
            "eval_every": max(1, steps // 8), "checkpoint_every": max(1, steps // checkpoints), "log_every": 10,
            "mixed_precision": "no", **extra}  # fmt: skip


def gpu_settings(args) -> dict:
    """What ``--mixed-precision``, ``--checkpoints`` and ``--quiet`` change in every training stage (nothing by
    default)."""
    return {"mixed_precision": args.mixed_precision, "checkpoints": args.checkpoints, "progress_bar": not args.quiet}


def recipes(setup, args) -> dict[str, dict]:
    """Both recipes spend ``args.budget`` tokens: paper 20 % linear / 80 % nonlinear (about the paper's
    3,000 : 13,000 steps); transfer ``args.transfer_share`` on attention transfer, the rest distillation; the
    transfer's tokens in steps of ``--transfer-batch`` blocks (default ``--batch``: the transfer needs steps
    more than tokens, docs/real-models.md).
    Every training stage shifts its blocks' positions by up to ``--position-offset``."""

    def stage_table(steps: int, batch: int, **extra) -> dict:
        return stage_settings(steps, batch, position_offset=args.position_offset, **gpu_settings(args), **extra)

    per_step = args.batch * setup["block_size"]
    steps = max(2, args.budget // per_step)
    hardware = {"preset": "paper", "window": setup["window"]}
    data = {"text": setup["train_text"], "block_size": setup["block_size"], "eval_fraction": 0.02, "eval_blocks": 8}
    base = {"model": setup["model"], "hardware": hardware, "data": data}
    linear_steps = max(1, steps // 5)
    transfer_steps = max(1, round(steps * args.transfer_share))  # in steps of args.batch: the budget's share
    transfer_batch = args.transfer_batch or args.batch
    untied = {"untie_embeddings": True} if getattr(args, "untie_embeddings", False) else {}  # whole-model stages
    return {
        "e-paper": {**base, "stages": ["linear", "calibrated", "nonlinear"],
                    "calibration": {"batch_size": args.batch, "max_iterations": args.calibration_iterations},
                    "linear": stage_table(linear_steps, args.batch, lr=args.lr, **untied),
                    "nonlinear": stage_table(steps - linear_steps, args.batch, lr=args.lr, **untied)},
        "e-transfer": {**base, "stages": ["initialised", "transfer", "distill"],
                       "initialise": {"batch_size": args.batch, "batches": max(1, 32 // args.batch)},
                       "transfer": stage_table(transfer_steps * args.batch // transfer_batch, transfer_batch,
                                               lr=args.transfer_lr, weight_decay=0.0),
                       "distill": stage_table(steps - transfer_steps, args.batch, lr=args.lr,
                                              lm_weight=args.lm_weight, kd_weight=1.0, **untied)},
    }  # fmt: skip


def calibration_only(pretrained, setup, hardware, args):
    """(d): targets from the untrained linear model over a few training forwards, then calibration."""
    from gaincell.adaptation.stages import recipe_blocks

    recipe = recipe_from_dict(
        {"model": setup["model"], "data": {"text": setup["train_text"], "block_size": setup["block_size"]}}
    )
    blocks, _ = recipe_blocks(recipe, load_pretrained_tokenizer(setup["model"]))
    model = convert(copy.deepcopy(pretrained), linear_config(hardware)).train()
    for cell in gain_cell_layers(model):
        cell.recording = True
    with torch.no_grad():
        for start in range(0, 4 * args.batch, args.batch):
            model(input_ids=blocks[start : start + args.batch].to(model_device(model)))
    for cell in gain_cell_layers(model):
        cell.recording = False
    calibration = CalibrationConfig(batch_size=args.batch, max_iterations=args.calibration_iterations)
    calibrate(model, blocks[: args.batch], calibration, hardware)
    return model.eval()


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("stories", "smollm2"))
    parser.add_argument(
        "--data", type=Path, default=data_dir(), help="the shared data folder (default: $GAINCELL_DATA, else ../shared/data)"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gaincell" / "models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gaincell-real-models"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results",
        help="where each experiment gets its folder, real-models-MODEL-TAG/ (default: benchmarks/results)",
    )  # fmt: skip
    parser.add_argument("--budget", type=int, help="training tokens per (e) recipe")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=6e-3, help="peak lr of every fine-tuning stage of both recipes")
    parser.add_argument("--transfer-lr", type=float, default=3e-3)
    parser.add_argument("--transfer-share", type=float, default=0.25)
    parser.add_argument("--transfer-batch", type=int, default=None,
                        help="blocks per step of the attention transfer, a divisor of --batch (default: --batch): "
                             "the same tokens in more steps")  # fmt: skip
    parser.add_argument("--stories", type=int, default=2048, help="stories to sample (stories260K)")
    parser.add_argument("--train-text", type=Path, help="train on this file (90 %%) instead; its other 10 %% is in-domain")
    parser.add_argument(
        "--untie-embeddings",
        action="store_true",
        help="every whole-model stage, (a′) too, trains the output head apart from the input embedding",
    )
    parser.add_argument("--lm-weight", type=float, default=1.0, help="distillation's LM-loss weight (0: logits only)")
    parser.add_argument("--tasks", help="also run lm-eval tasks on every row: 'paper' (six) or 'table1' (+ WikiText-2)")
    parser.add_argument("--task-limit", type=int, default=1000, help="items per task (default 1,000; 0: all)")
    parser.add_argument("--tag", default="fair", help="suffix of the experiment's folder (real-models-MODEL-TAG/)")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument(
        "--position-offset",
        type=int,
        default=0,
        help="training stages shift block positions by a random 0..N (TrainConfig.position_offset)",
    )
    parser.add_argument("--long-context", type=int, help="also score the in-domain text at this context")
    parser.add_argument("--calibration-iterations", type=int, default=100, help="the paper's 100; fewer in --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: shows the pipeline runs end to end")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="an (e) row whose recipe already finished in --work (wall_s.json there) is measured, not rerun",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="an (e) row interrupted in --work continues from its checkpoints (same settings), "
        "not from scratch; (a′) always does",
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="rows to run (default all); rows already in the JSON are kept, so two processes "
                        "can run e.g. 'a b c c-linear d e-paper' and 'e-transfer' side by side")  # fmt: skip
    parser.add_argument("--device", help="put the models and evaluations there, e.g. cuda (default: as loaded, the CPU; "
                        "training where accelerate runs)")  # fmt: skip
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16", "auto"),
                        help="every training stage's autocast (default no: full precision)")  # fmt: skip
    parser.add_argument("--sample-batch", type=int, default=64, help="stories260K's stories sampled at once")
    parser.add_argument("--in-domain-tokens", type=int,
                        help="stories260K: score the first N held-out tokens (default: all)")  # fmt: skip
    parser.add_argument("--eval-batch", type=int, default=4, help="perplexity windows scored at once")
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints per training stage (the last at its end)")
    parser.add_argument("--ood-curve", type=int, default=0, metavar="N",
                        help="at every evaluation of a training stage, also score the first N tokens of each text "
                             "no recipe trains on (the out-of-domain curves; default 0: off)")  # fmt: skip
    parser.add_argument("--dequantised", type=Path, help="SmolLM2: dequantise the GGUF once into this folder, load it there")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (a log of thousands of steps stays readable)")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with its defaults filled in (the model's budget; --smoke's sizes)."""
    args = parser().parse_args(argv)
    args.task_limit = args.task_limit or None
    if args.transfer_batch is not None and (args.transfer_batch < 1 or args.batch % args.transfer_batch):
        parser().error(f"--transfer-batch must be a divisor of --batch {args.batch}, got {args.transfer_batch}")
    if args.budget is None:
        args.budget = {"stories": 900_000, "smollm2": 2_000_000}[args.model]
    if args.smoke:
        args.budget, args.stories, args.eval_tokens = (
            args.batch * 2 * (512 if args.model == "smollm2" else 256) * 3,
            128,
            1024,
        )
        args.calibration_iterations = 5
    return args


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    run(args)


def run(args) -> None:
    experiment = Experiment(args)
    for row in args.rows:  # in the order asked
        experiment.row(row)


class Experiment:
    """One model's texts, original and recipes, then its rows one at a time, each measured and written as it
    finishes (device_run.py's part f runs them one by one, each within its share of the time)."""

    def __init__(self, args) -> None:
        self.args, self.started = args, time.perf_counter()
        setup = (stories_setup if args.model == "stories" else smollm2_setup)(args)
        self.tokenizer = load_pretrained_tokenizer(setup["model"])
        if args.train_text is not None:
            own_training_text(args, setup, self.tokenizer)
        setup["texts"] = evaluation_texts(args, setup, self.tokenizer)
        setup["long_context"] = args.long_context
        setup["eval_batch"] = args.eval_batch
        self.setup = setup
        self.callbacks = callbacks(args, setup)
        self.pretrained = load_pretrained(setup["model"])
        if args.device is not None:
            self.pretrained.to(args.device)
        self.hardware = gaincell.preset("paper", window=setup["window"])
        self.recipes = recipes(setup, args)

    def set_budget(self, tokens: int, rule: str | None = None) -> None:
        """Give both recipes and (a′) ``tokens`` (device_run.py sizes it to the time left and caps it in
        epochs of the training text); ``rule`` says how it was chosen, in the JSON beside it."""
        self.args.budget, self.args.budget_rule = tokens, rule
        self.recipes = recipes(self.setup, self.args)

    def train_tokens(self) -> int:
        """Tokens in the recipes' training blocks (the training text less its held-out blocks): one epoch."""
        from gaincell.adaptation.stages import recipe_blocks

        blocks, _ = recipe_blocks(recipe_from_dict(self.recipes["e-transfer"]), self.tokenizer)
        return int(blocks.numel())

    def measure(self, row: str, what: str, model, tokens: int = 0, wall: float = 0.0, text=None, curve=None) -> dict:
        args, setup = self.args, self.setup
        result = {"row": row, "what": what, "tokens": tokens, "wall_s": round(wall, 1), "ppl": perplexities(model, setup),
                  "sample": text, "curve": curve or []}  # fmt: skip
        if args.tasks:
            result["table1"] = table1(model, self.tokenizer, args, setup["block_size"])
        if row == "a":  # the curves' reference: the original on the recipes' held-out blocks
            result["held_out_ppl"] = held_out_perplexity(model, self.recipes["e-transfer"])
            if self.callbacks:  # and on the out-of-domain curves' tokens
                result["ood_curve_ppl"] = self.callbacks[0].scores(model)
        print(json.dumps(result), flush=True)
        write(args, setup, result, time.perf_counter() - self.started)
        return result

    def row(self, row: str) -> dict:
        """Build, train or adapt the row's model, measure it and write everything measured so far."""
        args, setup, pretrained, hardware = self.args, self.setup, self.pretrained, self.hardware
        baselines = {
            "a": ("original", lambda: pretrained),
            "b": (f"sliding-window softmax, M = {setup['window']}",
                  lambda: convert(copy.deepcopy(pretrained), "softmax", window=setup["window"])),
            "c": ("paper model, weights swapped in", lambda: convert(copy.deepcopy(pretrained), hardware)),
            "c-linear": ("linear model, weights swapped in",
                         lambda: convert(copy.deepcopy(pretrained), linear_config(hardware))),
            "d": ("calibration only", lambda: calibration_only(pretrained, setup, hardware, args)),
        }  # fmt: skip
        if row in baselines:
            what, build = baselines[row]
            return self.measure(row, what, build())
        if row == "a-prime":
            folder = args.work / args.model
            model, tokens, wall = softmax_fine_tuned(pretrained, self.recipes["e-transfer"], folder, args, self.callbacks)
            text, curve = sample(model, self.tokenizer, setup["prompt"]), held_out_curve(folder, ["a-prime"])
            return self.measure(row, "original fine-tuned (softmax), same tokens", model, tokens, wall, text, curve)
        recipe, output = self.recipes[row], args.work / f"{args.model}-{row}"
        summary, wall = adapted(recipe, output, args, self.callbacks)
        tokens = sum(summary[name].get("tokens", 0) for name in recipe["stages"])
        model = gaincell.load(output / recipe["stages"][-1] / "model", device=args.device)
        text = sample(model, self.tokenizer, setup["prompt"])
        return self.measure(row, " + ".join(recipe["stages"]), model, tokens, wall, text,
                            held_out_curve(output, recipe["stages"]))  # fmt: skip


def adapted(recipe: dict, output: Path, args, callbacks=()) -> tuple[dict, float]:
    """Adapt one (e) recipe in ``output``: (its summary, wall seconds). With ``--reuse`` a finished one is read
    back; with ``--resume`` an interrupted one continues from its checkpoints; else the folder starts empty."""
    if args.reuse and (output / "wall_s.json").is_file():  # adapted before: measure it again
        return json.loads((output / "summary.json").read_text()), json.loads((output / "wall_s.json").read_text())["wall_s"]
    resume = getattr(args, "resume", False) and output.is_dir()
    if output.exists() and not resume:
        import shutil

        shutil.rmtree(output)
    began = time.perf_counter()
    summary = adapt(recipe_from_dict({**recipe, "output_dir": str(output)}), device=getattr(args, "device", None),
                    callbacks=callbacks, resume=resume)  # fmt: skip
    wall = time.perf_counter() - began
    if resume:  # the training stages' clocks run across resumes (train() keeps them); this process's may be less
        wall = max(wall, sum(stage_seconds(output, name) for name in recipe["stages"]))
    (output / "wall_s.json").write_text(json.dumps({"wall_s": wall, "resumed": resume}))
    return summary, wall


@torch.no_grad()
def held_out_perplexity(model, recipe: dict) -> float:
    """Perplexity on the held-out blocks the training stages evaluate on (as train's evaluation does)."""
    from gaincell.adaptation.stages import recipe_blocks

    _, blocks = recipe_blocks(recipe_from_dict(recipe), load_pretrained_tokenizer(recipe["model"]))
    blocks = blocks.to(model_device(model))  # a model fine-tuned here may be on the GPU accelerate chose
    losses = [float(model(input_ids=block[None], labels=block[None]).loss) for block in blocks]
    return float(torch.tensor(losses).mean().exp())


def log_entries(path: Path) -> list[dict]:
    """A training stage's metrics.jsonl, one dict per line (a torn last line left out, :mod:`gaincell.jsonl`)."""
    from gaincell.jsonl import read_jsonl

    return read_jsonl(path)


def stage_seconds(output: Path, stage: str) -> float:
    """A training stage's wall time from its log (train() keeps the clock across resumes); 0 for the others."""
    log = output / stage / "metrics.jsonl"
    return max((entry.get("elapsed", 0.0) for entry in log_entries(log)), default=0.0) if log.is_file() else 0.0


def held_out_curve(output: Path, stages: list[str]) -> list[dict]:
    """Each training stage's evaluations on the held-out blocks, against the recipe's tokens so far:
    the transfer stage's relative MSE, the other stages' perplexity (the linear stage's is the linear model's)."""
    import math

    points, before = [], 0
    for stage in stages:
        log = output / stage / "metrics.jsonl"
        if not log.is_file():
            continue
        entries = log_entries(log)
        for entry in entries:
            if entry.get("eval_loss") is None or "tokens" not in entry:
                continue
            point = {"stage": stage, "tokens": before + entry["tokens"], "elapsed_s": round(entry["elapsed"], 1)}
            if stage == "transfer":
                point["relative_mse"] = entry["eval_loss"]
            else:
                point["ppl"] = math.exp(min(entry["eval_loss"], 50.0))
            if entry.get("ood_ppl"):  # --ood-curve: the texts no recipe trains on, at the same evaluation
                point["ood_ppl"] = entry["ood_ppl"]
            points.append(point)
        before += max((e.get("tokens", 0) for e in entries), default=0)
    return points


def write(args, setup, result: dict, total: float) -> None:
    """Merge ``result`` into the model's JSON (under a lock: two processes may run rows side by side),
    then rewrite the markdown table and the curve plot from everything measured so far."""
    import fcntl

    name = f"real-models-{args.model}{'-' + args.tag if args.tag else ''}{'-smoke' if args.smoke else ''}"
    folder = args.out / name  # one experiment, one folder: results.json, results.md, curve.png
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = json.loads(path.read_text()) if path.is_file() else {}
        rows, notes = before.get("rows", []), before.get("notes", [])  # notes: written by hand, kept
        rows = [r for r in rows if r["row"] != result["row"]] + [result]
        rows.sort(key=lambda r: ROWS.index(r["row"]))
        meta = {"model": args.model, "source": setup["model"], "window": setup["window"], "context": setup["context"],
                "stride": setup["stride"], "eval": setup["eval_text"], "train": setup["train_text"],
                "budget_tokens": args.budget, "budget_rule": getattr(args, "budget_rule", None),
                "settings": {k: str(v) for k, v in vars(args).items()},
                "wall_s_of_this_process": round(total, 1), "torch": torch.__version__}  # fmt: skip
        path.write_text(json.dumps({**meta, "notes": notes, "rows": rows}, indent=1) + "\n")
    title = f"# {args.model}: {setup['eval_text']}, context {setup['context']}, stride {setup['stride']}"
    lines = [f"{title}, M = {setup['window']}", ""]
    texts = list(dict.fromkeys(name for r in rows for name in r["ppl"]))  # --long-context adds in-domain@N
    lines += ["Perplexity on each text (in-domain: " + setup["eval_text"] + "; the others no recipe trained on).", ""]
    lines += ["| row | what | tokens | wall (s) | " + " | ".join(texts) + " |", "|---|---|---:|---:|" + "---:|" * len(texts)]
    for r in rows:
        cells = [r["row"], r["what"], f"{r['tokens']:,}", str(r["wall_s"])] + [_number(r["ppl"].get(name)) for name in texts]
        lines.append("| " + " | ".join(cells) + " |")
    lines += table1_lines(rows)
    lines += ["", "Greedy samples (the gain-cell rows generate through their memory):", ""]
    lines += [f"- **{r['row']}**: {r['sample']!r}" for r in rows if r["sample"]]
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, folder / "curve.png", setup)
    print("\n".join(lines))


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def table1_lines(rows: list[dict]) -> list[str]:
    """The paper's Table 1 shape: rows (a), (a′), (c), (e-paper), (e-transfer) where measured."""
    measured = [r for r in rows if r.get("table1") and r["row"] in ("a", "a-prime", "c", "e-paper", "e-transfer")]
    if not measured:
        return []
    columns = list(TABLE1) + ["average", "wikitext_word_ppl"]
    limits = sorted({str(r["table1"]["limit"] or "all") for r in measured})
    lines = [
        "",
        f"Table 1 (lm-eval, 0-shot, --limit {', '.join(limits)} items per task; acc_norm for ARC, HellaSwag, PIQA):",
        "",
    ]
    lines += ["| row | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in measured:
        values = [r["table1"]["columns"].get(name) for name in columns]
        lines.append(f"| {r['row']} | " + " | ".join("–" if v is None else f"{v:.4g}" for v in values) + " |")
    return lines


def args_model(setup) -> str:
    return Path(setup["model"]).name


def plot_curves(rows: list[dict], path: Path, setup) -> None:
    """Perplexity against training tokens for each trained row: on the held-out blocks of the training text,
    then (``--ood-curve``) on each text no recipe trains on, one panel each, the original model as a line."""
    curves = [r for r in rows if r.get("curve")]
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = list(dict.fromkeys(name for r in curves for p in r["curve"] for name in p.get("ood_ppl", {})))
    figure, axes = plt.subplots(1, 1 + len(texts), figsize=(6.5 + 4.5 * len(texts), 4), squeeze=False)
    original = next((r for r in rows if r["row"] == "a"), {})
    for axis, text in zip(axes[0], [None, *texts], strict=True):
        for row in curves:
            for stage in dict.fromkeys(p["stage"] for p in row["curve"] if "ppl" in p):
                points = [p for p in row["curve"] if p["stage"] == stage and "ppl" in p]
                if text is not None:
                    points = [p for p in points if text in p.get("ood_ppl", {})]
                values = [p["ppl"] if text is None else p["ood_ppl"][text] for p in points]
                if points:
                    axis.plot([p["tokens"] for p in points], values, "o-", label=f"{row['row']}: {stage}")
        line = original.get("held_out_ppl") if text is None else original.get("ood_curve_ppl", {}).get(text)
        if line:
            axis.axhline(line, color="gray", ls="--", label="(a) original")
            axis.axhline(3 * line, color="gray", ls=":", label="3 x (a)")
        where = "held-out blocks of the training text" if text is None else f"{text} (no recipe trains on it)"
        axis.set(xlabel="training tokens", ylabel="perplexity", yscale="log", title=f"{args_model(setup)}: {where}")
        axis.title.set_fontsize(9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
