"""The fine-tuning loop (gaincell.adaptation.train): learning, exact resume, DDP, checkpoints, config checks."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaincell.adaptation.data import corpus_blocks, corpus_from_texts, split_blocks
from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.state import latest_checkpoint, read_checkpoint_state
from gaincell.adaptation.train import learning_rate, parameter_groups, train
from gaincell.errors import GainCellError

WORKER = Path(__file__).resolve().parents[1] / "workers" / "train_worker.py"
WORKER_MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blocks(pydoc_text, tokenizer):
    """(train, eval, vocab_size): 32-token blocks of Python's bundled docs under the session's BPE."""
    text = pydoc_text[:100_000]
    train_blocks, eval_blocks = split_blocks(corpus_blocks(corpus_from_texts([text]), tokenizer, 32), 0.1)
    return train_blocks, eval_blocks, len(tokenizer)


@pytest.fixture(scope="module")
def blocks_file(blocks, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("blocks") / "blocks.pt"
    train_blocks, eval_blocks, vocab_size = blocks
    torch.save({"train": train_blocks, "eval": eval_blocks, "vocab_size": vocab_size}, path)
    return path


def tiny_gpt2(vocab_size: int, n_positions: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(**{**WORKER_MODEL, "n_positions": n_positions}, vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    )


def quick_config(**overrides) -> TrainConfig:
    settings = {
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 4,
        "max_steps": 10,
        "batch_size": 4,
        "grad_accum": 2,
        "eval_every": 5,
        "eval_batches": 2,
        "checkpoint_every": 5,
        "log_every": 1,
        "progress_bar": False,
    }
    return TrainConfig(**{**settings, **overrides})


def worker_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_result(output_dir: Path, rank: int = 0) -> dict:
    return json.loads((output_dir / f"result-rank{rank}.json").read_text())


# -- configuration and schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", float("nan")),
        ("min_lr", 1.0),
        ("warmup_steps", -1),
        ("warmup_steps", 2000),
        ("max_steps", 0),
        ("batch_size", 0),
        ("grad_accum", 1.5),
        ("weight_decay", -0.1),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("grad_clip", 0.0),
        ("mixed_precision", "fp8"),
        ("eval_every", -1),
        ("eval_batches", 0),
        ("checkpoint_every", -5),
        ("keep_checkpoints", 0),
        ("log_every", 0),
        ("seed", -1),
        ("log_jsonl", ""),
        ("report_to", ("mlflow",)),
        ("progress_bar", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(GainCellError, match=rf"^{field} must be .*, got "):
        TrainConfig(**{field: value})


def test_config_is_frozen_and_normalised():
    config = TrainConfig(betas=[0.9, 0.99], report_to="tensorboard", grad_clip=None)
    assert config.betas == (0.9, 0.99) and config.report_to == ("tensorboard",)
    with pytest.raises(AttributeError):
        config.lr = 1.0


def test_missing_tracker_is_refused(blocks, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(GainCellError, match=r"report_to: wandb is not installed \(pip install wandb\)$"):
        quick_config(report_to=("wandb",))  # with the recipe, before any stage runs (issue 25)


def test_a_log_jsonl_naming_a_folder_is_refused_before_training(blocks, tmp_path):
    train_blocks, _, vocab_size = blocks
    (tmp_path / "logs").mkdir()
    with pytest.raises(GainCellError, match=r"^log_jsonl must be a file name inside the output directory, not a folder"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(log_jsonl="logs"), tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["logs"]


def test_training_logs_to_tensorboard_through_accelerate(blocks, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_blocks, eval_blocks, vocab_size = blocks
    train(tiny_gpt2(vocab_size), train_blocks, eval_blocks, quick_config(report_to=("tensorboard",)), tmp_path)
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = EventAccumulator(str(events[0].parent)).Reload()
    assert [event.step for event in logged.Scalars("loss")] == list(range(1, 11))
    assert [event.step for event in logged.Scalars("eval_loss")] == [5, 10]
    assert (tmp_path / "metrics.jsonl").is_file()  # besides, not instead of, the JSONL log


def test_a_non_finite_loss_stops_training_before_anything_is_saved(blocks, tmp_path):
    train_blocks, eval_blocks, vocab_size = blocks
    model = tiny_gpt2(vocab_size)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(GainCellError, match=r"^\S+: loss is nan at step 1: training stopped"):
        train(model, train_blocks, eval_blocks, quick_config(), tmp_path / "stage")
    assert latest_checkpoint(tmp_path / "stage") is None


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    config = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    warmup = [learning_rate(step, config) for step in range(10)]
    assert warmup == pytest.approx([(step + 1) / 10 for step in range(10)])
    decay = [learning_rate(step, config) for step in range(10, 111)]
    assert decay[0] == pytest.approx(1.0)
    assert decay[50] == pytest.approx(0.55)
    assert decay[-1] == pytest.approx(0.1)
    assert all(later <= earlier for earlier, later in zip(decay, decay[1:], strict=False))


def test_weight_decay_spares_biases_norms_and_per_head_scalers():
    model = tiny_gpt2(64)
    model.register_parameter("scaler_a_q", torch.nn.Parameter(torch.ones(2)))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(parameter.ndim >= 2 for parameter in decay["params"])
    assert any(parameter is model.scaler_a_q for parameter in no_decay["params"])
    assert sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == sum(
        p.numel() for p in model.parameters()
    )


# -- training -------------------------------------------------------------------------------------


class Recorder:
    """A callback with state, as the adaptation recipe's statistics recorder will be."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.evals: list[tuple[int, float]] = []

    def on_step_end(self, step, model, metrics) -> None:
        assert isinstance(model, torch.nn.Module) and math.isfinite(metrics["loss"])
        self.steps.append(step)

    def on_eval(self, step, model, metrics) -> None:
        self.evals.append((step, metrics["eval_loss"]))

    def state_dict(self) -> dict:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state["steps"])


def test_loss_decreases_on_a_real_corpus(blocks, tmp_path):
    train_blocks, eval_blocks, vocab_size = blocks
    recorder = Recorder()
    config = quick_config(max_steps=40, eval_every=20, checkpoint_every=20)
    result = train(tiny_gpt2(vocab_size), train_blocks, eval_blocks, config, tmp_path, callbacks=[recorder])

    assert result.step == 40 and recorder.steps == list(range(1, 41))
    assert [step for step, _ in recorder.evals] == [20, 40]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == list(range(1, 41))
    assert set(records[0]) >= {"step", "loss", "lr", "eval_loss", "tokens", "elapsed"} - {"eval_loss"}
    assert records[-1]["tokens"] == 40 * 4 * 2 * 32
    first, last = records[0]["loss"], result.loss
    assert first == pytest.approx(math.log(vocab_size), abs=0.3)
    assert last < first - 0.7
    assert result.eval_loss == records[-1]["eval_loss"] < first - 0.7
    assert latest_checkpoint(tmp_path) == result.checkpoint == tmp_path / "checkpoints" / "step-00000040"
    assert read_checkpoint_state(result.checkpoint)["step"] == 40


def test_resume_after_kill_reaches_the_same_final_loss(blocks_file, tmp_path):
    """Kill a run (SIGKILL) after its step-20 checkpoint, resume it, compare with a run never stopped."""
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    command = [sys.executable, str(WORKER), str(blocks_file)]
    reference = subprocess.Popen([*command, str(reference_dir), "40"], env=worker_env(), stderr=subprocess.PIPE)
    victim = subprocess.Popen(
        [*command, str(killed_dir), "40", "--slow-after", "20"], env=worker_env(), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (killed_dir / "checkpoints" / "step-00000020").is_dir():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # a step or two past the checkpoint: those must be redone identically
    assert victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert latest_checkpoint(killed_dir).name == "step-00000020"
    assert reference.wait() == 0, reference.stderr.read().decode()[-2000:]

    resumed = subprocess.run([*command, str(killed_dir), "40", "--resume"], env=worker_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    expected, got = read_result(reference_dir), read_result(killed_dir)
    assert got["step"] == expected["step"] == 40
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-6)
    assert got["weights"] == expected["weights"]
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert not [path for path in (killed_dir / "checkpoints").iterdir() if path.name.startswith(".")]


def test_ddp_on_cpu_with_two_processes(blocks_file, tmp_path):
    """torchrun with two gloo processes: both ranks end with the same weights and the loss falls."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(blocks_file),
        str(tmp_path),
        "20",
    ]
    finished = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0, rank1 = read_result(tmp_path, 0), read_result(tmp_path, 1)
    assert rank0["num_processes"] == rank1["num_processes"] == 2
    assert rank0["weights"] == rank1["weights"]
    assert rank0["loss"] == rank1["loss"] and math.isfinite(rank0["loss"])
    assert rank0["loss"] < rank0["first_loss"] - 0.4
    state = read_checkpoint_state(latest_checkpoint(tmp_path))
    assert state["num_processes"] == 2 and state["tokens"] == 20 * 4 * 2 * 2 * 32
    assert {"rng-0.safetensors", "rng-0.json", "rng-1.safetensors", "rng-1.json"} <= set(state["files"])
    assert not [name for name in state["files"] if not name.endswith((".safetensors", ".json"))]


def test_resume_restores_stateful_callbacks_and_extends_a_finished_run(blocks, tmp_path):
    train_blocks, eval_blocks, vocab_size = blocks
    first = Recorder()
    train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=6), tmp_path, callbacks=[first])
    second = Recorder()
    result = train(
        tiny_gpt2(vocab_size),
        train_blocks,
        eval_blocks,
        quick_config(max_steps=9),
        tmp_path,
        resume=True,
        callbacks=[second],
    )
    assert second.steps == list(range(1, 10))
    assert result.step == 9 and result.eval_loss is not None
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-00000009"]  # the last, also the best


# -- errors ---------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(blocks, tmp_path):
    train_blocks, _, vocab_size = blocks
    train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=5), tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-state", "missing-rng", "garbage-optimizer"])
def test_corrupt_checkpoint_gives_one_line_naming_it(blocks, finished_run, damage):
    train_blocks, _, vocab_size = blocks
    checkpoint = latest_checkpoint(finished_run)
    if damage == "truncate-weights":
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage-state":
        (checkpoint / "trainer_state.json").write_text("{not json")
    elif damage == "missing-rng":
        (checkpoint / "rng-0.safetensors").unlink()
    else:  # same size, unreadable content: caught by its checksum
        optimizer = checkpoint / "optimizer.safetensors"
        optimizer.write_bytes(b"\0" * optimizer.stat().st_size)
    with pytest.raises(GainCellError, match=f"corrupt checkpoint {checkpoint}") as raised:
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=8), finished_run, resume=True)
    assert "\n" not in str(raised.value)


def test_partial_checkpoints_of_a_killed_run_are_removed_on_restart(blocks, finished_run):
    train_blocks, _, vocab_size = blocks
    partial = finished_run / "checkpoints" / ".step-00000007.x1y2.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    result = train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=8), finished_run, resume=True)
    assert result.step == 8 and not partial.exists()


def test_resume_needs_a_checkpoint_and_a_fresh_run_needs_an_empty_directory(blocks, finished_run, tmp_path_factory):
    train_blocks, _, vocab_size = blocks
    with pytest.raises(GainCellError, match="resume: no checkpoint"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(), tmp_path_factory.mktemp("empty"), resume=True)
    with pytest.raises(GainCellError, match=r"already holds checkpoints; pass resume=True \(gaincell adapt: --resume\)"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(), finished_run)


def test_resume_refuses_a_different_data_order(blocks, finished_run):
    train_blocks, _, vocab_size = blocks
    with pytest.raises(GainCellError, match="batch_size was 4, now 8"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(batch_size=8), finished_run, resume=True)
    with pytest.raises(GainCellError, match="train_blocks was"):
        train(tiny_gpt2(vocab_size), train_blocks[:-1], None, quick_config(), finished_run, resume=True)


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (lambda data: torch.cat([data, data], dim=1), "train_data: context of 64 tokens is longer than the model's 32"),
        (lambda data: data[:3], "train_data has 3 blocks; need at least 4"),
        (lambda data: data.float(), "train_data must hold integer token ids"),
        (lambda data: data[0], "train_data must be a 2-D"),
    ],
)
def test_bad_training_data_is_refused_before_anything_is_written(blocks, tmp_path, make_data, message):
    train_blocks, _, vocab_size = blocks
    with pytest.raises(GainCellError, match=message):
        train(tiny_gpt2(vocab_size), make_data(train_blocks), None, quick_config(), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_too_little_eval_data_names_the_settings_that_set_it():
    from gaincell.adaptation.batches import check_blocks

    with pytest.raises(GainCellError, match=r"eval_data has 1 blocks; need at least 2 .*data\.eval_fraction"):
        check_blocks(torch.zeros(1, 8, dtype=torch.long), "eval_data", tiny_gpt2(300), 2)


# -- what a checkpoint folder may hold: nothing that runs, nothing changed ------------------------


class _Planted:
    """Unpickling this writes a file: the proof that a checkpoint's pickle ran."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (Path.write_text, (self.proof, "pickle ran"))


def test_a_planted_pickle_is_refused_and_never_loaded(blocks, finished_run):
    import pickle

    train_blocks, _, vocab_size = blocks
    checkpoint, proof = latest_checkpoint(finished_run), finished_run / "proof.txt"
    assert all(name.endswith((".safetensors", ".json")) for name in read_checkpoint_state(checkpoint)["files"])
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(proof)))
    with pytest.raises(GainCellError, match="custom_checkpoint_0.pkl is not one of the files it was written with"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=8), finished_run, resume=True)
    assert not proof.exists()


def test_weights_changed_in_place_are_refused_by_their_checksum(blocks, finished_run):
    train_blocks, _, vocab_size = blocks
    weights = latest_checkpoint(finished_run) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2000:-1000] = bytes(1000)  # same size, different model
    weights.write_bytes(bytes(data))
    with pytest.raises(GainCellError, match="model.safetensors does not match its sha256"):
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=8), finished_run, resume=True)


def test_resume_refuses_other_settings_or_another_chip_naming_the_field(blocks, tmp_path):
    import gaincell

    train_blocks, _, vocab_size = blocks
    chip = gaincell.preset("linear", window=32, subtile_rows=16)
    train(gaincell.convert(tiny_gpt2(vocab_size), chip), train_blocks, None, quick_config(max_steps=5), tmp_path)
    with pytest.raises(GainCellError, match="hardware.window was 32, now 16"):
        model = gaincell.convert(tiny_gpt2(vocab_size), chip.replace(window=16))
        train(model, train_blocks, None, quick_config(max_steps=8), tmp_path, resume=True)
    with pytest.raises(GainCellError, match="lr was 0.003, now 0.001"):
        model = gaincell.convert(tiny_gpt2(vocab_size), chip)
        train(model, train_blocks, None, quick_config(max_steps=8, lr=1e-3), tmp_path, resume=True)


@pytest.mark.parametrize("path", ["/tmp/elsewhere.jsonl", "../../x.jsonl", "logs/../../x.jsonl", "~/x.jsonl"])
def test_the_metrics_log_stays_inside_the_output_directory(path):
    with pytest.raises(GainCellError, match="log_jsonl must be a file name inside the output directory"):
        quick_config(log_jsonl=path)


def test_no_module_unpickles_what_a_user_hands_in():
    """No pickle on any path a user can hand in: no pickle module, accelerate's load_state, or torch.load
    without weights_only=True anywhere in the package."""
    import re

    import gaincell

    package = Path(gaincell.__file__).parent
    pattern = re.compile(r"import pickle|pickle\.load|load_state\(|torch\.load\((?![^)]*weights_only=True)")
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py") if pattern.search(path.read_text())]
    assert offenders == []


# -- issue 25: torn logs, changed data ------------------------------------------------------------


def test_a_torn_last_log_line_is_dropped_on_resume_and_the_steps_rerun(blocks, finished_run):
    """A full disk cut the last metrics line short: resume drops it (only it) and re-runs from the checkpoint."""
    train_blocks, _, vocab_size = blocks
    log = finished_run / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    log.write_text("".join(lines) + '{"step": 6, "loss": 4.1')  # torn: no closing brace, no newline
    result = train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=7), finished_run, resume=True)
    assert result.step == 7
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5, 6, 7]
    assert log.read_text().splitlines(keepends=True)[:5] == lines  # the valid lines, byte for byte


def test_a_damaged_log_line_before_the_last_is_refused_in_one_line(blocks, finished_run):
    train_blocks, _, vocab_size = blocks
    log = finished_run / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + "{garbage\n" + "".join(lines[2:]))
    before = log.read_bytes()
    with pytest.raises(GainCellError, match=r"metrics.jsonl: line 3 of 6 is not valid JSON") as raised:
        train(tiny_gpt2(vocab_size), train_blocks, None, quick_config(max_steps=7), finished_run, resume=True)
    assert "\n" not in str(raised.value) and log.read_bytes() == before  # no valid line deleted


def test_resume_refuses_training_data_that_changed(blocks, finished_run):
    """As many blocks as before but other tokens: the run would mix two datasets."""
    train_blocks, _, vocab_size = blocks
    changed = train_blocks.clone()
    changed[0, 0] = (changed[0, 0] + 1) % vocab_size
    with pytest.raises(GainCellError, match="the training data changed"):
        train(tiny_gpt2(vocab_size), changed, None, quick_config(max_steps=7), finished_run, resume=True)
