"""``gaincell convert``: an unadapted Hugging Face model, converted to a preset and saved, evaluates from
the command line; a bad hardware field is one line before the model loads."""

import logging

import pytest

import gaincell
from gaincell.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def softmax_dir(tiny_gpt2, tokenizer, tmp_path_factory):
    """A plain (never converted) GPT-2 folder with its tokenizer, as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("softmax") / "model"
    tiny_gpt2(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_convert_saves_a_gain_cell_model_that_eval_reads(softmax_dir, pydoc_text, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(softmax_dir), str(out), "--window", "16", "--set", "subtile_rows=8"]) == 0
    printed = capsys.readouterr().out
    assert "converted 2 attention layers" in printed and "window M = 16" in printed
    model = gaincell.load(out)
    assert gaincell.hf.convert.model_config(model) == gaincell.preset("paper", window=16, subtile_rows=8)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_text[:4_000])
    assert main(["eval", str(out), "--text", str(corpus), "--max-tokens", "64", "--json"]) == 0
    assert '"ppl"' in capsys.readouterr().out


def test_a_bad_hardware_field_is_one_line_and_writes_nothing(softmax_dir, tmp_path, capsys):
    assert main(["convert", str(softmax_dir), str(tmp_path / "out"), "--set", "windw=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'windw'" in err[0]
    assert not (tmp_path / "out").exists()


def test_help_opens_with_what_gaincell_is(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.startswith("Simulate, adapt and cost analog") and "``" not in description


def test_the_known_loss_type_warning_is_filtered_and_nothing_else():
    logger = logging.getLogger("transformers.modeling_utils")
    known = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "`loss_type=None` was set in the config "
                              "but it is unrecognized. Using the default loss: `ForCausalLMLoss`.", None, None)  # fmt: skip
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "Some weights were not initialized", None, None)
    assert not logger.filter(known) and logger.filter(other)


def test_under_a_launcher_only_rank_0_prints_an_input_error(softmax_dir, tmp_path, monkeypatch, capsys):
    """torchrun / accelerate launch run ``main`` in every process; each checks the same input, one says so."""
    monkeypatch.setenv("RANK", "1")
    assert main(["convert", str(softmax_dir), str(tmp_path / "out"), "--set", "windw=16"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["convert", str(softmax_dir), str(tmp_path / "out"), "--set", "windw=16"]) == 2
    assert "unknown key 'windw'" in capsys.readouterr().err


def test_a_hub_id_offline_says_what_can_be_had_offline(tmp_path, capsys):
    """Tests run with HF_HUB_OFFLINE=1, as a machine without internet: the hub id cannot come."""
    assert main(["convert", "gpt2", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'gpt2'" in err[0] and "`gaincell fetch`" in err[0] and "gaincell-demo/pretrained" in err[0]
