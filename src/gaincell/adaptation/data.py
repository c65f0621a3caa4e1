"""Corpora -> token blocks: what fine-tuning and evaluation read (SPEC §4, §5).

The path is always the same: a corpus (a ``datasets.Dataset`` with one ``text`` column, from a local
file or folder, a hub dataset, or the embedded default) is tokenised with the model's own tokenizer
— or, for a model trained here, a byte-level BPE trained on the corpus — concatenated with an EOS
between documents, and cut into equal blocks.

A block is ``block_size`` tokens and serves as both input and label: Hugging Face causal LMs shift
the labels inside ``forward``, so a block of ``block_size`` tokens trains ``block_size - 1``
next-token predictions and never exceeds the model's ``block_size`` positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gaincell.errors import GainCellError, first_line
from gaincell.validation import check_int

EOS_TOKEN = "<|endoftext|>"
#: Byte-level BPE starts from the 256 byte symbols; the vocabulary must also hold the EOS token.
MIN_BPE_VOCAB = 257


def default_corpus_text() -> str:
    """Python's bundled reference documentation (``pydoc_data.topics``), joined.

    About 460 kB of English prose and code that ships with every CPython, so demos and tests can
    train a small model with no network and no data files. Its content follows the Python version.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise GainCellError("the default corpus needs the standard library's pydoc_data module") from error
    return "\n\n".join(topics[name] for name in sorted(topics))


def load_text_corpus(
    text: str | Path | None = None,
    dataset: str | None = None,
    *,
    split: str = "train",
    config: str | None = None,
    text_column: str = "text",
    sample_by: Literal["document", "paragraph", "line"] = "document",
):
    """Load a corpus as a ``datasets.Dataset`` with one ``text`` column.

    ``text`` is a ``.txt`` file or a folder (every ``*.txt`` below it, in sorted order), read with
    the ``datasets`` text builder; by default one row per file, so the text is kept exactly and an
    EOS later separates files. Use ``sample_by="paragraph"`` for single files too large for memory.
    ``dataset`` is a hub dataset name (with ``config`` and ``split``, e.g.
    ``dataset="Salesforce/wikitext", config="wikitext-103-raw-v1"``), which needs the network or a
    filled cache. ``text_column`` names the hub dataset's text column.
    """
    import datasets

    if (text is None) == (dataset is None):
        raise GainCellError("give exactly one of text=PATH (a .txt file or folder) or dataset=NAME")
    if text is not None:
        files = _text_files(Path(text))
        try:
            corpus = datasets.load_dataset(
                "text",
                data_files=[str(file) for file in files],
                split="train",
                sample_by=sample_by,
                keep_linebreaks=True,
            )
        except datasets.exceptions.DatasetGenerationError as error:  # e.g. a file that is not UTF-8 text
            cause = error.__cause__ or error
            raise GainCellError(f"text: cannot read {text}: {type(cause).__name__}: {first_line(cause, '')}") from error
        origin = f"text: {text}"
    else:
        try:
            corpus = datasets.load_dataset(dataset, config, split=split)
        except Exception as error:  # any loading failure (offline, unknown name, bad split) is user input
            raise GainCellError(
                f"dataset: cannot load {dataset!r} (config={config!r}, split={split!r}): "
                f"{type(error).__name__}: {first_line(error, '')}"
            ) from error
        if text_column not in corpus.column_names:
            raise GainCellError(f"text_column: {dataset!r} has no column {text_column!r}; columns are {corpus.column_names}")
        corpus = corpus.select_columns([text_column])
        if text_column != "text":
            corpus = corpus.rename_column(text_column, "text")
        origin = f"dataset: {dataset}"
    if corpus.num_rows == 0:
        raise GainCellError(f"{origin} is an empty corpus")
    return corpus


def _text_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(file for file in path.rglob("*.txt") if file.is_file())
        if not files:
            raise GainCellError(f"text: folder {path} has no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise GainCellError(f"text: no such file or folder: {path}")
    if all(file.stat().st_size == 0 for file in files):
        raise GainCellError(f"text: {path} is an empty corpus")
    return files


def corpus_from_texts(texts: Iterable[str]):
    """Wrap in-memory documents (e.g. :func:`default_corpus_text`) as a one-column corpus."""
    import datasets

    rows = [row for row in texts if row.strip()]
    if not rows:
        raise GainCellError("texts: the corpus is empty")
    return datasets.Dataset.from_dict({"text": rows})


def _iter_texts(texts) -> Iterator[str]:
    """Strings from a str, an iterable of str, or a corpus (``text`` column), in batches."""
    import datasets

    if isinstance(texts, str):
        yield texts
    elif isinstance(texts, datasets.Dataset):
        for batch in texts.iter(batch_size=1000):
            yield from batch["text"]
    else:
        yield from texts


def train_bpe_tokenizer(
    texts,
    vocab_size: int = 8192,
    *,
    min_frequency: int = 2,
    eos_token: str = EOS_TOKEN,
    model_max_length: int | None = None,
):
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on ``texts`` with ``tokenizers``.

    For models trained here rather than adapted. ``texts`` is a str, an iterable of str or a corpus.
    The EOS token is the only special token and doubles as BOS, UNK and padding, as in GPT-2.
    Returns a ``transformers`` fast tokenizer, saveable with ``save_pretrained``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_BPE_VOCAB:
        raise GainCellError(f"vocab_size must be an integer >= {MIN_BPE_VOCAB} (256 bytes + EOS), got {vocab_size!r}")
    check_int("min_frequency", min_frequency, 1)
    seen = {"characters": 0}

    def counted() -> Iterator[str]:
        for text in _iter_texts(texts):
            seen["characters"] += len(text.strip())
            yield text

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(counted(), trainer=trainer)
    if seen["characters"] == 0:
        raise GainCellError("texts: cannot train a tokenizer on an empty corpus")
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        bos_token=eos_token,
        unk_token=eos_token,
        pad_token=eos_token,
        **extra,
    )


def tokenize_corpus(
    corpus,
    tokenizer,
    *,
    append_eos: bool = True,
    num_proc: int | None = None,
) -> torch.Tensor:
    """Tokenise every row of ``corpus`` and concatenate them into one 1-D ``LongTensor``.

    ``append_eos`` puts the tokenizer's EOS after each row — right when rows are documents (files,
    web pages); pass ``False`` for corpora whose rows are lines of one running text (hub WikiText).
    Tokenisation runs through ``Dataset.map`` (cached, parallel with ``num_proc``).
    """
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise GainCellError("tokenizer: has no EOS token; pass append_eos=False or use a tokenizer with one")

    def encode(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [row + [eos_id] for row in ids] if append_eos else ids}

    tokenized = corpus.map(encode, batched=True, remove_columns=corpus.column_names, num_proc=num_proc)
    column = tokenized.data.column("input_ids")
    flat = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    token_ids = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(token_ids.astype(np.int64))


def pack_blocks(token_ids: torch.Tensor | np.ndarray | list[int], block_size: int) -> torch.Tensor:
    """Cut a token stream into a ``(n_blocks, block_size)`` ``LongTensor``; the tail is dropped.

    Each row is input and label at once (the model shifts labels), see the module docstring.
    """
    check_int("block_size", block_size, 2)
    stream = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    n_blocks = stream.numel() // block_size
    if n_blocks == 0:
        raise GainCellError(f"corpus: has {stream.numel()} tokens, fewer than one block of block_size={block_size}")
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size).clone()


def corpus_blocks(corpus, tokenizer, block_size: int, *, append_eos: bool = True) -> torch.Tensor:
    """:func:`tokenize_corpus` then :func:`pack_blocks`."""
    return pack_blocks(tokenize_corpus(corpus, tokenizer, append_eos=append_eos), block_size)


def split_blocks(blocks: torch.Tensor, eval_fraction: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out the last ``eval_fraction`` of the blocks (at least one) for evaluation.

    A contiguous tail rather than a random sample, so no training block overlaps an evaluation one
    and the split does not depend on a seed.
    """
    if not 0 < eval_fraction < 1:
        raise GainCellError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    if len(blocks) < 2:
        raise GainCellError(f"blocks: need at least 2 blocks to split, got {len(blocks)}")
    n_eval = min(len(blocks) - 1, max(1, round(len(blocks) * eval_fraction)))
    return blocks[: len(blocks) - n_eval], blocks[len(blocks) - n_eval :]


def model_max_positions(model) -> int | None:
    """How many positions the model can attend over, from its config (None if it does not say)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model, context: int, argument: str) -> None:
    """Raise if ``context`` tokens do not fit in the model's positions."""
    limit = model_max_positions(model)
    if limit is not None and context > limit:
        raise GainCellError(f"{argument}: context of {context} tokens is longer than the model's {limit} positions")


def epoch_permutation(n_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the blocks in one epoch: a pure function of (seed, epoch), so resume replays it."""
    rng = np.random.default_rng([seed, epoch])
    return torch.from_numpy(rng.permutation(n_blocks))


class BlockDataset(Dataset):
    """Blocks as a map-style dataset of ``{"input_ids", "labels"}`` rows for a causal LM."""

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.ndim != 2:
            raise GainCellError(f"blocks must be 2-D (n_blocks, block_size), got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = torch.as_tensor(self.blocks[index], dtype=torch.long)
        return {"input_ids": row, "labels": row}


def block_loader(
    blocks: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over blocks; shuffled in :func:`epoch_permutation` order when asked.

    Each batch is a dict that can be passed straight to the model: ``model(**batch).loss``.
    """
    dataset = BlockDataset(blocks)
    order = epoch_permutation(len(dataset), seed, epoch).tolist() if shuffle else range(len(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=drop_last)
