"""``gaincell demo`` end to end at toy size: every stage runs, every artefact is written."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import gaincell
from gaincell.cli import main
from gaincell.demo.experiment import QUICK, DemoConfig
from gaincell.hf.convert import model_config

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = [
    "--context", "32", "--window", "16", "--pretrain-steps", "6", "--linear-steps", "3", "--nonlinear-steps", "3",
]  # fmt: skip


def test_demo_writes_the_report_the_results_and_a_loadable_model(tmp_path, pydoc_text, monkeypatch, capsys):
    toy = DemoConfig(
        context=32, window=16, subtile_rows=16, layers=1, embedding=32, heads=2, vocab_size=300, batch_size=4,
        pretrain_steps=6, linear_steps=3, nonlinear_steps=3, calibration_batch=4, eval_blocks=4, sample_tokens=8,
    )  # fmt: skip
    monkeypatch.setattr("gaincell.commands.demo.DemoConfig", lambda: toy)
    from matplotlib.figure import Figure

    axes, bars, savefig = {}, {}, Figure.savefig

    def record(figure, path, **kwargs):  # how each plot's axis was set, read before it is written
        axis = figure.axes[0]
        axes[Path(path).name] = (axis.get_yscale(), axis.get_ylim()[0], axis.get_legend() is not None)
        ticks = dict(zip(axis.get_xticks(), (label.get_text() for label in axis.get_xticklabels()), strict=True))
        bars[Path(path).name] = {ticks[bar.get_x() + bar.get_width() / 2]: bar.get_height() for bar in axis.patches}
        return savefig(figure, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_text[-40_000:])
    output = tmp_path / "demo"
    assert main(["demo", "--text", str(corpus), "--output", str(output), *TOY]) == 0
    results = json.loads((output / "results.json").read_text())
    assert [row["key"] for row in results["perplexity"]] == [*"abcdef", "a'", "b'"]
    assert set(results["checks"]) == {"e_better_than_c_d_f", "e_within_25_percent_of_b_prime"}
    assert {"baseline-a-linear", "baseline-a-nonlinear", "baseline-b-linear", "baseline-b-nonlinear"} <= set(
        path.name for path in (output / "runs").iterdir()
    )
    assert all(row["ppl"] > 1 for row in results["perplexity"] + results["diagnostics"])
    assert results["config"]["linear_steps"] + results["config"]["nonlinear_steps"] == 6  # (f)'s budget
    assert results["sample"]["continuation"] and results["hardware_summary"]
    report = (output / "report.md").read_text()
    assert "| (e) |" in report and "![perplexity.png](perplexity.png)" in report
    assert (output / "loss_curves.png").stat().st_size > 0 and (output / "perplexity.png").stat().st_size > 0
    model = gaincell.load(output / "model")
    assert model_config(model).window == 16 and model_config(model).attention == "gaincell"
    assert "held-out perplexity" in capsys.readouterr().out
    # (a) is saved too, a plain softmax GPT-2 any Hugging Face tool loads (the README's snippet starts from it)
    pretrained = AutoModelForCausalLM.from_pretrained(output / "pretrained")
    assert type(pretrained).__name__ == "GPT2LMHeadModel" and "gaincell" not in pretrained.config.to_dict()
    # the cost model is the demo model's own shape, and the one leakage simulated is stated with its origin
    summary = results["hardware_summary"]
    assert summary[0].startswith("gain-cell attention (paper), H=2 D=16 M=16:")
    assert any("simulated at ε = 0.00016" in line and "ε = Δt/τ" in line for line in summary)
    # bars that compare perplexities start at zero on a linear axis, with a legend for their colours
    assert axes["perplexity.png"] == ("linear", 0.0, True)
    assert bars["perplexity.png"] == pytest.approx({row["key"]: row["ppl"] for row in results["perplexity"]})
    # the generated sample sits in fenced blocks: its newlines and markup cannot break the page
    assert "```text" in report and not any(line.startswith("> **") for line in report.splitlines())
    options = ["--device", "cpu", "--dtype", "fp32"]  # the device accelerate trains on, and no autocast
    assert main(["demo", "--text", str(corpus), "--output", str(output), *TOY, *options]) == 0  # a demo folder is replaced
    assert json.loads((output / "results.json").read_text())["device"] == {"device": "cpu", "mixed_precision": "no"}


def test_demo_refuses_a_foreign_output_folder_and_bad_sizes(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main(["demo", "--output", str(tmp_path / "mine")]) == 2
    assert "--output must be a new or empty folder or a previous demo folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert main(["demo", "--text", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "d")]) == 2
    with pytest.raises(gaincell.GainCellError, match="multiple of heads"):
        DemoConfig(embedding=100, heads=3)


def test_quick_sizes_fit_the_model():
    assert QUICK.embedding // QUICK.heads <= QUICK.subtile_rows and QUICK.window <= QUICK.context


@pytest.mark.parametrize(
    "options",
    [["--context", "100000000"], ["--seed", "-1"], ["--text", "{short}"], ["--output", "{short}"]],
    ids=["huge-context", "negative-seed", "short-text", "output-is-a-file"],
)
def test_a_refused_run_leaves_the_previous_demo_as_it_was(tmp_path, options, capsys):
    previous = tmp_path / "previous"
    (previous / "model").mkdir(parents=True)
    (previous / ".gaincell-demo").write_text("written by gaincell demo\n")
    (previous / "report.md").write_text("last week's report\n")
    (previous / "model" / "config.json").write_text("{}")
    short = tmp_path / "short.txt"
    short.write_text("too short for one block of context")
    options = [option.format(short=short) for option in options]
    argv = ["demo", "--quick", "--output", str(previous), *options]
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the datasets library's progress bar, if any
    assert last.startswith("gaincell demo: error: ")
    assert (previous / "report.md").read_text() == "last week's report\n" and (previous / "model" / "config.json").is_file()
    assert short.read_text() == "too short for one block of context"


# -- issue 25 item 7: a previous demo's folder --------------------------------------------------------


@pytest.fixture
def toy_demo(monkeypatch):
    toy = DemoConfig(
        context=32, window=16, subtile_rows=16, layers=1, embedding=32, heads=2, vocab_size=300, batch_size=4,
        pretrain_steps=2, linear_steps=1, nonlinear_steps=1, calibration_batch=4, eval_blocks=4, sample_tokens=4,
    )  # fmt: skip
    monkeypatch.setattr("gaincell.commands.demo.DemoConfig", lambda: toy)


def previous_demo(folder: Path) -> None:
    """A previous demo's folder (from before the manifest) with a user's notes added."""
    (folder / "model").mkdir(parents=True)
    (folder / ".gaincell-demo").write_text("written by gaincell demo\n")
    (folder / "report.md").write_text("last week's report\n")
    (folder / "model" / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("my notes on last week's run\n")


def test_a_new_demo_keeps_the_users_notes_in_the_previous_folder(tmp_path, pydoc_text, toy_demo):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_text[-40_000:])
    output = tmp_path / "demo"
    previous_demo(output)
    for _ in range(2):  # over the folder of before the manifest, then over its own
        assert main(["demo", "--text", str(corpus), "--output", str(output), *TOY]) == 0
        assert (output / "notes.txt").read_text() == "my notes on last week's run\n"
        assert (output / "report.md").read_text() != "last week's report\n"
        assert gaincell.load(output / "model") is not None
        assert all(".demo." not in (output / name).read_text() for name in ("report.md", "results.json"))  # no temp path
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "demo"]  # nothing left beside it


def test_a_demo_stopped_midway_leaves_the_previous_report_and_model(tmp_path, pydoc_text, toy_demo, monkeypatch):
    """Killed after its first stages (here: interrupted in the recipe), the previous demo is whole."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_text[-40_000:])
    output = tmp_path / "demo"
    previous_demo(output)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gaincell.demo.experiment._Demo.recipe", stop)
    assert main(["demo", "--text", str(corpus), "--output", str(output), *TOY]) == 130  # "gaincell demo: interrupted"
    assert (output / "report.md").read_text() == "last week's report\n"
    assert (output / "model" / "config.json").read_text() == "{}" and (output / "notes.txt").is_file()
    assert not (output / "pretrained").exists()  # the new run's first model went with its unfinished folder


def test_a_second_demo_on_a_folder_in_use_is_refused(tmp_path, pydoc_text, toy_demo, capsys):
    from gaincell.lock import folder_lock

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_text[-40_000:])
    output = tmp_path / "demo"
    previous_demo(output)
    with folder_lock(output, "--output", "gaincell demo"):
        assert main(["demo", "--text", str(corpus), "--output", str(output), *TOY]) == 2
    assert "--output: " in capsys.readouterr().err
    assert (output / "report.md").read_text() == "last week's report\n"
