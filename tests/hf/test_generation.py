"""`gaincell generate`: a saved gain-cell model continues a prompt through its analog memories."""

import copy

import pytest
import torch

import gaincell
from gaincell.cli import main
from gaincell.hf.layer import gain_cell_layers
from gaincell.op.memory import GainCellMemory

pytestmark = pytest.mark.usefixtures("one_thread")

HARDWARE = dict(window=8, subtile_rows=8, block_size=8)  # a window shorter than prompt + new tokens: slots wrap
PROMPT = "The return statement"


@pytest.fixture(scope="module")
def converted(tokenizer, tiny_gpt2):
    """A tiny converted GPT-2 with scalers away from their initial values (so loading them matters)."""
    model = gaincell.convert(tiny_gpt2(n_positions=64), "paper", **HARDWARE).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for cell in gain_cell_layers(model):
            for parameter in cell.scalers.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def model_dir(converted, tokenizer, tmp_path_factory):
    return gaincell.save(converted, tmp_path_factory.mktemp("generate") / "model", tokenizer)


def generate(model_dir, capsys, *options: str) -> str:
    assert main(["generate", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "16", *options]) == 0
    return capsys.readouterr().out.rstrip("\n")


def test_greedy_cli_prints_what_the_converted_model_generates_in_process(converted, tokenizer, model_dir, capsys):
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = converted.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generate(model_dir, capsys, "--greedy") == tokenizer.decode(expected[0], skip_special_tokens=True)


def test_cli_generates_through_the_gain_cell_memory(model_dir, capsys, monkeypatch):
    steps = []
    step = GainCellMemory.step

    def counted(self, *args):
        steps.append(self.keys.shape)
        return step(self, *args)

    monkeypatch.setattr(GainCellMemory, "step", counted)
    text = generate(model_dir, capsys, "--greedy")
    assert text.startswith(PROMPT)
    assert len(steps) == 2 * 15  # per layer, every new token after the first (read at prefill) is one memory step
    assert {shape[2] for shape in steps} == {HARDWARE["window"]}  # M slots, whatever the length


def test_sampling_is_seeded(model_dir, capsys):
    first = generate(model_dir, capsys, "--seed", "3", "--temperature", "1.5", "--top-k", "0")
    assert generate(model_dir, capsys, "--seed", "3", "--temperature", "1.5", "--top-k", "0") == first
    assert generate(model_dir, capsys, "--seed", "4", "--temperature", "1.5", "--top-k", "0") != first
    assert first.startswith(PROMPT)


@pytest.mark.parametrize("sampling", [["--greedy"], []])
def test_a_nan_model_generates_nothing_and_says_why(converted, tokenizer, tmp_path, capsys, sampling):
    """Greedy decoding of NaN logits is token 0 again and again; sampling them fails inside torch."""
    broken = copy.deepcopy(converted)
    with torch.no_grad():
        broken.transformer.wte.weight[:, 0] = float("nan")
    gaincell.save(broken, tmp_path / "broken", tokenizer)
    assert main(["generate", str(tmp_path / "broken"), "--prompt", PROMPT, "--max-new-tokens", "5", *sampling]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines()[-1] == (
        "gaincell generate: error: the model gives NaN logits, so no generated token is reported: its weights or "
        "settings are broken (a NaN or infinite weight, or an overflowing dtype)"
    )
