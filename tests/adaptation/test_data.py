"""Corpora -> token blocks (gaincell.adaptation.data)."""

import pytest
import torch

from gaincell.adaptation.data import (
    EOS_TOKEN,
    block_loader,
    check_context,
    corpus_blocks,
    corpus_from_texts,
    default_corpus_text,
    epoch_permutation,
    load_text_corpus,
    pack_blocks,
    split_blocks,
    tokenize_corpus,
    train_bpe_tokenizer,
)
from gaincell.errors import GainCellError

pytestmark = pytest.mark.needs_data("tinyshakespeare.txt")  # the one test that reads a real corpus


@pytest.fixture(scope="module")
def sample_text(pydoc_text) -> str:
    return pydoc_text[:60_000]


@pytest.fixture(scope="module")
def tokenizer(sample_text):
    return train_bpe_tokenizer(sample_text, 320)


def test_default_corpus_is_pythons_reference_documentation():
    text = default_corpus_text()
    assert len(text) > 100_000
    assert 'The "for" statement' in text or "for_stmt" in text
    assert text == default_corpus_text()


def test_text_file_loads_as_one_exact_row(tmp_path):
    content = "First line.\n\nSecond paragraph,\nwith two lines.\n"
    path = tmp_path / "doc.txt"
    path.write_text(content)
    corpus = load_text_corpus(text=path)
    assert corpus.column_names == ["text"]
    assert corpus["text"] == [content]


def test_folder_loads_every_txt_file_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "notes.md").write_text("not a corpus file")
    assert load_text_corpus(text=tmp_path)["text"] == ["ay", "bee", "sea"]


def test_paragraph_sampling_splits_large_files(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("one\n\ntwo\n\nthree\n")
    assert load_text_corpus(text=path, sample_by="paragraph").num_rows == 3


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (None, {"text": "missing.txt"}, "text: no such file"),
        ("empty", {}, "empty corpus"),
        ("folder", {}, "has no .txt files"),
        (None, {}, "exactly one of text=PATH"),
        (None, {"text": "x.txt", "dataset": "wikitext"}, "exactly one of text=PATH"),
        (None, {"dataset": "no-such-org/no-such-dataset"}, "dataset: cannot load"),
    ],
)
def test_bad_corpus_gives_one_clear_error(tmp_path, make, kwargs, message):
    if make == "empty":
        (tmp_path / "empty.txt").write_text("")
        kwargs = {"text": tmp_path / "empty.txt"}
    elif make == "folder":
        (tmp_path / "readme.md").write_text("no text files here")
        kwargs = {"text": tmp_path}
    elif "text" in kwargs:
        kwargs = {**kwargs, "text": tmp_path / kwargs["text"]}
    with pytest.raises(GainCellError, match=message) as raised:
        load_text_corpus(**kwargs)
    assert "\n" not in str(raised.value)


def test_bpe_tokenizer_round_trips_and_saves(tmp_path, tokenizer, sample_text):
    from transformers import AutoTokenizer

    assert len(tokenizer) == 320
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.eos_token_id is not None
    sample = sample_text[1000:1500]
    ids = tokenizer(sample)["input_ids"]
    assert len(ids) < len(sample.encode())  # merges were learned
    assert tokenizer.decode(ids) == sample
    assert tokenizer.decode(tokenizer("déjà vu — ✓")["input_ids"]) == "déjà vu — ✓"  # byte-level: no UNK
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(sample)["input_ids"] == ids
    assert reloaded.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("texts", "vocab_size", "message"),
    [
        ("some text", 100, "vocab_size must be"),
        ([], 300, "empty corpus"),
        (["  ", "\n"], 300, "empty corpus"),
    ],
)
def test_bpe_tokenizer_rejects_bad_input(texts, vocab_size, message):
    with pytest.raises(GainCellError, match=message):
        train_bpe_tokenizer(texts, vocab_size)


def test_tokenize_corpus_puts_eos_between_documents(tokenizer):
    corpus = corpus_from_texts(["To be, or not to be", "that is the question"])
    ids = tokenize_corpus(corpus, tokenizer)
    first = tokenizer("To be, or not to be")["input_ids"]
    second = tokenizer("that is the question")["input_ids"]
    eos = tokenizer.eos_token_id
    assert ids.dtype == torch.long
    assert ids.tolist() == first + [eos] + second + [eos]
    assert tokenize_corpus(corpus, tokenizer, append_eos=False).tolist() == first + second


def test_pack_blocks_cuts_equal_blocks_and_drops_the_tail():
    blocks = pack_blocks(list(range(23)), 5)
    assert blocks.shape == (4, 5) and blocks.dtype == torch.long
    assert blocks.reshape(-1).tolist() == list(range(20))
    with pytest.raises(GainCellError, match="fewer than one block"):
        pack_blocks([1, 2, 3], 5)
    with pytest.raises(GainCellError, match="block_size"):
        pack_blocks([1, 2, 3], 1)


def test_corpus_blocks_on_a_real_corpus(shared_data, tokenizer):
    corpus = load_text_corpus(text=shared_data / "tinyshakespeare.txt", sample_by="paragraph")
    blocks = corpus_blocks(corpus.select(range(200)), tokenizer, 32)
    assert blocks.ndim == 2 and blocks.shape[1] == 32 and len(blocks) > 10
    assert int(blocks.max()) < len(tokenizer)


def test_split_blocks_holds_out_the_tail():
    blocks = torch.arange(40).reshape(20, 2)
    train, held_out = split_blocks(blocks, 0.1)
    assert len(train) == 18 and len(held_out) == 2
    assert torch.equal(torch.cat([train, held_out]), blocks)
    with pytest.raises(GainCellError, match="eval_fraction"):
        split_blocks(blocks, 1.5)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    first = epoch_permutation(50, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, epoch_permutation(50, seed=3, epoch=0))
    assert not torch.equal(first, epoch_permutation(50, seed=3, epoch=1))
    assert not torch.equal(first, epoch_permutation(50, seed=4, epoch=0))


def test_block_loader_yields_model_ready_batches_in_epoch_order():
    blocks = torch.arange(30).reshape(10, 3)
    batches = list(block_loader(blocks, 4, shuffle=True, seed=1, epoch=2))
    assert [len(batch["input_ids"]) for batch in batches] == [4, 4, 2]
    order = epoch_permutation(10, seed=1, epoch=2)
    assert torch.equal(torch.cat([batch["input_ids"] for batch in batches]), blocks[order])
    assert torch.equal(batches[0]["labels"], batches[0]["input_ids"])
    assert len(list(block_loader(blocks, 4, drop_last=True))) == 2


def test_context_longer_than_model_positions_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16, vocab_size=300, bos_token_id=0, eos_token_id=0)
    )
    check_context(model, 16, "block_size")
    with pytest.raises(GainCellError, match="block_size: context of 17 tokens is longer than the model's 16 positions"):
        check_context(model, 17, "block_size")
