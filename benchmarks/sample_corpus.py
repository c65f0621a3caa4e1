"""Training text sampled from a pre-trained model itself, for adaptation that learns no corpus's format.

Fine-tuning on one corpus teaches its format (tokenised WikiText's `<unk>` and ` @-@ `) as well as the
hardware: the adapted model then loses what the original could do elsewhere. Text the original model
writes itself is in its own distribution; distilling on it asks the student only to behave like the
teacher. Each sequence starts from a short prompt (the first words of a paragraph of a real corpus,
so the topics vary) and continues by sampling (temperature 1, nucleus ``--top-p``), ``--tokens``
tokens in all. Sequences are appended to ``OUTPUT`` one batch at a time (a killed run resumes after
the last batch it recorded; the seed of batch i is ``--seed + i``), separated by blank lines.

    python benchmarks/sample_corpus.py ~/.cache/gaincell/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        runs/smollm2-samples.txt --sequences 512 --tokens 512

``--opening TEXT`` starts every sequence from that text alone instead: given the model's document
separator (``<|endoftext|>`` for SmolLM2), the samples are what the model writes unprompted, as broad as its
pre-training (prose, code, lists), where WikiText openings keep it near encyclopaedic prose.

The openings need lm-eval's WikiText detokeniser, which a lent GPU lacks: ``--write-prompts`` writes them
here, one per line, and ``--prompts FILE`` reads them there (``benchmarks/device_run.py`` part f samples
SmolLM2's training text on the GPU this way, with :func:`sample`, ``--device cuda --dtype bfloat16``
from the command line). ``--seconds`` stops after the batch that passes a time limit. The test:
tests/benchmarks/test_sample_corpus.py (stories260K, two sequences).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gaincell.atomic import atomic_file
from gaincell.datadir import require_data_dir
from gaincell.hf.pretrained import load_pretrained, load_pretrained_tokenizer


def prompts(corpus: Path, words: int, seed: int) -> list[str]:
    """The first ``words`` words of every paragraph long enough, shuffled with ``seed``; tokenised WikiText's
    spacing undone by lm-eval's own detokeniser, so not even the prompts carry that format."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    paragraphs = [line.strip() for line in corpus.read_text().splitlines()]
    starts = [" ".join(line.split()[:words]) for line in paragraphs if len(line.split()) > 4 * words]
    starts = [start for start in starts if "<unk>" not in start and not start.startswith("=")]
    starts = [wikitext_detokenizer({"page": start}).strip() for start in starts]
    random.Random(seed).shuffle(starts)
    return starts


def read_prompts(path: Path) -> list[str]:
    """Openings written one per line by ``--write-prompts`` (so a machine without lm-eval can sample)."""
    return [line for line in path.read_text().splitlines() if line.strip()]


def sample(
    model,
    tokenizer,
    output: Path,
    starts: list[str],
    sequences: int,
    tokens: int,
    batch: int,
    top_p: float = 0.95,
    seed: int = 0,
    seconds: float | None = None,
) -> dict:
    """Append ``sequences`` sampled sequences to ``output``, one batch at a time, resumable; with ``seconds``,
    stop after the first batch that ends past that many seconds of sampling (this call's). Returns the state
    (batches, bytes, seconds) also kept in ``output``'s ``.progress.json``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    progress = output.with_suffix(".progress.json")
    state = json.loads(progress.read_text()) if progress.exists() else {"batches": 0, "bytes": 0}
    done = state["batches"]
    if output.exists():
        with output.open("r+b") as handle:
            handle.truncate(state["bytes"])  # drop a batch written after the last recorded one
    batches = -(-sequences // batch)
    output.parent.mkdir(parents=True, exist_ok=True)
    began = started = time.perf_counter()
    for index in tqdm(range(done, batches), initial=done, total=batches, desc="sampling"):
        rows = [starts[(index * batch + row) % len(starts)] for row in range(batch)]
        encoded = tokenizer(rows, return_tensors="pt", padding=True).to(device)
        torch.manual_seed(seed + index)
        with torch.no_grad():
            out = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=top_p, top_k=0,
                                 max_new_tokens=tokens - encoded["input_ids"].shape[1],
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
        with output.open("a") as handle:
            handle.write("".join(text + "\n\n" for text in texts))
        total = state.get("seconds", 0.0) + time.perf_counter() - started
        state = {"batches": index + 1, "bytes": output.stat().st_size, "seconds": total}
        progress.write_text(json.dumps(state))
        started = time.perf_counter()
        if seconds is not None and started - began >= seconds:
            break
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="hub id, save_pretrained folder or GGUF file")
    parser.add_argument("output", type=Path)
    parser.add_argument("--prompts-from", type=Path, help="corpus whose paragraph openings prompt (default wikitext2-valid)")
    parser.add_argument("--prompts", type=Path, help="openings one per line (from --write-prompts), instead of a corpus")
    parser.add_argument("--opening", help="start every sequence from this text alone (e.g. '<|endoftext|>' for SmolLM2)")
    parser.add_argument("--write-prompts", action="store_true", help="write the openings to OUTPUT, one per line, and stop")
    parser.add_argument("--prompt-words", type=int, default=6)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence, prompt included")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, help="stop after the batch that passes this many seconds")
    parser.add_argument("--device", default="cpu", help="where the model samples (cpu, cuda)")
    parser.add_argument("--dtype", default=None, help="the model's weights (bfloat16 on a GPU; default float32)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.opening is not None and (args.prompts is not None or args.prompts_from is not None):
        parser.error("--opening replaces the openings: give it without --prompts and --prompts-from")
    if args.opening is not None and not args.opening:
        parser.error("--opening: expected a non-empty text (e.g. '<|endoftext|>'), got an empty one")
    torch.set_num_threads(args.threads)
    if args.opening is not None:
        starts = [args.opening]
    elif args.prompts is not None:
        starts = read_prompts(args.prompts)
    else:
        corpus = args.prompts_from or require_data_dir("sample_corpus.py") / "wikitext2-valid.txt"
        starts = prompts(corpus, args.prompt_words, args.seed)
    if args.write_prompts:
        with atomic_file(args.output) as handle:
            handle.write("".join(start + "\n" for start in starts))
        print(f"{len(starts)} openings -> {args.output}")
        return
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_pretrained(args.model, dtype=dtype).to(args.device).eval()
    tokenizer = load_pretrained_tokenizer(args.model)
    sample(
        model, tokenizer, args.output, starts, args.sequences, args.tokens, args.batch, args.top_p, args.seed, args.seconds
    )


if __name__ == "__main__":
    main()
