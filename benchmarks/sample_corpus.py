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

Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="hub id, save_pretrained folder or GGUF file")
    parser.add_argument("output", type=Path)
    parser.add_argument("--prompts-from", type=Path, help="corpus whose paragraph openings prompt (default wikitext2-valid)")
    parser.add_argument("--prompt-words", type=int, default=6)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence, prompt included")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = args.prompts_from or require_data_dir("sample_corpus.py") / "wikitext2-valid.txt"
    starts = prompts(corpus, args.prompt_words, args.seed)
    model, tokenizer = load_pretrained(args.model), load_pretrained_tokenizer(args.model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    progress = args.output.with_suffix(".progress.json")
    state = json.loads(progress.read_text()) if progress.exists() else {"batches": 0, "bytes": 0}
    done = state["batches"]
    if args.output.exists():
        with args.output.open("r+b") as handle:
            handle.truncate(state["bytes"])  # drop a batch written after the last recorded one
    batches = -(-args.sequences // args.batch)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index in tqdm(range(done, batches), initial=done, total=batches, desc="sampling"):
        batch = [starts[(index * args.batch + row) % len(starts)] for row in range(args.batch)]
        encoded = tokenizer(batch, return_tensors="pt", padding=True)
        torch.manual_seed(args.seed + index)
        with torch.no_grad():
            out = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=args.top_p, top_k=0,
                                 max_new_tokens=args.tokens - encoded["input_ids"].shape[1],
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
        with args.output.open("a") as handle:
            handle.write("".join(text + "\n\n" for text in texts))
        seconds = state.get("seconds", 0.0) + time.perf_counter() - started
        state = {"batches": index + 1, "bytes": args.output.stat().st_size, "seconds": seconds}
        progress.write_text(json.dumps(state))
        started = time.perf_counter()


if __name__ == "__main__":
    main()
