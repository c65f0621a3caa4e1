"""A real pre-trained LLM (stories260K, a TinyStories Llama in the shared data folder) through gaincell.

The toy models elsewhere cannot show what a pre-trained model does with grouped-query attention,
RoPE and a SentencePiece tokenizer; this one is small enough for the default suite.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import gaincell

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_data("models/stories260K", "wikitext2-test.txt")]


@pytest.fixture(scope="module")
def stories(shared_data):
    path = shared_data / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _fresh(shared_data):
    return AutoModelForCausalLM.from_pretrained(shared_data / "models" / "stories260K").eval()


def test_the_fixture_is_the_real_model(stories):
    model, tokenizer = stories
    bos = torch.tensor([[tokenizer.bos_token_id]])
    with torch.no_grad():
        out = model.generate(bos, max_new_tokens=20, do_sample=False)
    assert tokenizer.decode(out[0], skip_special_tokens=True).startswith("Once upon a time, there was a little girl")


def test_softmax_preset_with_a_full_window_is_the_original_model(stories, shared_data):
    model, _ = stories
    ids = torch.randint(3, 512, (2, 96), generator=torch.Generator().manual_seed(0))
    converted = gaincell.convert(_fresh(shared_data), "softmax", window=512)
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["paper", "linear"])
def test_generation_through_the_memory_equals_the_full_forward(stories, shared_data, name):
    """Llama with 8 query / 4 kv heads, head dim 8, window 32 < 80 tokens: the circular slots wrap."""
    _, tokenizer = stories
    model = gaincell.convert(_fresh(shared_data), name, window=32, subtile_rows=16)
    prompt = tokenizer("Once upon a time, there was a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=70, do_sample=False, output_logits=True, return_dict_in_generate=True)
        stepped = torch.stack(out.logits, dim=1)
        full = model(out.sequences[:, :-1]).logits[:, prompt.shape[1] - 1 :]
    assert out.sequences.shape[1] > 32 + 16
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_perplexity_on_full_wikitext_beats_uniform(stories, shared_data):
    """A children's-story model on WikiText-2 (measured: 229 on its first 32k tokens) is poor but far
    better than uniform over its 512 tokens. Run with GAINCELL_DATA=../shared/data python -m pytest -m slow."""
    from gaincell.evaluation.perplexity import strided_perplexity

    model, tokenizer = stories
    ids = torch.tensor(tokenizer((shared_data / "wikitext2-test.txt").read_text()[:200_000])["input_ids"])
    with torch.no_grad():
        result = strided_perplexity(model, ids[:32_768], context=512, stride=256, batch_size=8)
    assert 100 < result["ppl"] < 512 / 2
