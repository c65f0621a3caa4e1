"""``gaincell demo``: the paper's whole experiment (SPEC §4–5) at laptop scale, offline.

It trains a small GPT-2-architecture softmax model as the "pre-trained" model, then measures what
each step of the adaptation recipe buys, on held-out text:

(a) the softmax model (full causal attention);
(b) the same weights with sliding-window softmax (window M);
(c) the nonlinear gain-cell model with the pre-trained weights swapped in, no adaptation;
(d) calibration only: targets recorded by the linear model with the pre-trained weights (no
    training), then the calibration loop;
(e) the full recipe: linear stage, calibration, nonlinear stage;
(f) the same nonlinear model trained from scratch for as many steps as (e) trained;
(a′), (b′) equal-budget baselines: the softmax model, with full resp. sliding-window attention,
    fine-tuned with the same steps, data and learning-rate schedules as the recipe's two training
    stages. (e) also gets those extra steps, so (b′) — not (b) — is what it is compared with.

Rows between them (the linear-stage model; linear stage + calibration) show where the gains come
from. Everything lands in one folder: ``report.md`` with the table and plots, ``results.json``,
the adapted model (``gaincell generate``/``gaincell eval`` read it), a sample generated through the
gain-cell memory, and the cost-model summary for the demo's attention shape.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.data import pack_blocks, split_blocks, train_bpe_tokenizer
from gaincell.adaptation.settings import CalibrationConfig, TrainConfig
from gaincell.adaptation.stages import linear_config, linear_stage, nonlinear_stage
from gaincell.adaptation.train import train
from gaincell.atomic import atomic_directory, atomic_file, check_replaceable
from gaincell.chip.config import preset
from gaincell.demo.report import markdown, plots
from gaincell.devices import model_device
from gaincell.errors import GainCellError
from gaincell.evaluation.perplexity import strided_perplexity
from gaincell.hardware.render import summary_lines
from gaincell.hardware.report import HardwareQuery, build_report
from gaincell.hf.convert import convert
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import save
from gaincell.lock import folder_lock
from gaincell.validation import check_int


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. The defaults take about 20–25 minutes on 2 quiet CPU cores (docs/demo.md);
    QUICK about a minute."""

    context: int = 256
    window: int = 128
    subtile_rows: int = 64
    layers: int = 4
    embedding: int = 256
    heads: int = 4
    vocab_size: int = 4096
    batch_size: int = 8
    pretrain_steps: int = 400
    pretrain_lr: float = 1e-3
    linear_steps: int = 100
    nonlinear_steps: int = 200
    adapt_lr: float = 6e-4
    calibration_batch: int = 8
    eval_blocks: int = 64
    sample_tokens: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("context", "window", "subtile_rows", "layers", "embedding", "heads", "vocab_size", "batch_size",
                     "pretrain_steps", "linear_steps", "nonlinear_steps", "calibration_batch", "eval_blocks"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if self.embedding % self.heads:
            raise GainCellError(f"embedding ({self.embedding}) must be a multiple of heads ({self.heads})")

    @property
    def scratch_steps(self) -> int:
        return self.linear_steps + self.nonlinear_steps


QUICK = DemoConfig(
    context=128, window=64, layers=2, embedding=128, heads=2, vocab_size=2048, pretrain_steps=200,
    linear_steps=40, nonlinear_steps=60, eval_blocks=32, sample_tokens=40,
)  # fmt: skip


# -- pieces -----------------------------------------------------------------------------------------


def _train_config(steps: int, lr: float, config: DemoConfig, warmup: int, precision: str):
    return TrainConfig(
        lr=lr, min_lr=lr / 10, warmup_steps=min(warmup, steps), max_steps=steps, batch_size=config.batch_size,
        eval_every=0, eval_batches=4, checkpoint_every=0, keep_checkpoints=1, log_every=5, seed=config.seed,
        mixed_precision=precision,
    )  # fmt: skip


def _perplexity(model, eval_ids: torch.Tensor, context: int) -> float:
    with torch.no_grad():
        return strided_perplexity(model, eval_ids, context=context, stride=context, batch_size=8)["ppl"]


def _history(result) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in result.history if row.get("loss") is not None]


def _hardware_lines(config: DemoConfig, pretrained_dir: Path, leakage: float) -> list[str]:
    """The cost model for the demo's own model (its config.json: width, layers, vocabulary, MLP), so the
    rest-of-model time on a GPU, and hence the hybrid retention check, is this model's and not GPT-2's."""
    query = HardwareQuery(model=str(pretrained_dir), window=config.window, subtile_rows=config.subtile_rows)
    return summary_lines(build_report(query), simulated_leakage=leakage)


# -- the run ------------------------------------------------------------------------------------------

#: The file that makes a folder a demo's: only such a folder (or an empty one) is replaced by the next run.
MARKER = ".gaincell-demo"
#: Subfolders: the pre-trained softmax model (a) and the adapted gain-cell model (e).
PRETRAINED, ADAPTED = "pretrained", "model"


def _is_demo_folder(path: Path) -> bool:
    return (path / MARKER).is_file()


def run_demo(
    config: DemoConfig, output: Path, text: str, corpus_name: str, eval_text: str | None, *, echo=print, precision="auto"
) -> dict:
    """Run the whole demo into ``output`` and return the results (also in ``results.json``).

    ``output`` may be new, empty or a previous demo's folder. The new run is written beside it and replaces it
    only when complete, so a bad size, a short text or a kill leaves the previous demo as it was; files in it
    that gaincell did not write are kept (:func:`gaincell.atomic.atomic_directory`); one demo per folder. Models train
    where accelerate puts them (:func:`gaincell.devices.accelerate_on`), in autocast ``precision``
    (``TrainConfig.mixed_precision``), and are measured where training left them.
    """
    started = time.perf_counter()
    output = check_replaceable("--output", output, _is_demo_folder, "a previous demo folder")
    demo = _Demo(config, output, echo, precision)
    demo.prepare_data(text, corpus_name, eval_text)
    with folder_lock(output, "--output", "gaincell demo"), atomic_directory(output, "gaincell demo") as new:
        # The run writes beside the previous demo, which stays whole until the new one is complete; files in
        # it that gaincell did not write (a user's notes) are carried into the new one.
        demo.output = new
        (new / MARKER).write_text("written by gaincell demo; replaced by the next run\n")
        results = _run(demo, config, new, corpus_name, precision, started)
    return results


def _run(demo: _Demo, config: DemoConfig, output: Path, corpus_name: str, precision: str, started: float) -> dict:
    """The demo's stages, written into ``output`` (the new folder beside the previous one)."""
    echo = demo.echo
    pretrained = demo.pretrain_and_swap()
    save(pretrained, output / PRETRAINED, demo.tokenizer)  # (a): a plain softmax GPT-2, any HF tool loads it
    only = demo.calibration_only(pretrained)
    adapted, recipe_calibration = demo.recipe(pretrained)
    demo.from_scratch()
    demo.equal_budget_baselines(pretrained)
    echo("6/6 generating through the gain-cell memory, costing the chip, writing the report")
    save(adapted, output / ADAPTED, demo.tokenizer)
    ppl = {row["key"]: row["ppl"] for row in demo.rows}
    results = {
        "config": asdict(config),
        "corpus": corpus_name,
        "train_tokens": int(demo.train_blocks.numel()),
        "eval_tokens": int(demo.eval_ids.numel()),
        "hardware": demo.hardware.to_dict(),
        "perplexity": demo.rows,
        "diagnostics": demo.diagnostics,
        "calibration": {"only": asdict(only), "recipe": asdict(recipe_calibration)},
        "checks": {
            "e_better_than_c_d_f": ppl["e"] < min(ppl["c"], ppl["d"], ppl["f"]),
            "e_within_25_percent_of_b_prime": ppl["e"] <= 1.25 * ppl["b'"],
        },
        "sample": demo.sample(adapted),
        "hardware_summary": _hardware_lines(config, output / PRETRAINED, demo.hardware.leakage),
        "seconds": time.perf_counter() - started,
        "device": {"device": str(model_device(adapted)), "mixed_precision": precision},
    }
    written = plots(output, demo.curves, demo.rows)
    with atomic_file(output / "results.json") as handle:
        json.dump(results, handle, indent=1)
    with atomic_file(output / "report.md") as handle:
        handle.write(markdown(results, written))
    return results


class _Demo:
    """The demo's shared state (corpus, models' configs, result rows, loss curves) and its steps."""

    def __init__(self, config: DemoConfig, output: Path, echo, precision: str) -> None:
        self.config, self.output, self.echo, self.precision = config, output, echo, precision
        self.hardware = preset("paper", window=config.window, subtile_rows=config.subtile_rows)
        self.sliding = preset("softmax", window=config.window, subtile_rows=config.subtile_rows)
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.rows: list[dict] = []
        self.diagnostics: list[dict] = []

    def prepare_data(self, text: str, corpus_name: str, eval_text: str | None) -> None:
        """A byte-level BPE tokenizer trained on the corpus; training, monitoring and held-out tokens."""
        config, echo = self.config, self.echo
        torch.manual_seed(config.seed)
        echo(f"corpus: {corpus_name}")
        tokenizer = train_bpe_tokenizer(text, vocab_size=config.vocab_size, model_max_length=config.context)
        blocks = pack_blocks(tokenizer(text, verbose=False)["input_ids"], config.context)
        if eval_text is None:
            train_blocks, held_out = split_blocks(blocks, 0.1)
            eval_ids = held_out.reshape(-1)
        else:
            train_blocks = blocks
            eval_ids = torch.tensor(tokenizer(eval_text, verbose=False)["input_ids"])
        self.eval_ids = eval_ids[: config.eval_blocks * config.context + 1]
        self.train_blocks, self.monitor = split_blocks(train_blocks, 0.02)
        if len(self.train_blocks) < config.batch_size or self.eval_ids.numel() < 2:
            raise GainCellError(
                f"corpus: {corpus_name} gives {len(self.train_blocks)} training blocks of {config.context} tokens and "
                f"{self.eval_ids.numel()} held-out tokens, fewer than one batch of {config.batch_size} blocks and 2 "
                "tokens; use more text or a smaller --context"
            )
        self.tokenizer = tokenizer
        self.model_config = GPT2Config(
            n_embd=config.embedding, n_layer=config.layers, n_head=config.heads, n_positions=config.context,
            vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        train_tokens, held_out_tokens = self.train_blocks.numel(), self.eval_ids.numel()
        echo(f"tokens: {train_tokens:,} training, {held_out_tokens:,} held out; vocabulary {len(tokenizer):,}")

    def measure(self, key: str, label: str, model, diagnostic: bool = False) -> float:
        ppl = _perplexity(model, self.eval_ids, self.config.context)
        (self.diagnostics if diagnostic else self.rows).append({"key": key, "label": label, "ppl": ppl})
        self.echo(f"      {label}: perplexity {ppl:.2f}" if diagnostic else f"  ({key}) {label}: perplexity {ppl:.2f}")
        return ppl

    def fit(self, name: str, model, steps: int, lr: float, warmup: int, stage=None):
        """Train ``model`` (through an adaptation ``stage`` if given) and keep its loss curve."""
        directory = self.output / "runs" / name
        train_config = _train_config(steps, lr, self.config, warmup, self.precision)
        if stage is None:
            result = train(model, self.train_blocks, self.monitor, train_config, directory)
        else:
            result = stage(model, self.train_blocks, self.monitor, train_config, self.hardware, directory)
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # the demo does not resume; keep the disk
        self.curves[name] = _history(result)
        return result.model

    def pretrain_and_swap(self):
        """(a) the pre-trained softmax model, (b) with a sliding window, (c) with gain cells swapped in."""
        config = self.config
        self.echo(f"1/6 pre-training a GPT-2-architecture softmax model ({config.pretrain_steps} steps)")
        torch.manual_seed(config.seed)
        model = GPT2LMHeadModel(copy.deepcopy(self.model_config))
        pretrained = self.fit("pretrain", model, config.pretrain_steps, config.pretrain_lr, 50)
        self.measure("a", "softmax model (full causal attention)", pretrained)
        self.measure("b", f"sliding-window softmax (M = {config.window})", convert(copy.deepcopy(pretrained), self.sliding))
        swapped = convert(copy.deepcopy(pretrained), self.hardware)
        self.measure("c", "nonlinear gain-cell model, pre-trained weights swapped in", swapped)
        return pretrained

    def calibration_batch(self) -> torch.Tensor:
        order = torch.randperm(len(self.train_blocks), generator=torch.Generator().manual_seed(self.config.seed))
        return self.train_blocks[order][: self.config.calibration_batch]

    def calibration_only(self, pretrained):
        """(d): targets recorded by training-mode forwards of the untrained linear model, then calibration."""
        config = self.config
        self.echo("2/6 calibration only (targets from the untrained linear model)")
        model = convert(copy.deepcopy(pretrained), linear_config(self.hardware))
        for cell in gain_cell_layers(model):
            cell.recording = True
        model.train()
        with torch.no_grad():
            for start in range(0, min(len(self.train_blocks), 8 * config.batch_size), config.batch_size):
                model(input_ids=self.train_blocks[start : start + config.batch_size].to(model_device(model)))
        for cell in gain_cell_layers(model):
            cell.recording = False
        calibration = CalibrationConfig(batch_size=config.calibration_batch, seed=config.seed)
        only = calibrate(model, self.calibration_batch(), calibration, self.hardware)
        self.measure("d", f"calibration only ({only.iterations} iterations)", model)
        return only

    def recipe(self, pretrained):
        """(e): linear stage, calibration, nonlinear stage, with the models between them measured."""
        config = self.config
        self.echo(
            f"3/6 adaptation recipe: linear stage ({config.linear_steps} steps), calibration, "
            f"nonlinear stage ({config.nonlinear_steps} steps)"
        )
        adapted = self.fit("linear", copy.deepcopy(pretrained), config.linear_steps, config.adapt_lr, 20, linear_stage)
        self.measure("linear", "linear hardware model after the linear stage", adapted, diagnostic=True)
        calibration = CalibrationConfig(batch_size=config.calibration_batch, seed=config.seed)
        result = calibrate(adapted, self.calibration_batch(), calibration, self.hardware)
        label = f"nonlinear model after linear stage + calibration ({result.iterations} iterations)"
        self.measure("linear+cal", label, adapted, diagnostic=True)
        adapted = self.fit("nonlinear", adapted, config.nonlinear_steps, config.adapt_lr, 20, nonlinear_stage)
        self.measure("e", "adapted nonlinear gain-cell model (full recipe)", adapted)
        return adapted, result

    def from_scratch(self) -> None:
        """(f): the nonlinear model from random weights, as many steps as the recipe trained."""
        config = self.config
        self.echo(f"4/6 the same nonlinear model trained from scratch ({config.scratch_steps} steps)")
        torch.manual_seed(config.seed)
        scratch = convert(GPT2LMHeadModel(copy.deepcopy(self.model_config)), self.hardware)
        scratch = self.fit("scratch", scratch, config.scratch_steps, config.pretrain_lr, 50)
        self.measure("f", f"nonlinear model trained from scratch ({config.scratch_steps} steps)", scratch)

    def equal_budget_baselines(self, pretrained) -> None:
        """(a′), (b′): the softmax model fine-tuned by exactly the recipe's two training runs."""
        config = self.config
        self.echo(
            f"5/6 equal-budget softmax baselines ({config.linear_steps} + {config.nonlinear_steps} steps, as the recipe)"
        )
        baselines = (("a'", "softmax model (full causal attention)", None), ("b'", "sliding-window softmax", self.sliding))
        for key, label, attention in baselines:
            model = copy.deepcopy(pretrained) if attention is None else convert(copy.deepcopy(pretrained), attention)
            for stage, steps in (("linear", config.linear_steps), ("nonlinear", config.nonlinear_steps)):
                model = self.fit(f"baseline-{key[0]}-{stage}", model, steps, config.adapt_lr, 20)
            window = "" if attention is None else f" (M = {config.window})"
            self.measure(key, f"{label}{window}, fine-tuned with the recipe's budget", model)

    def sample(self, model) -> dict:
        """A continuation of the held-out text's first 16 tokens, generated through the gain-cell memory."""
        prompt_ids = self.eval_ids[:16].unsqueeze(0).to(model_device(model))  # training may have left it on a GPU
        torch.manual_seed(self.config.seed)
        with torch.no_grad():
            generated = model.generate(
                prompt_ids, max_new_tokens=self.config.sample_tokens, do_sample=True, top_k=40, temperature=0.8,
                pad_token_id=self.tokenizer.eos_token_id,
            )  # fmt: skip
        continuation = generated[0, prompt_ids.shape[1] :]
        return {"prompt": self.tokenizer.decode(prompt_ids[0]), "continuation": self.tokenizer.decode(continuation)}
