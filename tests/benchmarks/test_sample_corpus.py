"""benchmarks/sample_corpus.py: the openings written on one machine and read on another, and sampling that
resumes after the last recorded batch and stops at its time limit (a tiny GPT-2 and tokenizer made here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sample_corpus.py"


def _module():
    spec = importlib.util.spec_from_file_location("sample_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_prompts_then_read_them(tmp_path):
    corpus = tmp_path / "corpus.txt"
    paragraphs = [" ".join(f"w{i}_{j}" for j in range(30)) for i in range(5)]
    corpus.write_text("\n".join(["= Title =", "too short", *paragraphs]) + "\n")
    out = tmp_path / "prompts.txt"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "unused-model", str(out), "--prompts-from", str(corpus), "--write-prompts"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = _module().read_prompts(out)
    # every paragraph longer than 4 × 6 words gives its first six words; the heading and the short line none
    assert sorted(lines) == sorted(" ".join(p.split()[:6]) for p in paragraphs)


def test_sample_resumes_and_stops_at_its_time_limit(tmp_path, tiny_gpt2, tokenizer):
    module = _module()
    model = tiny_gpt2().eval()
    starts = ["def main", "import os", "class A"]
    out = tmp_path / "samples.txt"
    state = module.sample(model, tokenizer, out, starts, sequences=6, tokens=12, batch=2, seconds=0.0)
    assert state["batches"] == 1  # a time limit of 0 s stops after the first batch
    first = out.read_text()
    assert first.count("\n\n") == 2 and first.startswith(("def main", "import os"))
    progress = json.loads(out.with_suffix(".progress.json").read_text())
    assert progress["batches"] == 1 and progress["bytes"] == len(first.encode())
    with out.open("a") as handle:
        handle.write("half a batch a killed run wrote")
    state = module.sample(model, tokenizer, out, starts, sequences=6, tokens=12, batch=2)
    text = out.read_text()
    assert state["batches"] == 3 and text.startswith(first) and "killed" not in text
    assert text.count("\n\n") == 6


def test_opening_starts_every_sequence_from_one_text(tmp_path, tiny_gpt2, tokenizer):
    folder = tmp_path / "model"
    tiny_gpt2().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "samples.txt"
    _module().main([str(folder), str(out), "--opening", "def", "--sequences", "4", "--tokens", "10", "--batch", "2"])
    sequences = [text for text in out.read_text().split("\n\n") if text]
    assert len(sequences) == 4 and all(text.startswith("def") for text in sequences)


@pytest.mark.parametrize("extra", [["--opening", ""], ["--opening", "x", "--prompts", "p.txt"]])
def test_opening_refuses_an_empty_text_and_other_openings(tmp_path, extra):
    done = subprocess.run([sys.executable, str(SCRIPT), "unused-model", str(tmp_path / "o.txt"), *extra],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--opening" in done.stderr.splitlines()[-1]
