"""A saved gain-cell model is its own Hugging Face architecture (issue 25): transformers loads it as the
gain-cell model (custom code that imports gaincell, with trust_remote_code=True) or refuses it; never as
the softmax model it was converted from."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

import gaincell
from gaincell import GainCellError
from gaincell.hf.layer import GainCellAttention, gain_cell_layers

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(gaincell.__file__).resolve().parents[1]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def converted():
    model = gaincell.convert(tiny_llama(), "paper", window=16, subtile_rows=8)
    with torch.no_grad():  # scalers away from their initial values, so a model that lost them shows
        for cell in gain_cell_layers(model):
            for parameter in cell.scalers.parameters():
                parameter.mul_(1.3)
    return model


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(converted, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("arch") / "saved"
    gaincell.save(converted, folder, tokenizer)
    return folder


def _logits(model, token_ids):
    with torch.no_grad():
        return model(token_ids).logits


def test_the_folder_names_the_gaincell_architecture_and_its_base_model(saved, converted, token_ids):
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "gaincell" and config["architectures"] == ["GainCellForCausalLM"]
    assert config["base_model_type"] == "llama" and config["base_architectures"] == ["LlamaForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gaincell.GainCellForCausalLM"
    assert gaincell.GainCellConfig.from_dict(config["gaincell"]) == gaincell.GainCellConfig.from_dict(
        converted.config.gaincell
    )
    assert "from gaincell.hf.auto import" in (saved / "modeling_gaincell.py").read_text()
    loaded = gaincell.load(saved)
    assert type(loaded).__name__ == "LlamaForCausalLM" and len(gain_cell_layers(loaded)) == 2
    torch.testing.assert_close(_logits(loaded, token_ids), _logits(converted, token_ids), rtol=0, atol=0)


def test_save_pretrained_of_a_converted_model_writes_the_same_architecture(converted, token_ids, tmp_path):
    converted.save_pretrained(tmp_path / "direct")  # not through gaincell.save: still not loadable as softmax Llama
    assert json.loads((tmp_path / "direct" / "config.json").read_text())["model_type"] == "gaincell"
    assert (tmp_path / "direct" / "modeling_gaincell.py").is_file()
    loaded = gaincell.load(tmp_path / "direct")
    torch.testing.assert_close(_logits(loaded, token_ids), _logits(converted, token_ids), rtol=0, atol=0)


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_file = sys.argv[1], sys.argv[2]
    result = {"gaincell_before": "gaincell" in sys.modules}
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        result["plain"] = "loaded"
    except ValueError as error:
        result["plain"] = str(error)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        torch.save(model(torch.load(ids_file)).logits, ids_file + ".logits")
    result["class"], result["gaincell_after"] = type(model).__name__, "gaincell" in sys.modules
    print("RESULT " + json.dumps(result))
    """
)


def test_a_fresh_process_without_gaincell_refuses_it_plainly_and_loads_the_gain_cell_model_with_remote_code(
    saved, token_ids, tmp_path
):
    """What a colleague's script and lm-eval's CLI do: no gaincell import, only transformers."""
    ids_file = tmp_path / "ids.pt"
    torch.save(token_ids, ids_file)
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(saved), str(ids_file)],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])  # after transformers' trust prompt, on its line
    assert result["gaincell_before"] is False
    assert "contains custom code" in result["plain"] and "trust_remote_code=True" in result["plain"]
    assert result["class"] == "LlamaForCausalLM" and result["gaincell_after"]  # the folder's code imported gaincell
    remote = torch.load(str(ids_file) + ".logits")
    assert (remote - _logits(gaincell.load(saved), token_ids)).abs().max() <= 1e-5


def test_lm_evals_own_hf_model_scores_the_folder_as_gaincell_eval_does(saved):
    """``lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True`` builds this HFLM; the class
    it loads is the one the folder's remote code names (here registered in-process: the same class)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import gaincell.hf.auto  # noqa: F401
    from gaincell.evaluation.lm_eval_model import lm_eval_model_class

    requests = [Instance("loglikelihood", {}, ("def f(x):", " return x"), 0), Instance("loglikelihood", {}, ("a", " b"), 1)]
    theirs = HFLM(pretrained=str(saved), trust_remote_code=True, batch_size=1, device="cpu")
    ours = lm_eval_model_class()(pretrained=str(saved), device="cpu", batch_size=1)
    assert len(gain_cell_layers(theirs.model)) == 2
    expected = [value for value, _ in ours.loglikelihood(requests, disable_tqdm=True)]
    assert [value for value, _ in theirs.loglikelihood(requests, disable_tqdm=True)] == pytest.approx(expected, abs=1e-5)


def test_in_a_process_that_imported_gaincell_auto_model_loads_it_converted(saved, converted, token_ids):
    import gaincell.hf.auto  # noqa: F401  registers the architecture with the Auto classes

    model = AutoModelForCausalLM.from_pretrained(saved)  # registered: no remote code runs
    assert len(gain_cell_layers(model)) == 2
    torch.testing.assert_close(_logits(model, token_ids), _logits(converted, token_ids), rtol=0, atol=0)
    half = AutoModelForCausalLM.from_pretrained(saved, dtype="auto", device_map="cpu")
    assert next(half.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantization_config": {"load_in_8bit": True}}, "quantization_config not supported"),
        ({"device_map": "auto"}, "device_map: 'auto' not supported; a gaincell model loads on one device"),
        ({"dtype": "float17"}, "dtype: 'float17' is not a torch dtype"),
    ],
)
def test_arguments_that_would_change_the_model_are_refused_by_name(saved, kwargs, message):
    from gaincell.hf.auto import GainCellForCausalLM

    with pytest.raises(GainCellError, match=message):
        GainCellForCausalLM.from_pretrained(saved, **kwargs)


def test_from_config_builds_a_fresh_converted_base_model(saved):
    import gaincell.hf.auto  # noqa: F401

    config = AutoModelForCausalLM.from_pretrained(saved).config
    from transformers import AutoConfig

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(saved))
    assert isinstance(model, LlamaForCausalLM) and model.config.gaincell == config.gaincell
    assert len(gain_cell_layers(model)) == 2


def test_a_folder_saved_by_earlier_versions_still_loads_converted(converted, tokenizer, token_ids, tmp_path):
    """Before the architecture existed: config.json was the base model's, the gain-cell config under its key."""
    PreTrainedModel.save_pretrained(converted, tmp_path / "old")  # the base class's save: what gaincell wrote then
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model_type"] == "llama"
    loaded = gaincell.load(tmp_path / "old")
    torch.testing.assert_close(_logits(loaded, token_ids), _logits(converted, token_ids), rtol=0, atol=0)


@pytest.mark.parametrize("format", ["architecture", "earlier"])
@pytest.mark.parametrize("change", ["removed", "null"])
def test_gain_cell_tensors_without_a_gain_cell_config_are_refused_in_one_line(converted, tmp_path, format, change):
    folder = tmp_path / "model"
    if format == "architecture":
        gaincell.save(converted, folder)
    else:
        PreTrainedModel.save_pretrained(converted, folder)
    config = json.loads((folder / "config.json").read_text())
    if change == "removed":
        del config["gaincell"]
    else:
        config["gaincell"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GainCellError) as raised:
        gaincell.load(folder)
    message = str(raised.value)
    assert "\n" not in message and "config.json has no gain-cell config" in message
    assert "holds gain-cell tensors (model.layers.0.self_attn.gaincell." in message


def test_a_plain_folder_still_loads_as_the_plain_model(tmp_path, token_ids):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "plain")
    loaded = gaincell.load(tmp_path / "plain")
    assert not any(isinstance(module, GainCellAttention) for module in loaded.modules())
    torch.testing.assert_close(_logits(loaded, token_ids), _logits(model, token_ids), rtol=0, atol=0)


def test_the_cost_model_reads_the_base_model_of_a_saved_folder(saved):
    from gaincell.hardware.models import load_shape

    shape = load_shape(str(saved))
    assert shape.layers == 2 and shape.heads == 4 and shape.kv_heads == 2
    assert shape.mlp_matrices == 3  # Llama's gated MLP, read through base_model_type


def test_gaincell_reads_the_tokenizer_without_asking_to_run_the_folders_code(saved, tokenizer, monkeypatch):
    """AutoTokenizer reads config.json through AutoConfig, which asks (in a terminal, for 15 s) whether to run
    the folder's code; gaincell hands it the base model's config instead."""
    from transformers import AutoConfig

    def asked(*args, **kwargs):
        pytest.fail("AutoConfig read the gain-cell folder")

    monkeypatch.setattr(AutoConfig, "from_pretrained", asked)
    loaded = gaincell.hf.pretrained.load_tokenizer(saved)
    assert loaded("def f(x):")["input_ids"] == tokenizer("def f(x):")["input_ids"]


def test_a_folder_with_a_nan_weight_refuses_to_give_logits_through_transformers(converted, token_ids, tmp_path):
    """lm-eval's ``--model hf`` scores NaN log-likelihoods without a word (issue 25, item 3): the folder's own
    forward stops in eval mode, naming the folder and the weight; training keeps its own loss checks."""
    import copy

    from gaincell.errors import NonFiniteError

    finite = AutoModelForCausalLM.from_pretrained(gaincell.save(converted, tmp_path / "finite"), trust_remote_code=True)
    assert torch.isfinite(_logits(finite.eval(), token_ids)).all()
    broken = copy.deepcopy(converted)
    with torch.no_grad():
        broken.model.norm.weight[3] = float("nan")
    folder = gaincell.save(broken, tmp_path / "broken")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with pytest.raises(NonFiniteError) as raised:
        _logits(model, token_ids)
    assert str(raised.value) == (
        f"{folder}: the model gives NaN logits, so no score or token is computed: its weight model.norm.weight is "
        "NaN or infinite"
    )
    assert torch.isnan(model.train()(token_ids).logits).all()  # training: the loss checks of gaincell.adaptation
