"""Converting transformers causal LMs, generating through the gain-cell memory, saving and loading."""

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    LlamaConfig,
)

import gaincell
from gaincell import GainCellError, preset
from gaincell.hf.cache import GainCellCache
from gaincell.hf.convert import model_config
from gaincell.hf.layer import gain_cell_layers

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 97
CONFIGS = {
    "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt_neox": GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=VOCAB,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    ),
    "llama": LlamaConfig(  # grouped-query attention: 4 query heads share 2 key/value heads
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    ),
}  # fmt: skip
SMALL = dict(window=8, subtile_rows=16, block_size=8)


def _model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(copy.deepcopy(CONFIGS[family])).eval()


def _ids(batch=2, length=5, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _perturb_scalers(model, seed=3):
    """Scalers away from their initial values, so round trips and generation test real state."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for cell in gain_cell_layers(model):
            for parameter in cell.scalers.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
            cell.target_mean.normal_(generator=generator)
            cell.target_count.fill_(7)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_softmax_with_window_covering_context_equals_the_original_model(family):
    model = _model(family)
    ids = _ids(length=20)
    with torch.no_grad():
        original = model(ids).logits
        converted = gaincell.convert(model, "softmax", window=64)(ids).logits
    torch.testing.assert_close(converted, original, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_scalers_are_named_model_parameters_that_train(family):
    model = gaincell.convert(_model(family), "paper", **SMALL).train()
    names = [name for name, _ in model.named_parameters() if ".gaincell.scalers." in name]
    assert len(names) == 2 * 8  # layers x (a, b) x (q, k, v, o)
    ids = _ids(length=12)
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if ".gaincell.scalers." in name]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("name", ["paper", "linear", "softmax"])
def test_greedy_generation_logits_equal_full_forward_beyond_the_window(family, name):
    model = gaincell.convert(_model(family), name, **SMALL)
    _perturb_scalers(model)
    ids = _ids(length=5)
    out = model.generate(
        ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, output_logits=True,
        return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    assert out.sequences.shape == (2, 29)  # 29 tokens through a window of 8: several wrap-arounds
    stepped = torch.stack(out.logits, dim=1)
    with torch.no_grad():
        full = model(out.sequences).logits[:, 4:-1]
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_sampling_generation_equals_full_forward_and_is_seeded():
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    ids = _ids(length=3)

    def sample():
        torch.manual_seed(11)
        return model.generate(
            ids, max_new_tokens=20, min_new_tokens=20, do_sample=True, top_k=0, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip

    first, second = sample(), sample()
    assert torch.equal(first.sequences, second.sequences)
    with torch.no_grad():
        full = model(first.sequences).logits[:, 2:-1]
    torch.testing.assert_close(torch.stack(first.logits, dim=1), full, rtol=1e-5, atol=1e-5)


def test_generation_uses_one_memory_per_layer_of_window_slots():
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    cache = GainCellCache(model)
    model.generate(_ids(length=4), max_new_tokens=30, min_new_tokens=30, cache=cache, pad_token_id=0)
    assert len(cache.layers) == 2 and cache.get_seq_length() == 33
    for layer in cache.layers:
        assert layer.memory.keys.shape == (2, 4, 8, 16)  # (batch, heads, M slots, head_dim): O(M), not O(T)
        assert sorted(layer.memory.positions.tolist()) == list(range(25, 33))


def test_beam_search_runs_through_the_memory():
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    out = model.generate(_ids(length=4), max_new_tokens=12, num_beams=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 16)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_save_load_round_trip_is_exact(family, tmp_path):
    model = gaincell.convert(_model(family), "paper", **SMALL, leakage=1e-3)
    _perturb_scalers(model)
    gaincell.save(model, tmp_path / "model")
    loaded = gaincell.load(tmp_path / "model")
    assert type(loaded).__name__ == type(model).__name__
    assert model_config(loaded) == model_config(model)
    state, restored = model.state_dict(), loaded.state_dict()
    gain_cell_keys = [key for key in state if ".gaincell." in key]
    assert gain_cell_keys and all(torch.equal(state[key], restored[key]) for key in gain_cell_keys)
    ids = _ids(length=20)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_a_plain_checkpoint_loads_as_the_plain_model(tmp_path):
    model = _model("gpt2")
    model.save_pretrained(tmp_path / "plain")
    loaded = gaincell.load(tmp_path / "plain")
    assert not hasattr(loaded.config, "gaincell")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_converting_again_switches_the_config_and_keeps_the_scalers():
    model = gaincell.convert(_model("gpt2"), "linear", **SMALL)
    _perturb_scalers(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".gaincell." in k}
    gaincell.convert(model, "paper", **SMALL)
    assert model_config(model) == preset("paper", **SMALL)
    assert all(cell.config == preset("paper", **SMALL) for cell in gain_cell_layers(model))
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())


def test_targets_are_an_ema_of_the_scaler_output_statistics():
    model = gaincell.convert(_model("gpt2"), "linear", **SMALL)
    cell = gain_cell_layers(model)[0]
    cell.recording = cell.observing = True
    model.train()  # targets are recorded by training forwards only
    observed = []
    with torch.no_grad():
        for seed in range(3):
            model(_ids(length=16, seed=seed))
            observed.append(cell.observed)
    mean = observed[0][0]
    for means, _ in observed[1:]:
        mean = 0.9 * mean + 0.1 * means
    torch.testing.assert_close(cell.target_mean, mean)
    assert int(cell.target_count) == 3
    assert cell.target_std.shape == (4, 4) and (cell.target_std[:3] > 0).all()
    # The output's std may be 0 here: this random model's sub-tile read-outs stay below half an ADC
    # step (1/31), and SPEC's zero-centred ADC grid reads them all as 0.
    assert (cell.target_std[3] >= 0).all()


def test_unsupported_models_and_configs_fail_with_a_clear_error():
    with pytest.raises(GainCellError, match="transformers causal LM"):
        gaincell.convert(torch.nn.Linear(2, 2), "paper")
    with pytest.raises(GainCellError, match="causal LM with a language-model head"):
        gaincell.convert(GPT2Model(copy.deepcopy(CONFIGS["gpt2"])), "paper")
    wide = GPT2Config(n_embd=128, n_layer=1, n_head=1, vocab_size=VOCAB, n_positions=32)
    with pytest.raises(GainCellError, match="head_dim 128 does not fit"):
        gaincell.convert(AutoModelForCausalLM.from_config(wide), "paper")
    with pytest.raises(GainCellError, match="preset must be one of"):
        gaincell.convert(_model("gpt2"), "fancy")


def test_foreign_caches_and_padding_are_refused():
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    ids = _ids(length=6)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :5], cache=cache, use_cache=True)
        with pytest.raises(GainCellError, match="gaincell.GainCellCache"):
            model(ids[:, 5:], cache=cache, use_cache=True)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        with pytest.raises(GainCellError, match="padded"):
            model(ids, attention_mask=mask)
        causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
        padded = causal & mask.bool()[:, None, None, :]
        additive = torch.zeros(padded.shape).masked_fill(~padded, torch.finfo(torch.float32).min)
        for four_d in (padded, additive):  # 4-D masks reach attention as given: refused too, not ignored
            with pytest.raises(GainCellError, match="padded"):
                model(ids, attention_mask=four_d)
        plain = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
        assert torch.equal(model(ids, attention_mask=plain).logits, model(ids).logits)  # a causal 4-D mask is no padding


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(GainCellError, match="not a directory"):
        gaincell.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GainCellError, match="no config.json"):
        gaincell.load(tmp_path / "empty")
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    gaincell.save(model, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated copy
    with pytest.raises(GainCellError, match="cannot load"):
        gaincell.load(tmp_path / "model")


def test_a_saved_scaler_of_the_wrong_shape_is_named(tmp_path, tokenizer, capsys):
    from safetensors.torch import load_file, save_file

    from gaincell.cli import main

    gaincell.save(gaincell.convert(_model("gpt2"), "paper", **SMALL), tmp_path / "model", tokenizer)
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(key for key in tensors if key.endswith(".gaincell.scalers.a_q"))
    tensors[name] = torch.ones(tensors[name].numel() + 3)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(GainCellError, match=f"{name} in .* must have shape"):
        gaincell.load(tmp_path / "model")
    assert main(["generate", str(tmp_path / "model"), "--prompt", "hi"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("gaincell generate: error: MODEL_DIR: ") and "must have shape" in last


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    model = gaincell.convert(_model("gpt2"), "paper", **SMALL)
    gaincell.save(model, tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "model").iterdir())

    class Broken:
        def save_pretrained(self, directory):
            (directory / "partial.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError):
        gaincell.save(model, tmp_path / "model", tokenizer=Broken())
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
