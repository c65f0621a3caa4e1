"""Real pre-trained models the ecosystem's way (issue 9): hub ids, save_pretrained folders and GGUF
files through one loader, and a GGUF-loaded Llama converted, generating and saved like any other."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import gaincell
from gaincell import GainCellError
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import is_saved_directory, load_pretrained

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, KV_HEADS, HIDDEN, LAYERS, VOCAB = 4, 2, 32, 2, 64
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _llama_cpp_order(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores q/k rows interleaved per RoPE pair; transformers undoes this when loading."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: LlamaForCausalLM, path) -> None:
    """Write ``model`` as a float32 llama GGUF file with the ``gguf`` package's writer."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    writer.add_vocab_size(VOCAB)
    state = model.state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    for layer in range(LAYERS):
        names.update({f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{name}.weight" for hf, name in GGUF_NAMES.items()})
    for hf, name in names.items():
        weight = state[hf]
        if name.endswith("attn_q.weight") or name.endswith("attn_k.weight"):
            weight = _llama_cpp_order(weight, HEADS if "attn_q" in name else KV_HEADS)
        writer.add_tensor(name, weight.float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    model = tiny_llama()
    write_gguf(model, folder / "tiny.gguf")
    return model, folder


def test_a_gguf_file_loads_with_the_logits_of_the_model_it_was_written_from(gguf_model):
    model, folder = gguf_model
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    expected = model(input_ids=ids).logits
    for loaded in (load_pretrained(folder / "tiny.gguf"), load_pretrained(folder, gguf_file="tiny.gguf")):
        assert type(loaded).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
    assert not is_saved_directory(folder / "tiny.gguf") and not is_saved_directory("owner/name")


def test_a_converted_gguf_model_generates_through_the_memory_and_saves(gguf_model, tmp_path):
    _, folder = gguf_model
    model = gaincell.convert(load_pretrained(folder / "tiny.gguf"), "paper", window=16, subtile_rows=8, block_size=8)
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    full = model(input_ids=out[:, :-1]).logits.argmax(-1)[:, prompt.shape[1] - 1 :]
    assert torch.equal(full, out[:, prompt.shape[1] :])  # T = 24 > M = 16: the memory wraps
    gaincell.save(model, tmp_path / "saved")
    again = load_pretrained(tmp_path / "saved")
    assert len(gain_cell_layers(again)) == LAYERS
    torch.testing.assert_close(again(input_ids=out).logits, model(input_ids=out).logits)


@pytest.mark.parametrize(
    ("name", "gguf_file", "message"),
    [
        ("{folder}/missing.gguf", None, "model: no such directory or .gguf file"),
        ("{folder}", None, r"has no config.json .*pass gguf_file= one of \['tiny.gguf'\]"),
        ("{folder}", "other.gguf", "gguf_file: no file other.gguf"),
        ("{folder}/tiny.gguf", "tiny.gguf", "already a .gguf file"),
        ("{folder}/notes.txt", None, "is not a directory or a .gguf file"),
    ],
)
def test_loading_errors_name_the_argument(gguf_model, name, gguf_file, message):
    _, folder = gguf_model
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(GainCellError, match=message):
        load_pretrained(name.format(folder=folder), gguf_file)
