"""The benchmark scripts build on their inputs' device and move their inputs to their model's.

Without a GPU the second device is torch's ``meta`` device: an op that makes a tensor on the CPU
beside meta inputs fails (index_add checks devices), and a generate call records where its prompt is."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_attention import dense_gain_cell_attention  # noqa: E402
from gaincell import Scalers, preset  # noqa: E402


def test_the_dense_formulation_stays_on_its_inputs_device():
    q, k, v = (torch.rand(1, 2, 40, 8, device="meta") for _ in range(3))
    out = dense_gain_cell_attention(q, k, v, Scalers(2).to("meta"), preset("paper", window=16, subtile_rows=8))
    assert out.device == torch.device("meta") and out.shape == q.shape


def test_real_models_sample_prompts_on_the_models_device(tokenizer):
    import real_models

    seen = []

    class Model(torch.nn.Linear):
        def generate(self, ids, **kwargs):
            seen.append(ids.device)
            return torch.zeros(1, 3, dtype=torch.long)  # tokens to decode (meta tensors hold none)

    real_models.sample(Model(1, 1).to("meta"), tokenizer, "Once upon a time")
    assert seen == [torch.device("meta")]
