"""The demo's own forwards follow the model to its device: accelerate leaves a trained model on the GPU,
and the demo's token blocks and prompt live on the CPU (issue: the demo crashed there after training).

No GPU here, so the model sits on torch's ``meta`` device, a real second device: a forward with CPU
inputs would still run on meta (meta is lenient), so a pre-hook records where the inputs came from and
stops the call; they must be where the weights are."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gaincell.demo.experiment import QUICK, _Demo


class _Stop(Exception):
    """Raised by the hook once it has seen the inputs: nothing on meta can be computed further."""


def _meta_model(seen: list[torch.device]):
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=40, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to("meta")

    def record(module, args, kwargs):
        seen.append(kwargs["input_ids"].device)
        raise _Stop

    model.register_forward_pre_hook(record, with_kwargs=True)
    return model


@pytest.fixture
def demo(tmp_path):
    demo = _Demo(QUICK, tmp_path, echo=lambda line: None, precision="no")
    demo.eval_ids = torch.randint(0, 40, (64,))
    demo.train_blocks = torch.randint(0, 40, (16, 32))
    demo.tokenizer = type("Tokenizer", (), {"eos_token_id": 0})()
    return demo


def test_the_sample_prompt_goes_to_the_models_device(demo):
    seen: list[torch.device] = []
    model = _meta_model(seen)

    def generate(input_ids, **kwargs):  # transformers' generate reads values (.item()), which meta has not
        seen.append(input_ids.device)
        raise _Stop

    model.generate = generate
    with pytest.raises(_Stop):
        demo.sample(model)
    assert seen == [torch.device("meta")]


def test_the_calibration_only_forwards_go_to_the_models_device(demo):
    seen: list[torch.device] = []
    with pytest.raises(_Stop):
        demo.calibration_only(_meta_model(seen))  # converted (a deep copy keeps the hook), then the forwards
    assert seen == [torch.device("meta")]
