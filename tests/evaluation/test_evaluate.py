"""Evaluation (gaincell.evaluation.perplexity): strided perplexity, the lm-eval adapter and `gaincell eval`."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from gaincell.commands import eval as eval_command
from gaincell.errors import GainCellError
from gaincell.evaluation import lm_eval_model
from gaincell.evaluation import perplexity as evaluate

#: A tiny offline multiple-choice task for the lm-eval adapter; its data file path is relative to the working
#: directory, so the tests run from the folder that ``tasks_dir`` writes.
TINY_TASK = r"""task: gaincell_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_mc.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
TINY_ROWS = [
    {
        "question": "What does a gain cell store its value on?",
        "choices": [" a capacitor", " a magnet", " a fuse"],
        "label": 0,
    },
    {
        "question": "Which function replaces softmax in the gain-cell attention?",
        "choices": [" a cosine", " a hard sigmoid", " a logarithm"],
        "label": 1,
    },
    {
        "question": "What happens to a stored voltage over time?",
        "choices": [" it grows", " it is constant", " it leaks away"],
        "label": 2,
    },
    {"question": "How many levels does the query DAC have?", "choices": [" sixteen", " two", " one thousand"], "label": 0},
    {
        "question": "What is the sliding window of GPT-2 in the paper?",
        "choices": [" 7 tokens", " 1024 tokens", " no window"],
        "label": 1,
    },
    {
        "question": "Where are the keys and values kept?",
        "choices": [" in the cloud", " on a tape", " in analog gain-cell arrays"],
        "label": 2,
    },
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text(pydoc_text) -> str:
    return pydoc_text[:40_000]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "tiny_mc.yaml").write_text(TINY_TASK)
    (folder / "tiny_mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TINY_ROWS))
    return folder


@pytest.fixture(scope="module")
def model(tokenizer, tiny_gpt2):
    return tiny_gpt2(vocab_size=len(tokenizer)).eval()


@pytest.fixture(scope="module")
def model_dir(tokenizer, tiny_gpt2, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    tiny_gpt2(vocab_size=len(tokenizer), n_positions=64).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def token_ids(text, tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer(text[:2000])["input_ids"])


# -- perplexity -----------------------------------------------------------------------------------


def reference_nll(model, token_ids: torch.Tensor, context: int) -> float:
    """Token by token: each token after the first, from the (up to) context - 1 tokens before it."""
    total = 0.0
    with torch.no_grad():
        for position in range(1, len(token_ids)):
            window = token_ids[max(0, position - context + 1) : position]
            log_probs = model(input_ids=window[None]).logits[0, -1].log_softmax(-1)
            total -= float(log_probs[token_ids[position]])
    return total / (len(token_ids) - 1)


def test_one_window_equals_the_models_own_loss(model, token_ids):
    ids = token_ids[:32]
    result = evaluate.strided_perplexity(model, ids, context=32, stride=16)
    with torch.no_grad():
        loss = float(model(input_ids=ids[None], labels=ids[None]).loss)
    assert result["tokens"] == 31
    assert result["nll"] == pytest.approx(loss, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_stride_one_scores_every_token_with_the_longest_context(model, token_ids):
    ids = token_ids[:80]
    result = evaluate.strided_perplexity(model, ids, context=16, stride=1, batch_size=5)
    assert result["tokens"] == 79
    assert result["nll"] == pytest.approx(reference_nll(model, ids, 16), rel=1e-5)


@pytest.mark.parametrize(("stride", "expected_tokens"), [(8, 199), (20, 199), (32, 199 - 6)])
def test_each_token_is_scored_at_most_once_and_batching_does_not_matter(model, token_ids, stride, expected_tokens):
    ids = token_ids[:200]
    one = evaluate.strided_perplexity(model, ids, context=32, stride=stride, batch_size=1)
    many = evaluate.strided_perplexity(model, ids, context=32, stride=stride, batch_size=3)
    assert one["tokens"] == many["tokens"] == expected_tokens  # stride == context: windows' first tokens unscored
    assert many["nll"] == pytest.approx(one["nll"], rel=1e-5)


def test_more_left_context_helps_a_trained_model(tokenizer, tiny_gpt2, text, tmp_path):
    from gaincell.adaptation.data import corpus_blocks, corpus_from_texts
    from gaincell.adaptation.settings import TrainConfig
    from gaincell.adaptation.train import train

    model = tiny_gpt2(vocab_size=len(tokenizer))
    blocks = corpus_blocks(corpus_from_texts([text[2000:]]), tokenizer, 32)
    config = TrainConfig(
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        max_steps=120,
        batch_size=8,
        eval_every=0,
        checkpoint_every=0,
        log_jsonl=None,
        progress_bar=False,
    )
    model = train(model, blocks, None, config, tmp_path).model
    ids = torch.tensor(tokenizer(text[:3000])["input_ids"])
    short = evaluate.strided_perplexity(model, ids, context=32, stride=32)
    long = evaluate.strided_perplexity(model, ids, context=32, stride=4)
    assert long["ppl"] < short["ppl"] < len(tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": 33, "stride": 8}, "context: context of 33 tokens is longer than the model's 32 positions"),
        ({"context": 16, "stride": 17}, "stride must be <= context=16"),
        ({"context": 16, "stride": 0}, "stride must be an integer >= 1"),
        ({"context": 16, "stride": 8, "batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_windows_are_refused(model, token_ids, kwargs, message):
    with pytest.raises(GainCellError, match=message):
        evaluate.strided_perplexity(model, token_ids, **kwargs)


def test_too_little_text_is_refused(model):
    with pytest.raises(GainCellError, match="needs at least 2 tokens"):
        evaluate.strided_perplexity(model, torch.tensor([5]), context=16, stride=8)


def test_text_perplexity_of_a_file(model, tokenizer, text, tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text(text[:6000])
    result = evaluate.text_perplexity(model, tokenizer, path, max_tokens=500)
    assert result["context"] == 32 and result["stride"] == 16 and result["tokens"] == 499
    assert 1 < result["ppl"] < 2 * len(tokenizer)
    with pytest.raises(GainCellError, match="text: no such file"):
        evaluate.text_perplexity(model, tokenizer, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GainCellError, match="empty corpus"):
        evaluate.text_perplexity(model, tokenizer, tmp_path / "empty.txt")


# -- lm-evaluation-harness ------------------------------------------------------------------------


def test_lm_eval_runs_a_local_task_on_a_model_instance(model, tokenizer, tasks_dir, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tasks_dir)  # the task's data_files path is relative
    adapter = lm_eval_model.GainCellLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    output = simple_evaluate(
        model=adapter,
        tasks=["gaincell_tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
    )
    metrics = output["results"]["gaincell_tiny_mc"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert 0.0 <= metrics["acc_norm,none"] <= 1.0


def test_lm_eval_loads_a_model_directory_through_the_pluggable_loader(model_dir, tasks_dir, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm_eval_model.lm_eval_model_class()  # registers "gaincell"
    loaded = []
    default_loader = lm_eval_model.load_model_dir

    def loader(path):
        loaded.append(Path(path))
        return default_loader(path)

    monkeypatch.setattr(lm_eval_model, "load_model_dir", loader)
    monkeypatch.chdir(tasks_dir)
    output = simple_evaluate(
        model="gaincell",
        model_args={"pretrained": str(model_dir), "device": "cpu"},
        tasks=["gaincell_tiny_mc"],
        limit=3,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
    )
    assert loaded == [model_dir]
    assert 0.0 <= output["results"]["gaincell_tiny_mc"]["acc,none"] <= 1.0


def test_adapter_needs_a_tokenizer_with_a_model_instance(model):
    with pytest.raises(GainCellError, match="tokenizer: required"):
        lm_eval_model.GainCellLM(pretrained=model)


# -- command line ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gaincell eval")
    eval_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_prints_perplexity_as_a_table_and_as_json(model_dir, text, tmp_path, capsys):
    path = tmp_path / "sample.txt"
    path.write_text(text[:4000])
    assert eval_command.run(parse([str(model_dir), "--text", str(path), "--context", "64", "--stride", "32"])) == 0
    table = capsys.readouterr().out
    assert "sample.txt" in table and "ppl" in table

    assert eval_command.run(parse([str(model_dir), "--text", str(path), "--max-tokens", "300", "--json"])) == 0
    result = json.loads(capsys.readouterr().out)["perplexity"]
    assert result["context"] == 64 and result["stride"] == 32 and result["tokens"] == 299
    assert result["ppl"] == pytest.approx(math.exp(result["nll"]))


@pytest.fixture(scope="module")
def broken_dir(tokenizer, tiny_gpt2, tmp_path_factory) -> Path:
    """A saved model with one NaN weight: every logit it computes is NaN."""
    directory = tmp_path_factory.mktemp("broken")
    model = tiny_gpt2(vocab_size=len(tokenizer), n_positions=64)
    with torch.no_grad():
        model.transformer.ln_f.weight[3] = float("nan")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_nan_model_gives_no_perplexity_and_no_output_file(broken_dir, text, tmp_path, capsys):
    from gaincell.cli import main

    (tmp_path / "sample.txt").write_text(text[:4000])
    output = tmp_path / "out.json"
    argv = ["eval", str(broken_dir), "--text", str(tmp_path / "sample.txt"), "--json", "--output", str(output)]
    assert main(argv) == 1  # a NaN score is a failed evaluation
    out, err = capsys.readouterr()
    assert out == "" and not output.exists()
    assert err.strip().splitlines()[-1] == (
        "gaincell eval: error: the model gives NaN logits, so no perplexity is reported: its weights or settings "
        "are broken (a NaN or infinite weight, or an overflowing dtype)"
    )


def test_a_nan_model_gives_no_task_score(broken_dir, tasks_dir, capsys, monkeypatch):
    """lm-eval compares NaN log-likelihoods without a word: acc 0.5 on a two-way task, from nothing."""
    from gaincell.cli import main

    monkeypatch.chdir(tasks_dir)
    argv = ["eval", str(broken_dir), "--tasks", "gaincell_tiny_mc", "--include-path", str(tasks_dir), "--limit", "2"]
    assert main([*argv, "--json"]) == 1
    out, err = capsys.readouterr()
    errors = [line[line.index("gaincell eval: error:") :] for line in err.splitlines() if "gaincell eval: error:" in line]
    assert out == "" and len(errors) == 1  # on the line of lm-eval's progress bar, which has no newline yet
    assert errors[0].startswith("gaincell eval: error: the model gives NaN logits, so no log-likelihood is reported")


def test_max_length_past_the_models_positions_is_refused(model_dir, tasks_dir, monkeypatch):
    monkeypatch.chdir(tasks_dir)
    argv = [str(model_dir), "--tasks", "gaincell_tiny_mc", "--include-path", str(tasks_dir), "--max-length", "2000"]
    with pytest.raises(GainCellError, match="^max_length: context of 2000 tokens is longer than the model's 64 positions$"):
        eval_command.run(parse(argv))


def test_cli_runs_lm_eval_tasks(model_dir, tasks_dir, capsys, monkeypatch):
    monkeypatch.chdir(tasks_dir)
    argv = [str(model_dir), "--tasks", "gaincell_tiny_mc", "--include-path", str(tasks_dir), "--limit", "2", "--json"]
    assert eval_command.run(parse(argv)) == 0
    tasks = json.loads(capsys.readouterr().out)["tasks"]
    assert 0.0 <= tasks["gaincell_tiny_mc"]["acc,none"] <= 1.0


def converted_gpt2(tiny_gpt2, vocab_size: int):
    """A tiny gain-cell GPT-2 whose scalers are away from their initial values, so losing them shows."""
    import gaincell
    from gaincell.hf.layer import gain_cell_layers

    model = gaincell.convert(tiny_gpt2(vocab_size=vocab_size), "paper", window=16, subtile_rows=16, block_size=16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for cell in gain_cell_layers(model):
            for parameter in cell.scalers.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_cli_evaluates_a_saved_gain_cell_model_as_it_ran_in_process(tokenizer, tiny_gpt2, text, tmp_path, capsys):
    import gaincell
    from gaincell.cli import main

    model = converted_gpt2(tiny_gpt2, len(tokenizer))
    gaincell.save(model, tmp_path / "converted", tokenizer)
    path = tmp_path / "sample.txt"
    path.write_text(text[:3000])
    assert main(["eval", str(tmp_path / "converted"), "--text", str(path), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)["perplexity"]
    expected = evaluate.text_perplexity(model, tokenizer, path)
    assert (reported["tokens"], reported["context"], reported["stride"]) == (expected["tokens"], 32, 16)
    assert reported["nll"] == pytest.approx(expected["nll"], abs=1e-9)
    assert reported["ppl"] == pytest.approx(expected["ppl"], rel=1e-9)
    # an untrained model barely depends on its attention, but enough to tell which model was loaded:
    plain = evaluate.text_perplexity(
        tiny_gpt2(vocab_size=len(tokenizer)), tokenizer, path
    )  # the weights with softmax attention
    assert abs(reported["nll"] - plain["nll"]) > 1e-6


def test_lm_eval_adapter_loads_a_gain_cell_directory_converted(tokenizer, tiny_gpt2, tmp_path):
    import gaincell
    from gaincell.hf.convert import model_config

    model = converted_gpt2(tiny_gpt2, len(tokenizer))
    gaincell.save(model, tmp_path / "converted", tokenizer)
    adapter = lm_eval_model.GainCellLM(pretrained=str(tmp_path / "converted"), device="cpu")
    assert model_config(adapter.model) == model_config(model)
    loaded, saved = adapter.model.state_dict(), model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in saved.items() if ".gaincell." in key)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "--text", "x.txt"], "MODEL_DIR: no such directory"),
        (["{model}"], "give --text FILE"),
        (["{model}", "--text", "{missing}"], "text: no such file"),
        (["{model}", "--text", "{sample}", "--context", "65"], "longer than the model's 64 positions"),
    ],
)
def test_cli_errors_are_one_line(model_dir, tmp_path, argv, message):
    (tmp_path / "sample.txt").write_text("a few words of text to score\n")
    names = {"missing": tmp_path / "missing", "model": model_dir, "sample": tmp_path / "sample.txt"}
    with pytest.raises(GainCellError, match=message) as raised:
        eval_command.run(parse([arg.format(**names) for arg in argv]))
    assert "\n" not in str(raised.value)


# -- issue 25 item 7: --output never replaces a file gaincell eval did not write ---------------------


def test_output_refuses_a_users_file_and_the_models_config_before_any_work(model_dir, text, tmp_path, capsys):
    from gaincell.cli import main

    path = tmp_path / "sample.txt"
    path.write_text(text[:4000])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config = (model_dir / "config.json").read_bytes()
    for target in (notes, model_dir / "config.json"):
        assert main(["eval", str(model_dir), "--text", str(path), "--max-tokens", "300", "--output", str(target)]) == 2
        captured = capsys.readouterr()
        assert captured.err == (
            f"gaincell eval: error: --output: {target} exists and gaincell eval --output did not write it, so it is "
            "not replaced; choose a new file name, or remove it first\n"
        )
        assert captured.out == ""  # refused before the evaluation
    assert notes.read_text() == "my notes\n" and (model_dir / "config.json").read_bytes() == config


def test_output_replaces_its_own_file_and_one_eval_writes_it_at_a_time(model_dir, text, tmp_path, capsys):
    from gaincell.cli import main
    from gaincell.lock import file_lock

    path = tmp_path / "sample.txt"
    path.write_text(text[:4000])
    out = tmp_path / "ppl.json"
    argv = ["eval", str(model_dir), "--text", str(path), "--max-tokens", "300", "--output", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # its own file, replaced
    assert json.loads(out.read_text())["perplexity"]["tokens"] == 299
    before = out.read_bytes()
    capsys.readouterr()
    with file_lock(out, "--output", "gaincell eval"):  # another eval writing it
        assert main(argv) == 2
    assert f"--output: {out} is being written by another gaincell eval (process" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_an_eval_output_in_a_saved_folder_survives_saving_it_again(model_dir, text, tmp_path, capsys):
    """The manifest says who wrote each file: gaincell.save replaces its own files, not eval's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gaincell
    from gaincell.cli import main

    saved = tmp_path / "saved"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    gaincell.save(model, saved, tokenizer)
    path = tmp_path / "sample.txt"
    path.write_text(text[:4000])
    argv = ["eval", str(saved), "--text", str(path), "--max-tokens", "300", "--output", str(saved / "ppl.json")]
    assert main(argv) == 0
    result = (saved / "ppl.json").read_text()
    gaincell.save(model, saved, tokenizer)
    assert (saved / "ppl.json").read_text() == result
    assert main(argv) == 0  # still eval's own file
